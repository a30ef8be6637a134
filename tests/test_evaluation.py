"""Unit tests of the evaluation library: decoding, error rates, scoring, latency statistics."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_ptq.errors import DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.latency import latency_stats, speech_like_signal, time_in_blocks
from nemo_ptq.evaluation.scoring import score_sets
from nemo_ptq.evaluation.transcripts import Transcript
from nemo_ptq.evaluation.wer import cer, char_errors, wer, word_errors

CHARS = CtcVocabulary((" ", "a", "b", "c", "'"), blank_id=5, tokenizer="char")
PIECES = CtcVocabulary(("<unk>", "▁the", "▁ca", "t", "s", "▁"), blank_id=6, tokenizer="bpe")


def one_hot(ids: list[int], classes: int) -> np.ndarray:
    log_probs = np.full((1, len(ids), classes), -10.0, dtype=np.float32)
    log_probs[0, np.arange(len(ids)), ids] = 0.0
    return log_probs


def test_char_decoding_collapses_repeats_and_drops_blanks():
    # a a _ a b _ _ space c c ' -> "aab c'"
    ids = [1, 1, 5, 1, 2, 5, 5, 0, 3, 3, 4]
    assert CHARS.decode(one_hot(ids, 6)) == "aab c'"
    assert CHARS.decode_ids(np.array([], dtype=int)) == ""


def test_bpe_decoding_turns_word_markers_into_spaces():
    # ▁the ▁ca t t _ t s ▁ -> "the catts"
    assert PIECES.decode(one_hot([1, 2, 3, 3, 6, 3, 4, 5], 7)) == "the catts"
    assert PIECES.decode(one_hot([6, 6], 7)) == ""


def test_decoding_rejects_a_model_card_mismatch():
    with pytest.raises(DataError, match="different models"):
        CHARS.decode(one_hot([0, 1], 9))
    with pytest.raises(DataError, match="blank_id"):
        CtcVocabulary(("a", "b"), blank_id=0, tokenizer="char")


def test_bpe_join_matches_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the cat sat on the mat", "a dog's life is good", "cats and dogs"] * 30))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=40,
                                   model_type="bpe", minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tokens = tuple(processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    vocabulary = CtcVocabulary(tokens, blank_id=len(tokens), tokenizer="bpe")
    for sentence in ["the cat sat", "a dog's life", "cats and dogs on the mat"]:
        ids = processor.encode(sentence)
        # Insert a blank between repeats, as CTC must, and a repeat CTC must collapse.
        frames = [i for token in ids for i in (token, token, len(tokens))]
        assert vocabulary.decode(one_hot(frames, len(tokens) + 1)) == processor.decode(ids) == sentence


def test_char_decoding_matches_nemo_greedy():
    torch = pytest.importorskip("torch")
    from nemo_ptq.models.architectures import build_quartznet

    model = build_quartznet("quartznet_tiny")
    vocabulary = CtcVocabulary(tuple(model.decoder.vocabulary), len(model.decoder.vocabulary), "char")
    torch.manual_seed(0)
    with torch.inference_mode():
        features = torch.randn(1, 64, 400)
        log_probs, lengths, _ = model.forward(processed_signal=features, processed_signal_length=torch.tensor([400]))
        # Sharper random log-probs too, so blanks, repeats and many tokens all occur.
        sharp = torch.log_softmax(3 * torch.randn(4, 120, log_probs.shape[-1]), dim=-1)
        cases = [(log_probs, lengths), (sharp, torch.full((4,), 120))]
        for batch, batch_lengths in cases:
            nemo = model.decoding.ctc_decoder_predictions_tensor(batch, decoder_lengths=batch_lengths)
            ours = [vocabulary.decode(item[None].numpy()) for item in batch]
            assert ours == [hyp.text for hyp in nemo]
    assert any(ours)


def test_error_rates_on_known_strings():
    assert wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert word_errors(["the cat sat", "on the mat"], ["the hat sat", "on mat the"]).edits == 3
    assert wer(["the cat sat", "on the mat"], ["the hat sat", "on mat the"]) == pytest.approx(3 / 6)
    assert cer(["abcd"], ["abd"]) == pytest.approx(1 / 4)
    # An empty reference contributes its hypothesis as insertions; no reference units -> None.
    assert word_errors(["a b", ""], ["a b", "x y"]).edits == 2
    assert wer([""], ["x"]) is None
    assert char_errors([], []).rate is None


def test_score_sets_pools_by_set_kind_and_overall():
    rows = {
        "real1": [Transcript("u1", "the cat", "the cat", 3600.0)],
        "synth": [Transcript("u1", "a b c d", "a b x d", 1800.0)],
    }
    fp32 = {"real1": {"u1": "the bat"}, "synth": {"u1": "a b x d"}}
    scores = score_sets(rows, {"real1": "real", "synth": "synthetic"}, fp32)
    assert scores["sets"]["real1"] == {"kind": "real", "wer": 0.0, "cer": 0.0, "utterances": 1, "hours": 1.0,
                                       "wer_vs_fp32": 0.5}
    assert scores["kinds"]["synthetic"]["wer"] == 0.25
    overall = scores["overall"]
    assert overall["wer"] == pytest.approx(1 / 6) and overall["utterances"] == 2 and overall["hours"] == 1.5
    # Same ids in two sets must not mix up their FP32 references.
    assert overall["wer_vs_fp32"] == pytest.approx(1 / 6)
    assert "wer_vs_fp32" not in score_sets(rows, {"real1": "real", "synth": "synthetic"})["overall"]


def test_latency_stats_and_blocks():
    stats = latency_stats([0.010, 0.030, 0.020, 0.040, 0.100], audio_s=2.0)
    assert stats.median_ms == pytest.approx(30.0)
    assert stats.p90_ms == pytest.approx(76.0)  # linear interpolation between 40 and 100
    assert stats.rtf == pytest.approx(0.015)
    with pytest.raises(ValueError):
        latency_stats([], 1.0)
    calls = []
    timings = time_in_blocks({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 5, 2)
    # warm-up, then 2 rounds in rotating order: an untimed run and a block of 3, then of 2, timed runs
    assert "".join(calls) == "ab" + "aaaa" + "bbbb" + "bbb" + "aaa"
    assert [len(v) for v in timings.values()] == [5, 5]


def test_speech_like_signal_is_fixed_and_bounded():
    a, b = speech_like_signal(1.5, 16000), speech_like_signal(1.5, 16000)
    assert a.shape == (24000,) and a.dtype == np.float32
    assert np.array_equal(a, b) and 0 < np.abs(a).max() <= 0.5


@pytest.mark.parametrize("values, message", [
    ({"timed_rounds": 0}, "timed_rounds must be >= 1"),
    ({"timed_runs": 0}, "timed_runs must be >= 1"),
    ({"threads": 0}, "threads must be >= 1"),
])
def test_evaluate_params_name_the_bad_value(values, message):
    from nemo_ptq.config import parse_dataclass
    from nemo_ptq.errors import ConfigError
    from nemo_ptq.params import EvaluateParams

    with pytest.raises(ConfigError, match=message):
        parse_dataclass(EvaluateParams, values, where="evaluate")
