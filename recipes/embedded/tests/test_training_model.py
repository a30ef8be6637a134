"""Recipe training smoke run, export, and the committed embedded model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY, preprocessor_config

EMBEDDED_MODEL = Path(__file__).resolve().parents[3] / "data" / "embedded" / "model.nemo"


def _tiny_features(folder: Path):
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    from embedded_recipe.features import load_or_compute

    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(["hello world", "don't stop", "one more"]):
        path = folder / f"clip{i}.wav"
        sf.write(path, (rng.standard_normal(16000) * 0.05).astype(np.float32), 16000)
        rows.append({"audio_filepath": str(path), "duration": 1.0, "text": text})
    cfg = {k: v for k, v in preprocessor_config().items() if k != "_target_"}
    return load_or_compute(rows, AudioToMelSpectrogramPreprocessor(**cfg), cfg, folder / "features.pt", "tiny")


def _tiny_params(**changes):
    from embedded_recipe.params import TrainParams

    settings = dict(architecture="quartznet_tiny", max_steps=5, val_every_steps=2, max_duration_s=2.0,
                    batch_seconds=2.0, precision="fp32", warmup_steps=2)
    return dataclasses.replace(TrainParams(), **settings | changes)


def test_feature_cache_is_reused_and_redone_when_a_clip_changes(tmp_path):
    first = _tiny_features(tmp_path)
    assert len(first) == 3 and all(f.shape[0] == 64 for f in first.features)
    stamp = (tmp_path / "features.pt").stat().st_mtime_ns
    assert _tiny_features(tmp_path).texts == first.texts
    assert (tmp_path / "features.pt").stat().st_mtime_ns == stamp
    sf.write(tmp_path / "clip0.wav", np.zeros(8000, np.float32), 16000)  # same rows: the cache key is the manifest
    from embedded_recipe import features

    rows = [{"audio_filepath": str(tmp_path / f"clip{i}.wav"), "duration": 1.0, "text": t}
            for i, t in enumerate(["hello world", "don't stop", "one more changed"])]
    assert features.manifest_digest(rows, {}) != features.manifest_digest(rows[:2], {})


def test_resumed_training_matches_an_unbroken_run(tmp_path):
    """Stopping after every step and resuming gives the weights of one uninterrupted run."""
    import torch

    from embedded_recipe.train import LAST_CHECKPOINT, train

    feats = _tiny_features(tmp_path)
    unbroken = train(_tiny_params(), feats, feats, tmp_path / "unbroken")
    assert unbroken["step"] == 5 and [p["step"] for p in unbroken["curve"]] == [2, 4, 5]
    for _ in range(5):
        resumed = train(_tiny_params(), feats, feats, tmp_path / "resumed", minutes=0)  # stops after one step
    assert resumed["step"] == 5 and len(resumed["runs"]) == 5
    a = torch.load(tmp_path / "unbroken" / LAST_CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "resumed" / LAST_CHECKPOINT, weights_only=False)
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    assert [p["val_wer"] for p in a["progress"]["curve"]] == [p["val_wer"] for p in b["progress"]["curve"]]


def test_training_starts_from_given_weights_and_exports(tmp_path):
    import torch
    from nemo.collections.asr.models import EncDecCTCModel

    from embedded_recipe.export import export_model
    from embedded_recipe.train import BEST_CHECKPOINT, LAST_CHECKPOINT, initial_weights, load_checkpoint, train

    feats = _tiny_features(tmp_path)
    train(_tiny_params(max_steps=2), feats, feats, tmp_path / "first")
    export_model(load_checkpoint(tmp_path / "first" / BEST_CHECKPOINT), tmp_path / "model.nemo")
    restored = EncDecCTCModel.restore_from(str(tmp_path / "model.nemo"), map_location="cpu")
    assert restored.spec_augmentation is None and restored.cfg.train_ds is None
    assert list(restored.decoder.vocabulary) == list(QUARTZNET_VOCABULARY)

    second = train(_tiny_params(max_steps=1, lr=0.0), feats, feats, tmp_path / "second", tmp_path / "model.nemo")
    assert second["init_from"]["sha256"] and second["init_from"]["path"].endswith("model.nemo")
    after = torch.load(tmp_path / "second" / LAST_CHECKPOINT, weights_only=False)["state_dict"]
    before = initial_weights(tmp_path / "model.nemo")
    conv = next(k for k in before if k.endswith("conv.weight"))
    assert torch.equal(after[conv], before[conv])  # lr 0: the weights are the given ones


@pytest.mark.skipif(not EMBEDDED_MODEL.is_file(), reason="data/embedded/model.nemo not built yet")
def test_embedded_model_restores_offline_with_quartznet_settings():
    from nemo.collections.asr.models import EncDecCTCModel

    model = EncDecCTCModel.restore_from(str(EMBEDDED_MODEL), map_location="cpu")
    assert list(model.decoder.vocabulary) == list(QUARTZNET_VOCABULARY)
    expected = preprocessor_config()
    actual = model.cfg.preprocessor
    for key in ("sample_rate", "normalize", "window_size", "window_stride", "features", "n_fft"):
        assert actual[key] == expected[key], key
    assert type(model.encoder).__name__ == "ConvASREncoder"
    assert EMBEDDED_MODEL.stat().st_size <= 30e6


def test_active_clock_leaves_out_a_pause(monkeypatch):
    from embedded_recipe import train as training

    now = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: now[0])
    clock = training.ActiveClock()
    for gap in [1.0, 1.2, 0.8, 1.0, 600.0, 1.0, 20.0]:  # 600 s: stopped by SIGSTOP; 20 s: a validation
        now[0] += gap
        clock.tick()
    assert clock.paused_minutes * 60 == pytest.approx(599.0)
    assert clock.minutes * 60 == pytest.approx(1 + 1.2 + 0.8 + 1 + 1 + 1 + 20)


def test_model_card_shows_every_run_curve_point_and_lossy_source():
    from embedded_recipe.export import render_markdown

    run = {"start_step": 0, "minutes": 60.0, "audio_hours": 45.0, "cpu": "AMD EPYC", "threads": 2, "bf16": True}
    curve = [{"step": s, "epoch": s / 1000, "minutes": s / 60, "train_loss": 100.0 - s / 100, "val_wer": 0.9 - s / 1e4}
             for s in (500, 1000)]
    card = {
        "model": "m.nemo", "architecture": "quartznet_5x5_half", "family": "QuartzNet", "parameters": 1850333,
        "size_mb": 7.6, "features": "f", "vocabulary": "v", "restore_seconds": 0.2,
        "training_data": {"hours": 31.3, "real_hours": 29.4, "real_hours_without_copies": 9.8, "synthetic_hours": 1.8,
                          "by_source": {"speechocean762": {"clips": 10, "hours": 1.0},
                                        "speechocean762_sp0.9": {"clips": 10, "hours": 1.1},
                                        "vctk_p239": {"clips": 5, "hours": 0.1}}},
        "lossy_sources": {"speechocean762": "Opus ~29 kbps"}, "espeak_train_voices": 28,
        "training": {"step": 1000, "epoch": 1.0, "minutes": 60.0, "best_step": 1000, "best_val_wer": 0.8,
                     "init_from": {"path": "old.nemo", "sha256": "ab12"}, "runs": [run, {**run, "start_step": 900}],
                     "curve": curve, "params": {"max_steps": 24000, "lr_restarts": [12000]}, "before_this_recipe": "earlier recipe"},
        "evaluation": {"test_other": {"wer": 0.7, "cer": 0.3}, "kokoro_heldout": {"wer": 0.15, "cer": 0.05}},
        "evaluation_examples": {"test_other": [{"ref": "a b", "hyp": "a c"}]},
        "held_out": {"espeak_voices": ["en-us+f3", "en-us+m6"], "sentence_files": ["eval.txt", "dev.txt"]},
    }
    text = render_markdown(card)
    assert "| 0 | 60.0 | 45.0 | 45 | AMD EPYC, 2 threads, bf16 autocast |" in text
    assert "| 900 |" in text
    assert "| 500 | 0.50 | 8 | 95.0 | 0.850 |" in text and "| 1000 | 1.00 | 17 | 90.0 | 0.800 |" in text
    assert text.count("Opus ~29 kbps") == 2  # the set and its speed-perturbed copy
    assert "| vctk_p239 | 5 | 0.10 |  |" in text
    assert "≤ 60%: not met" in text and "≤ 20%: met" in text
    assert "`old.nemo` (sha256 `ab12`)" in text
    assert "espeak-ng with 28 voices" in text and "`lr_restarts`: [12000]" in text
    assert "(en-us+f3, en-us+m6; no klatt" in text and "every sentence of `eval.txt`, `dev.txt`." in text


def test_a_resume_on_a_changed_training_set_starts_a_new_epoch(tmp_path):
    """Clips added between sessions: the run records the new set, and the old epoch's batch order
    (indices into the old set) is not continued."""
    from embedded_recipe.features import FeatureSet
    from embedded_recipe.train import train

    feats = _tiny_features(tmp_path)
    first = train(_tiny_params(batch_seconds=1.0, max_duration_s=1.0), feats, feats, tmp_path / "ckpt", minutes=0)  # one step
    assert first["epoch"] == 0 and first["batch_in_epoch"] == 1
    assert first["runs"][0]["train_set"]["clips"] == 3
    same = train(_tiny_params(batch_seconds=1.0, max_duration_s=1.0), feats, feats, tmp_path / "ckpt", minutes=0)
    assert same["epoch"] == 0 and same["batch_in_epoch"] == 2, "the same set continues its epoch"
    more = FeatureSet(feats.features + feats.features[:1], feats.tokens + feats.tokens[:1], feats.texts + ["extra"])
    grown = train(_tiny_params(batch_seconds=1.0, max_duration_s=1.0), more, feats, tmp_path / "ckpt", minutes=0)
    assert grown["epoch"] == 1 and grown["batch_in_epoch"] == 1
    assert [run["train_set"]["clips"] for run in grown["runs"]] == [3, 3, 4]
    assert grown["runs"][1]["train_set"]["digest"] != grown["runs"][2]["train_set"]["digest"]


def test_a_changed_validation_set_restarts_the_best_wer(tmp_path, capsys):
    from embedded_recipe.features import FeatureSet
    from embedded_recipe.train import train

    feats = _tiny_features(tmp_path)
    params = _tiny_params(val_every_steps=1)
    first = train(params, feats, feats, tmp_path / "ckpt", minutes=0)
    assert first["best_val_wer"] is not None
    fewer = FeatureSet(feats.features[:2], feats.tokens[:2], feats.texts[:2])
    again = train(params, feats, fewer, tmp_path / "ckpt", minutes=0)
    assert again["runs"][-1]["val_set"]["clips"] == 2
    assert "validation set changed (3 -> 2 clips)" in capsys.readouterr().out
    assert again["best_step"] == 2 and again["best_val_wer"] == again["curve"][-1]["val_wer"], \
        "the first point on the new set is the best so far, whatever the old set's WER was"


def test_progress_file_lists_the_runs_and_the_curve(tmp_path):
    from embedded_recipe.export import write_progress
    from embedded_recipe.train import train

    feats = _tiny_features(tmp_path)
    progress = train(_tiny_params(), feats, feats, tmp_path / "ckpt", minutes=0)
    progress = train(_tiny_params(), feats, feats, tmp_path / "ckpt")
    write_progress(progress, {"max_steps": 5}, tmp_path / "PROGRESS.md")
    text = (tmp_path / "PROGRESS.md").read_text()
    assert "Step 5 of 5" in text and "random initialization" in text
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "thread" in line] \
        == ["0", "1"]
    assert sum(line.startswith(("| 2 |", "| 4 |", "| 5 |")) for line in text.splitlines()) == 3


def _ctc_model(width: float, seed: int):
    import torch
    from nemo.collections.asr.models import EncDecCTCModel

    from nemo_ptq.models.architectures import QuartzNetShape, quartznet_config

    torch.manual_seed(seed)
    model = EncDecCTCModel(cfg=quartznet_config(QuartzNetShape(block_repeats=1, sub_blocks=2, width=width)))
    for module in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _log_probs(model, features, lengths):
    import torch

    with torch.inference_mode():
        encoded, _ = model.encoder(audio_signal=features, length=lengths)
        return model.decoder(encoder_output=encoded)


def test_widened_model_starts_from_the_narrow_models_function():
    import torch

    from embedded_recipe.train import starting_weights
    from embedded_recipe.widen import widened_state_dict

    narrow, wide = _ctc_model(0.125, seed=1), _ctc_model(0.25, seed=2)
    features, lengths = torch.randn(2, 64, 120), torch.tensor([120, 90])
    expected = _log_probs(narrow, features, lengths)
    assert not torch.allclose(_log_probs(wide, features, lengths), expected, atol=1e-3)

    wide.load_state_dict(widened_state_dict(narrow.state_dict(), wide.state_dict()))
    assert torch.allclose(_log_probs(wide, features, lengths), expected, atol=1e-4)

    # With the symmetry-breaking noise the copies differ, and the function stays close.
    wide.load_state_dict(starting_weights(narrow.state_dict(), wide.state_dict(), seed=0))
    weight = next(v for k, v in wide.state_dict().items() if v.dim() == 3 and v.shape[0] == 64)
    assert not torch.equal(weight[:32], weight[32:])
    agreement = (_log_probs(wide, features, lengths).argmax(-1) == expected.argmax(-1)).float().mean()
    assert agreement > 0.9


def test_widening_refuses_a_non_integer_ratio_and_other_layers():
    import torch

    from nemo_ptq.errors import ConfigError

    from embedded_recipe.widen import widened_state_dict

    with pytest.raises(ConfigError, match="not a multiple"):
        widened_state_dict({"w": torch.zeros(32, 8, 3)}, {"w": torch.zeros(48, 8, 3)})
    with pytest.raises(ConfigError, match="differ in layers"):
        widened_state_dict({"w": torch.zeros(32, 8, 3)}, {"v": torch.zeros(64, 8, 3)})


def test_train_report_is_rebuilt_from_the_committed_checkpoint_on_a_fresh_machine(tmp_path, monkeypatch):
    """A clone has the checkpoint but no reports/train.json: evaluate and export must still find best.ckpt."""
    import json

    from nemo_ptq.errors import DataError

    from embedded_recipe import steps
    from embedded_recipe.params import load_recipe_params
    from embedded_recipe.train import BEST_CHECKPOINT, train

    feats = _tiny_features(tmp_path)
    recipe = load_recipe_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params = dataclasses.replace(recipe, work_dir=str(tmp_path / "work"),
                                 train=_tiny_params(checkpoint_dir=str(tmp_path / "ckpt")))
    monkeypatch.setattr(steps, "feature_sets", lambda p, names=("train", "val"): {n: feats for n in names})
    with pytest.raises(DataError, match="run `python recipes/embedded/run.py --steps train` first"):
        steps.train_report(params)
    progress = train(params.train, feats, feats, tmp_path / "ckpt")

    report = steps.train_report(params)
    assert report["best_checkpoint"] == str(tmp_path / "ckpt" / BEST_CHECKPOINT)
    assert (report["step"], report["curve"]) == (progress["step"], progress["curve"])
    written = tmp_path / "work" / "reports" / "train.json"
    assert json.loads(written.read_text())["step"] == progress["step"]
    assert (tmp_path / "ckpt" / "PROGRESS.md").is_file()
