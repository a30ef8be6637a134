"""Recipe data logic: text normalization, sentence sampling, batching, held-out exclusion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from embedded_recipe.batching import DurationBatchSampler
from embedded_recipe.heldout import HeldOut, assert_no_leaks, leaks, without_held_out
from embedded_recipe.params import TrainParams
from embedded_recipe.text import normalize_text, sample_sentences
from embedded_recipe.train import lr_factor

REPO_ROOT = Path(__file__).resolve().parents[3]  # recipes/embedded/tests -> the repository


def test_normalize_text_keeps_apostrophes_and_splits_hyphens():
    assert normalize_text("  Don\u2019t STOP, well-known Mr. Smith! ") == "don't stop well known mr smith"


def test_sample_sentences_is_prefix_stable_and_respects_exclusions():
    pool = [f"the word {a}{b} again" for a in "abcdefghij" for b in "abcdefghijklmnopqrst"]
    small = sample_sentences(pool, 10, seed=3, min_words=2, max_words=20, exclude={pool[0]})
    large = sample_sentences(pool, 50, seed=3, min_words=2, max_words=20, exclude={pool[0]})
    assert large[:10] == small
    assert pool[0] not in large and len(set(large)) == 50


def test_duration_batches_cover_every_clip_once_within_budget():
    durations = list(np.random.default_rng(0).uniform(0.5, 15, size=500))
    sampler = DurationBatchSampler(durations, 40.0, seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(len(b) * max(durations[i] for i in b) <= 40.0 for b in batches)
    assert sampler.batches(0) != sampler.batches(1)


def test_lr_warms_up_then_anneals_to_the_floor_at_max_steps():
    lr = lambda step: lr_factor(step, max_steps=100, warmup_steps=10, min_ratio=0.01)  # noqa: E731
    assert lr(0) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5 * (1 + 1)))
    assert lr(9) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr(50) == pytest.approx(0.505)
    assert lr(100) == pytest.approx(0.01) == lr(500)


def test_a_restart_begins_a_new_warmup_and_cosine_that_ends_at_max_steps():
    lr = lambda step: lr_factor(step, max_steps=300, warmup_steps=10, min_ratio=0.01,  # noqa: E731
                                restarts=(100,))
    plain = lambda step: lr_factor(step, max_steps=100, warmup_steps=10, min_ratio=0.01)  # noqa: E731
    assert [lr(s) for s in range(100)] == [plain(s) for s in range(100)]
    assert lr(99) < 0.02 and lr(100) == pytest.approx(0.1)  # warms up again from the floor
    assert lr(200) == pytest.approx(0.505)  # half way through the 200-step second cycle
    assert lr(300) == pytest.approx(0.01)


@pytest.mark.parametrize("restarts", [[0], [50, 20], [300], [20, 20]])
def test_restarts_must_be_increasing_steps_inside_the_campaign(restarts):
    with pytest.raises(ValueError, match="lr_restarts"):
        TrainParams(max_steps=300, lr_restarts=restarts)


def _row(path: str, text: str, voices=(), **extra) -> dict:
    return {"audio_filepath": path, "duration": 1.0, "text": text, "voices": list(voices), **extra}


def test_leaks_name_every_kind_of_held_out_contact(tmp_path):
    held_out = HeldOut(voices=frozenset({"af_heart"}), texts=frozenset({"a held out sentence"}),
                       audio_files=frozenset({str(tmp_path / "test.flac")}))
    rows = [
        _row(str(tmp_path / "a.wav"), "fine text", ["af_bella", "af_heart"]),
        _row(str(tmp_path / "b.wav"), "A held-out sentence."),
        _row(str(tmp_path / "test.flac"), "other"),
        _row(str(tmp_path / "c.wav"), "other", source_audio=str(tmp_path / "test.flac")),
        _row(str(tmp_path / "ok.wav"), "fine text", ["af_bella"]),
    ]
    assert len(leaks(rows, held_out)) == 4
    kept = without_held_out(rows, held_out)
    assert [r["audio_filepath"] for r in kept] == [str(tmp_path / "ok.wav")]
    assert_no_leaks(kept, held_out)
    with pytest.raises(Exception, match="held-out"):
        assert_no_leaks(rows, held_out)


def _write_clips(folder: Path, texts: list[str], **fields) -> Path:
    """Tiny WAV files and a manifest for them (1 s of noise each)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(texts):
        path = folder / f"clip{i}.wav"
        sf.write(path, (rng.standard_normal(16000) * 0.05).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": path.name, "duration": 1.0, "text": text, "clip_id": f"c{i}",
                                 **{k: v[i] for k, v in fields.items()}}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def test_build_manifests_keeps_every_held_out_group_out_of_training(tmp_path):
    """End to end on tiny files: no held-out voice, text or recording reaches train or val."""
    import yaml

    from embedded_recipe import steps
    from embedded_recipe.params import load_recipe_params

    work = tmp_path / "work"
    real = _write_clips(tmp_path / "real", ["Real speech one", "real speech two", "the eval sentence"])
    test_other = _write_clips(tmp_path / "test", ["a test other sentence"])
    eval_sentences = tmp_path / "eval_sentences.txt"
    eval_sentences.write_text("The eval sentence.\n")
    synthesized = work / "synthesized"
    synthesized.mkdir(parents=True)
    for name, texts, voices in (
        ("kokoro_heldout", ["held out kokoro text"], [["af_heart"]]),
        ("kokoro_train", ["kokoro one", "held out kokoro text", "kokoro three", "a test other sentence"],
         [["af_bella"], ["af_bella"], ["af_bella", "af_heart"], ["am_adam"]]),
        ("espeak_train", ["espeak one", "espeak two"], [["en-us+m1"], ["en-us+f3"]]),
    ):
        manifest = _write_clips(tmp_path / name, texts, voices=voices, source=[name] * len(texts))
        (synthesized / f"{name}.jsonl").write_text(manifest.read_text().replace(
            '"clip', f'"{tmp_path / name}/clip'))
    params_file = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO_ROOT / "recipes/embedded/params.yaml").read_text())
    raw["work_dir"] = str(work)
    raw["real"] = {"sets": [{"name": "real", "manifest": str(real)}], "speed_perturb": [1.1]}
    raw["heldout"].update({"test_other": {"name": "test_other", "manifest": str(test_other)},
                           "sentence_files": [str(eval_sentences)]})
    raw["train"]["val_clips_per_source"] = 1
    params_file.write_text(yaml.safe_dump(raw))

    steps.build_manifests(load_recipe_params(params_file))

    paths = steps.WorkPaths(work)
    used = [json.loads(line) for name in ("train", "val") for line in paths.manifest(name).read_text().splitlines()]
    texts = {row["text"] for row in used}
    voices = {v for row in used for v in row.get("voices", [])}
    assert texts.isdisjoint({"the eval sentence", "held out kokoro text", "a test other sentence"})
    assert voices.isdisjoint({"af_heart", "en-us+f3"})
    assert {"real speech one", "real speech two", "kokoro one", "espeak one"} <= texts
    assert any("source_audio" in row for row in used)  # the speed-perturbed copies


SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared speech data (../shared/data)")
def test_synthesis_plans_keep_held_out_voices_and_texts_apart(tmp_path, monkeypatch):
    """With the real transcripts: no training clip uses a held-out voice or reads an evaluation text."""
    from embedded_recipe import steps
    from embedded_recipe.params import load_recipe_params

    monkeypatch.chdir(REPO_ROOT)
    params = load_recipe_params(Path("recipes/embedded/params.yaml"))
    voices_dir = tmp_path / "voices"
    voices_dir.mkdir()
    for name in ("af_heart", "am_michael", "bm_george", "af_bella", "af_sky", "am_adam", "bf_emma", "bm_lewis",
                 "am_santa"):
        np.zeros((4, 1, 256), np.float32).tofile(voices_dir / f"{name}.bin")

    plans = steps.synthesis_plans(params, voices_dir)

    heldout_texts = {u.text for u in plans["kokoro_heldout"]}
    evaluation_texts = heldout_texts | {normalize_text(r["text"]) for r in steps.load_source(params.heldout.test_other)}
    training = plans["kokoro_train"] + plans["espeak_train"]
    assert {u.voices[0] for u in plans["kokoro_heldout"]} == set(params.heldout.kokoro_voices)
    assert all(set(u.voices).isdisjoint(params.heldout.kokoro_voices + params.heldout.espeak_voices + ["am_santa"])
               for u in training)
    assert evaluation_texts.isdisjoint(u.text for u in training)
    assert len(heldout_texts) == len(plans["kokoro_heldout"])


def _recipe_driver():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_run", REPO_ROOT / "recipes/embedded/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_recipe_resumes_from_the_committed_checkpoint(monkeypatch):
    """The one-command recipe trains one phase whose checkpoint folder is in git, so a session resumes it."""
    from embedded_recipe.params import load_recipe_params

    monkeypatch.chdir(REPO_ROOT)
    run = _recipe_driver()
    (params,) = [load_recipe_params(path) for path in run.PHASES]
    assert params.train.checkpoint_dir.startswith("recipes/embedded/")
    assert not Path(params.train.checkpoint_dir).is_absolute()


def test_phases_that_disagree_on_data_are_refused(tmp_path, monkeypatch):
    import yaml

    from nemo_ptq.errors import ConfigError

    from embedded_recipe.params import load_recipe_params

    monkeypatch.chdir(REPO_ROOT)
    raw = yaml.safe_load((REPO_ROOT / "recipes/embedded/params.yaml").read_text())
    raw["kokoro"]["train_clips"] += 1
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    run = _recipe_driver()
    paths = [Path("recipes/embedded/params.yaml"), other]
    with pytest.raises(ConfigError, match="outside `train:`"):
        run.check_phases_agree([load_recipe_params(p) for p in paths], paths)
