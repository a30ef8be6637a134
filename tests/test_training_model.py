"""Recipe training smoke run, export, and the committed embedded model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY, preprocessor_config

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "data" / "embedded" / "model.nemo"


def _tiny_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(["hello world", "don't stop"]):
        path = folder / f"clip{i}.wav"
        sf.write(path, (rng.standard_normal(16000) * 0.05).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": 1.0, "text": text}))
    manifest = folder / "tiny_clips.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_two_step_training_run_checkpoints_and_exports(tmp_path):
    from nemo.collections.asr.models import EncDecCTCModel

    from nemo_ptq.training.export import export_model
    from nemo_ptq.training.params import TrainParams
    from nemo_ptq.training.train import load_checkpoint, train

    manifest = _tiny_manifest(tmp_path)
    params = dataclasses.replace(TrainParams(), architecture="quartznet_tiny", max_epochs=2, val_every_steps=1,
                                 batch_seconds=18.0, max_minutes=2.0)
    summary = train(params, manifest, manifest, tmp_path / "ckpt")
    assert summary["global_step"] == 2
    assert (tmp_path / "ckpt" / "last.ckpt").is_file() and Path(summary["best_checkpoint"]).is_file()

    export_model(load_checkpoint(Path(summary["best_checkpoint"])), tmp_path / "model.nemo")
    restored = EncDecCTCModel.restore_from(str(tmp_path / "model.nemo"), map_location="cpu")
    assert restored.spec_augmentation is None and restored.cfg.train_ds is None
    assert list(restored.decoder.vocabulary) == list(QUARTZNET_VOCABULARY)


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


def test_model_card_labels_each_training_run_with_its_phase():
    from nemo_ptq.training.export import _phase_lines

    def run(folder, step, minutes):
        return {"checkpoint_dir": folder, "global_step": step, "epochs": step / 100, "wall_minutes_this_run": minutes,
                "best_val_wer": 0.5}

    resumed = {**run("finetune", 300, 20), "threads": 2}
    lines = _phase_lines([run("checkpoints", 100, 10), run("finetune", 50, 5), resumed])
    assert [line.split(":")[0].strip() for line in lines] == ["- phase 1", "- phase 2", "- phase 2, resumed"]
    assert "20 min on 2 threads, at step 300 of the phase (3.0 epochs)" in lines[2]
    assert "10 min, at step 100" in lines[0]  # runs recorded before threads were
