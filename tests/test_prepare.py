"""The prepare step on a tiny model: layout, features, and clean failures of the stage script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from nemo_ptq.data.config import parse_data_params
from nemo_ptq.data.prepared import PreparedData
from nemo_ptq.data.preparation import prepare_data
from nemo_ptq.errors import DataError

STAGE = Path(__file__).resolve().parents[1] / "stages" / "prepare.py"


def write_clip(path: Path, seconds: float, rate: int) -> None:
    """A noisy, amplitude-modulated tone: enough spectral variety for real-looking features."""
    rng = np.random.default_rng(len(path.name))
    t = np.arange(int(seconds * rate)) / rate
    signal = (0.3 + 0.2 * np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 180 * t)
    sf.write(str(path), (signal + 0.01 * rng.standard_normal(t.size)).astype(np.float32), rate)


@pytest.fixture
def workspace(tmp_path):
    """A folder with a 2-clip manifest (16 kHz and 48 kHz) and a 2-sentence text file."""
    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "a.wav", 1.23, 16000)  # 123 valid frames: not a multiple of 16
    write_clip(tmp_path / "clips" / "b.wav", 0.87, 48000)  # resampled down to 16 kHz
    rows = [{"audio_filepath": "a.wav", "duration": 1.23, "text": "Ten of Clubs."},
            {"audio_filepath": "b.wav", "duration": 0.87, "text": "four queen"}]
    (tmp_path / "clips" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cal.txt").write_text("The kettle is boiling.\nShut the gate, please.\n")
    return tmp_path


def data_section(calibration_set=None):
    return {
        "eval_sets": [{"name": "clips", "kind": "real", "manifest": "clips/m.jsonl"}],
        "calibration_set": calibration_set or {
            "name": "cal", "kind": "synthetic",
            "tts": {"engine": "espeak-ng", "voices": ["en-us", "en-gb+f2"], "sentences": "cal.txt"},
        },
        "max_duration_s": 5.0,
    }


def run_stage(workspace: Path, model: Path, section: dict) -> subprocess.CompletedProcess:
    (workspace / "params.yaml").write_text(yaml.safe_dump({"data": section}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, str(STAGE), "--model", str(model), "--params", "params.yaml", "--out", "prepared"],
        cwd=workspace, capture_output=True, text=True, env=env, timeout=120,
    )


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_prepare_writes_documented_layout_with_valid_frames_only(workspace, tiny_nemo, tiny_model, monkeypatch):
    monkeypatch.chdir(workspace)  # paths in params are relative to the working directory
    prepare_data(parse_data_params(data_section()), tiny_nemo, workspace / "prepared")

    prepared = PreparedData.load(workspace / "prepared")
    assert (prepared.sample_rate, prepared.feature_dim) == (16000, 64)
    summary = json.loads((workspace / "prepared" / "summary.json").read_text())
    assert [(s["name"], s["kind"], s["role"], s["utterances"]) for s in summary["sets"]] == [
        ("clips", "real", "eval", 2), ("cal", "synthetic", "calibration", 2)]
    assert summary["sets"][0]["seconds"] == pytest.approx(2.1, abs=1e-3)

    clips = prepared.eval_sets[0].utterances()
    assert [u.text_norm for u in clips] == ["ten of clubs", "four queen"]
    assert {u.text_norm for u in prepared.calibration_set.utterances()} == {
        "the kettle is boiling", "shut the gate please"}

    padded = 0
    for utt in clips + prepared.calibration_set.utterances():
        info = sf.info(str(utt.audio_path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(str(utt.audio_path), dtype="float32")
        assert utt.duration == pytest.approx(len(audio) / 16000)
        with torch.inference_mode():
            feats, lengths = tiny_model.preprocessor(
                input_signal=torch.from_numpy(audio)[None], length=torch.tensor([len(audio)]))
        valid = int(lengths[0])
        padded += feats.shape[-1] > valid
        stored = utt.features()
        assert stored.dtype == np.float32 and stored.shape == (64, valid)
        np.testing.assert_allclose(stored, feats[0, :, :valid].numpy(), atol=1e-5)
    assert padded, "no clip exercised the trimming of NeMo's pad frames"
    assert summary["features_from"] == "NeMo preprocessor"  # this card has no frontend graph


def test_stage_bad_manifest_gives_one_error_line_and_no_output(workspace, tiny_nemo):
    (workspace / "clips" / "m.jsonl").write_text('{"audio_filepath": "a.wav", "duration": 1.23,\n')
    (workspace / "prepared").mkdir()  # a stale output must not survive a failed run
    (workspace / "prepared" / "stale.txt").write_text("old")

    result = run_stage(workspace, tiny_nemo, data_section())

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "clips/m.jsonl line 1 is not valid JSON" in errors[0], result.stderr
    assert not (workspace / "prepared").exists()


def test_calibration_sharing_audio_with_eval_is_refused(workspace, tiny_nemo, monkeypatch):
    (workspace / "clips" / "copy.jsonl").write_text(json.dumps(
        {"audio_filepath": "b.wav", "duration": 0.87, "text": "something else"}) + "\n")
    monkeypatch.chdir(workspace)
    params = parse_data_params(data_section(
        calibration_set={"name": "cal", "kind": "real", "manifest": "clips/copy.jsonl"}))
    with pytest.raises(DataError, match="'cal' and eval set 'clips' share 1 audio file"):
        prepare_data(params, tiny_nemo, workspace / "prepared")


def prepare_with_real_calibration(workspace: Path, model: Path, monkeypatch) -> Path:
    """Prepare the workspace's eval manifest with a 1-clip real calibration set (no TTS needed)."""
    write_clip(workspace / "clips" / "c.wav", 0.5, 16000)
    (workspace / "clips" / "cal.jsonl").write_text(json.dumps({"audio_filepath": "c.wav", "duration": 0.5,
                                                               "text": "Shut the gate."}) + "\n")
    monkeypatch.chdir(workspace)
    params = parse_data_params(data_section(
        calibration_set={"name": "cal", "kind": "real", "manifest": "clips/cal.jsonl"}))
    prepare_data(params, model, workspace / "prepared")
    return workspace / "prepared"


