"""Throughput measurement: length-sorted padded batches, the agreement with batch 1 that shows
whether padding reaches the valid frames, and concurrent streams in their own processes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nemo_ptq.config import parse_dataclass
from nemo_ptq.data.prepared import PreparedSet
from nemo_ptq.errors import ConfigError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.throughput import (
    MASKED, UNMASKED, RunnerSpec, headline, length_sorted_batches, measure_batches, measure_streams,
    measure_throughput, pad_batch, select_utterances, unmasked,
)
from nemo_ptq.params import EvaluateParams, ThroughputParams

VOCABULARY = CtcVocabulary(tokens=tuple("abcd"), blank_id=4, tokenizer="char")
RNG = np.random.default_rng(0)
WEIGHTS = RNG.standard_normal((5, 3)).astype(np.float32) * 3


def conv_model(features: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """A two-layer model with a 2-frame context and a bias: zero padding past a row's end becomes
    non-zero after the first layer, so unless `lengths` masks it, it changes that row's last frame."""
    hidden = np.maximum(features + 1.0, 0.0)  # [B, 3, T]
    if lengths is not None:
        hidden = hidden * (np.arange(hidden.shape[-1])[None, :] < lengths[:, None])[:, None, :]
    context = hidden + np.pad(hidden[:, :, 1:], ((0, 0), (0, 0), (0, 1)))
    logits = np.einsum("vf,bft->btv", WEIGHTS, context)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def utterance_features(lengths=(7, 3, 12, 5, 9)) -> list[np.ndarray]:
    return [RNG.standard_normal((3, n)).astype(np.float32) for n in lengths]


def test_batches_are_length_sorted_and_padded_with_zeros():
    assert length_sorted_batches([3, 9, 5, 9, 1], 2) == [[1, 3], [2, 0], [4]]
    x, lengths = pad_batch([np.ones((2, 3)), np.ones((2, 5))])
    assert x.shape == (2, 2, 5) and list(lengths) == [3, 5]
    assert not x[0, :, 3:].any() and x[1].all()


def test_masked_batches_give_batch_1_exactly_and_unmasked_ones_say_they_differ():
    features = utterance_features()
    durations = [f.shape[-1] / 100 for f in features]
    params = ThroughputParams(batch_sizes=(1, 2, 4), timed_passes=2)
    masked = measure_batches(conv_model, conv_model, features, durations, VOCABULARY, params, progress=False)
    assert set(masked) == {"1", "2", "4"}
    for result in masked.values():
        assert result["agreement"] == 1.0 and result["max_abs_logprob_diff"] < 1e-5
        assert result["rtfx"] > 0 and len(result["pass_seconds"]) == 2
    assert masked["1"]["padding_fraction"] == 0.0 and masked["4"]["padding_fraction"] > 0
    assert masked["2"]["batches"] == 3

    plain = measure_batches(conv_model, unmasked(conv_model), features, durations, VOCABULARY, params,
                            progress=False)
    assert plain["1"]["max_abs_logprob_diff"] < 1e-5
    assert plain["4"]["max_abs_logprob_diff"] > 1e-2  # the padding reached the shorter rows' last frames


def test_throughput_params_are_checked():
    with pytest.raises(ConfigError, match="batch_sizes must include 1"):
        parse_dataclass(EvaluateParams, {"throughput": {"batch_sizes": [4, 16]}}, where="evaluate")
    with pytest.raises(ConfigError, match="integers >= 1"):
        parse_dataclass(EvaluateParams, {"throughput": {"streams": [0]}}, where="evaluate")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_dataclass(EvaluateParams, {"throughput": {"batch": [1]}}, where="evaluate")
    params = parse_dataclass(EvaluateParams, {"throughput": {"batch_sizes": [16, 1, 4, 4]}}, where="evaluate")
    assert params.throughput.batch_sizes == (1, 4, 16)