def test_prepare_warns_once_about_characters_the_model_cannot_write(workspace, tiny_nemo, monkeypatch, capsys):
    rows = [{"audio_filepath": "a.wav", "duration": 1.23, "text": "Caf\u00e9 na\u00efve \u4f60\u597d"},
            {"audio_filepath": "b.wav", "duration": 0.87, "text": "room 101"}]
    (workspace / "clips" / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    prepare_with_real_calibration(workspace, tiny_nemo, monkeypatch)

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "2 utterances with 6 characters not in the model's vocabulary: 0 1 \u00e9 \u00ef \u4f60 \u597d" in warnings[0]
    clips = PreparedData.load(workspace / "prepared").eval_sets[0].utterances()
    assert [u.text_norm for u in clips] == ["cafe naive", "room"]


def test_prepare_needs_the_model_card(workspace, tiny_nemo, monkeypatch):
    alone = workspace / "model" / "model.nemo"
    alone.parent.mkdir()
    shutil.copy(tiny_nemo, alone)
    monkeypatch.chdir(workspace)
    with pytest.raises(DataError, match="card.json is missing: run the fetch-pretrained stage"):
        prepare_data(parse_data_params(data_section()), alone, workspace / "prepared")


@pytest.fixture(scope="module")
def model_with_frontend(tmp_path_factory, tiny_nemo, tiny_model) -> Path:
    """What fetch-pretrained writes for an exportable preprocessor: card.json naming frontend.onnx.
    model.nemo is a placeholder, so a prepare that loaded NeMo would fail."""
    from nemo_ptq.models import frontend

    folder = tmp_path_factory.mktemp("model_with_frontend")
    name, _ = frontend.write_frontend(tiny_model, folder, 16000)
    card = json.loads((tiny_nemo.parent / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "frontend": name}))
    (folder / "model.nemo").write_text("not a model: prepare must not need it")
    return folder / "model.nemo"


def test_features_come_from_the_exported_frontend_in_onnx_runtime(workspace, model_with_frontend, tiny_model,
                                                                 monkeypatch):
    """What a waveform-input artifact computes inside, so evaluate's transcripts are the deployed ones."""
    import onnxruntime

    from nemo_ptq.models import frontend

    prepared = prepare_with_real_calibration(workspace, model_with_frontend, monkeypatch)
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["features_from"] == "frontend.onnx in ONNX Runtime"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # as prepare runs it: threads may change float summation order
    session = onnxruntime.InferenceSession(str(model_with_frontend.parent / frontend.FRONTEND_FILE), options,
                                           providers=["CPUExecutionProvider"])
    data = PreparedData.load(prepared)
    assert (data.sample_rate, data.feature_dim) == (16000, 64)
    for utt in data.eval_sets[0].utterances() + data.calibration_set.utterances():
        audio, _ = sf.read(str(utt.audio_path), dtype="float32")
        graph, length = session.run(None, frontend.waveform_feed(audio))
        assert np.array_equal(utt.features(), graph[0, :, : int(length[0])])
        with torch.inference_mode():
            nemo, nemo_length = tiny_model.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                                        length=torch.tensor([len(audio)]))
        assert utt.features().shape == (64, int(nemo_length[0]))
        np.testing.assert_allclose(utt.features(), nemo[0, :, : int(nemo_length[0])].numpy(), atol=1e-3)


@pytest.mark.parametrize("samples", [0, 100])
def test_a_clip_too_short_for_the_frontend_is_one_data_error(model_with_frontend, samples):
    from nemo_ptq.data.features import model_feature_extractor

    extractor = model_feature_extractor(model_with_frontend)
    with pytest.raises(DataError, match="too short to transcribe"):
        extractor(np.zeros(samples, dtype=np.float32))


DEV_STAGE = Path(__file__).resolve().parents[1] / "stages" / "prepare_dev.py"


@pytest.fixture
def prepared(workspace, tiny_nemo, monkeypatch):
    """data/prepared of the workspace: the 2-clip eval set and a 1-clip real calibration set."""
    return prepare_with_real_calibration(workspace, tiny_nemo, monkeypatch)


def _dev_manifest(workspace: Path, clip: str, text: str) -> dict:
    (workspace / "clips" / "dev.jsonl").write_text(json.dumps({"audio_filepath": clip, "duration": 0.6,
                                                               "text": text}) + "\n")
    return {"name": "dev", "kind": "real", "manifest": "clips/dev.jsonl"}


def test_dev_set_is_prepared_in_the_same_layout_with_role_dev(workspace, tiny_nemo, prepared):
    from nemo_ptq.data.config import parse_dev_set
    from nemo_ptq.data.preparation import prepare_dev

    write_clip(workspace / "clips" / "d.wav", 0.6, 16000)
    spec = parse_dev_set(_dev_manifest(workspace, "d.wav", "Open the window."))
    prepare_dev(spec, 5.0, tiny_nemo, prepared, workspace / "dev")

    dev = PreparedData.load(workspace / "dev")
    assert [s.role for s in dev.sets] == ["dev"] and dev.dev_set.name == "dev"
    assert [u.text_norm for u in dev.dev_set.utterances()] == ["open the window"]
    assert dev.dev_set.utterances()[0].features().shape[0] == dev.feature_dim
    with pytest.raises(DataError, match="0 dev sets"):
        PreparedData.load(prepared).dev_set


def test_dev_set_sharing_audio_with_an_eval_or_calibration_set_is_refused(workspace, tiny_nemo, prepared):
    from nemo_ptq.data.config import parse_dev_set
    from nemo_ptq.data.preparation import prepare_dev

    for clip, other in (("b.wav", "eval set 'clips'"), ("c.wav", "calibration set 'cal'")):
        spec = parse_dev_set(_dev_manifest(workspace, clip, "something else"))
        with pytest.raises(DataError, match=f"dev set 'dev' and {other} share 1 prepared audio"):
            prepare_dev(spec, 5.0, tiny_nemo, prepared, workspace / f"dev_{clip}")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synthetic_dev_set_reading_an_eval_sentence_is_refused(workspace, tiny_nemo, prepared):
    from nemo_ptq.data.config import parse_dev_set
    from nemo_ptq.data.preparation import prepare_dev

    (workspace / "dev.txt").write_text("A new sentence here.\nFour queen!\n")  # "four queen" is an eval reference
    spec = parse_dev_set({"name": "dev", "kind": "synthetic",
                          "tts": {"engine": "espeak-ng", "voices": ["en-us+m6"], "sentences": "dev.txt"}})
    with pytest.raises(DataError, match="dev set 'dev' and eval set 'clips' share 1 sentence"):
        prepare_dev(spec, 5.0, tiny_nemo, prepared, workspace / "dev")


def test_dev_stage_refuses_a_taken_name_in_one_line_and_leaves_no_output(workspace, tiny_nemo, prepared):
    write_clip(workspace / "clips" / "d.wav", 0.6, 16000)
    section = data_section(calibration_set={"name": "cal", "kind": "real", "manifest": "clips/cal.jsonl"})
    dev = _dev_manifest(workspace, "d.wav", "Open the window.") | {"name": "clips"}
    (workspace / "params.yaml").write_text(yaml.safe_dump({"data": section, "dev_set": dev}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, str(DEV_STAGE), "--model", str(tiny_nemo), "--prepared", "prepared",
                             "--params", "params.yaml", "--out", "dev"],
                            cwd=workspace, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dev_set name 'clips' is already a set" in errors[0], result.stderr
    assert not (workspace / "dev").exists()