@pytest.fixture(scope="module")
def fp32_model_dir(tmp_path_factory, tiny_nemo):
    """A fetch-pretrained folder of the tiny model, and prepared features of 5 utterances."""
    root = tmp_path_factory.mktemp("throughput")
    model_dir = root / "model"
    model_dir.mkdir()
    shutil.copy(tiny_nemo, model_dir / "model.nemo")
    shutil.copy(tiny_nemo.parent / "card.json", model_dir / "card.json")
    card = json.loads((model_dir / "card.json").read_text())
    folder = root / "set"
    (folder / "features").mkdir(parents=True)
    rows = []
    for i, frames in enumerate((90, 40, 150, 60, 120)):
        np.save(folder / "features" / f"u{i}.npy", RNG.standard_normal((card["feature_dim"], frames)).astype(np.float32))
        rows.append({"id": f"u{i}", "audio_filepath": f"u{i}.wav", "duration": frames / 100, "text": "a",
                     "text_norm": "a"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model_dir, PreparedSet(name="set", kind="real", role="eval", folder=folder)


def test_utterances_past_the_limit_are_taken_evenly(fp32_model_dir):
    _, prepared_set = fp32_model_dir
    assert [u.id for u in select_utterances([prepared_set], 3)] == ["u0", "u2", "u4"]
    assert len(select_utterances([prepared_set], 10)) == 5


def test_nemo_fp32_masks_padding_and_streams_run_in_their_own_processes(fp32_model_dir):
    from nemo_ptq.evaluation.fp32 import NemoEagerRunner, load_fp32
    from nemo_ptq.models.card import read_card

    model_dir, prepared_set = fp32_model_dir
    runner = NemoEagerRunner(load_fp32(model_dir))
    vocabulary = CtcVocabulary.from_card(read_card(model_dir))
    params = ThroughputParams(batch_sizes=(1, 4), streams=(1, 2), timed_passes=1)
    spec = RunnerSpec("fp32", None, model_dir, None)
    result = measure_throughput(spec, runner, runner.batch, [prepared_set], vocabulary, params, threads=2,
                                progress=False)
    assert result["padding"] == MASKED and result["utterances"] == 5
    assert result["audio_s"] == pytest.approx(4.6)
    assert result["batch"]["4"]["agreement"] == 1.0 and result["batch"]["4"]["max_abs_logprob_diff"] < 1e-4
    assert result["streams"]["2"]["threads_per_stream"] == 1
    for streams in result["streams"].values():
        assert streams["rtfx"] > 0 and streams["latency_ms_p90"] >= streams["latency_ms_median"] > 0
    figures = headline(result)
    assert set(figures) == {"rtfx_batch1", "rtfx_batch4", "rtfx_streams1", "rtfx_streams2", "batch_agreement",
                            "rtfx_best", "rtfx_best_setting"}
    assert figures["rtfx_best"] == max(v for k, v in figures.items() if k.startswith(("rtfx_batch", "rtfx_streams")))
    unmasked_result = measure_throughput(spec, runner, None, [prepared_set], vocabulary,
                                         ThroughputParams(batch_sizes=(1,), streams=(1,), timed_passes=1), 1,
                                         progress=False)
    assert unmasked_result["padding"] == UNMASKED


def test_a_stream_that_cannot_load_fails_the_measurement(fp32_model_dir, tmp_path):
    _, prepared_set = fp32_model_dir
    spec = RunnerSpec("fp32", None, tmp_path / "no-model", None)
    with pytest.raises(Exception):
        measure_streams(spec, prepared_set.utterances(), 2, 2)


def test_the_best_rtfx_counts_only_settings_that_keep_the_transcripts():
    measured = {"batch": {"1": {"rtfx": 10.0, "agreement": 1.0}, "4": {"rtfx": 30.0, "agreement": 0.995},
                          "16": {"rtfx": 50.0, "agreement": 0.4}},
                "streams": {"2": {"rtfx": 20.0}}}
    figures = headline(measured)
    assert figures["rtfx_best"] == 30.0 and figures["rtfx_best_setting"] == "batch 4"
    assert figures["batch_agreement"] == 0.4 and figures["rtfx_batch16"] == 50.0  # measured, but not the best


def test_batch_sizes_over_the_backends_limit_are_not_run_and_say_why():
    features = utterance_features()
    durations = [f.shape[-1] / 100 for f in features]
    calls = []

    def counting(x, lengths):
        calls.append(x.shape[0])
        return conv_model(x, lengths)

    params = ThroughputParams(batch_sizes=(1, 2, 4), timed_passes=1)
    result = measure_batches(conv_model, counting, features, durations, VOCABULARY, params, progress=False,
                             limit=(2, "too much memory"))
    assert result["4"] == {"skipped": "too much memory"} and result["2"]["agreement"] == 1.0
    assert max(calls) == 2  # no batch of 4 was ever run
    figures = headline({"batch": result, "streams": {}})
    assert "rtfx_batch4" not in figures and figures["batch_agreement"] == result["2"]["agreement"]


def test_only_qnnpack_limits_its_batches():
    from nemo_ptq.backends import get_backend

    qnnpack = get_backend("q", {"backend": "eager", "engine": "qnnpack"}).batch_limit()
    assert qnnpack[0] == 1 and "memory" in qnnpack[1]
    assert get_backend("x", {"backend": "eager", "engine": "x86"}).batch_limit() is None
    assert get_backend("o", {"backend": "ort"}).batch_limit() is None
