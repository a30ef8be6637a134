"""Bad input to a stage: one `error:` line on stderr, exit status 1, no output left behind."""

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, stage_env


def run_stage(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / script), *map(str, args)],
        cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=300,
    )


def assert_clean_failure(result, message, out):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert not out.exists()


def write_params(tmp_path, **sections):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(sections))
    return params


@pytest.mark.parametrize("model, message", [
    ({"source": "file:absent.nemo", "checkpoint": "absent.nemo"}, "not found"),
    ({"source": "file:corrupt.nemo", "checkpoint": "corrupt.nemo"}, "not a valid .nemo archive"),
    ({"source": "file:corrupt.nemo"}, "name different files: set checkpoint to the same path"),
    ({"source": "zip:model"}, "unknown model source 'zip:model'"),
    ({"source": "arch:quartznet_tiny", "sha256": "0" * 64}, "no checkpoint file to pin: remove model.sha256"),
])
def test_fetch_pretrained_bad_sources(tmp_path, model, message):
    (tmp_path / "corrupt.nemo").write_bytes(b"garbage" * 50)
    params = write_params(tmp_path, model=model)
    out = tmp_path / "model"
    result = run_stage("fetch_pretrained.py", "--params", params, "--out", out, cwd=tmp_path)
    assert_clean_failure(result, message, out)


def test_fetch_pretrained_unknown_param_key(tmp_path):
    params = write_params(tmp_path, model={"source": "embedded", "revision": 2})
    out = tmp_path / "model"
    result = run_stage("fetch_pretrained.py", "--params", params, "--out", out, cwd=tmp_path)
    assert_clean_failure(result, "model: unknown key(s) revision; valid keys: source, checkpoint, sha256", out)


def test_fetch_pretrained_records_the_sha256_and_rejects_a_replaced_checkpoint(tmp_path, tiny_nemo):
    checkpoint = tmp_path / "model.nemo"
    shutil.copy(tiny_nemo, checkpoint)
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model = {"source": f"file:{checkpoint}", "checkpoint": str(checkpoint), "sha256": sha256}
    out = tmp_path / "model"
    result = run_stage("fetch_pretrained.py", "--params", write_params(tmp_path, model=model), "--out", out,
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"sha256 {sha256} (pinned)" in result.stdout
    assert json.loads((out / "card.json").read_text())["sha256"] == sha256

    with checkpoint.open("ab") as f:  # replaced by other bytes: the pin stops it, and out/ is gone
        f.write(b"\0" * 1024)
    result = run_stage("fetch_pretrained.py", "--params", tmp_path / "params.yaml", "--out", out, cwd=tmp_path)
    assert_clean_failure(result, f"but model.sha256 pins {sha256}: restore the pinned file", out)


@pytest.mark.parametrize("variant, message", [
    ({"backend": "tflite"}, "unknown backend 'tflite'"),
    ({"backend": "eager", "engine": "onednn", "calibration": {"observer": "percentile"}}, "unknown observer"),
])
def test_calibrate_bad_variant(tmp_path, variant, message):
    params = write_params(tmp_path, variants={"v": variant})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "card.json").write_text("{}")
    out = tmp_path / "calibration"
    result = run_stage("calibrate.py", "--variant", "v", "--model", tmp_path / "model", "--fused", tmp_path,
                       "--prepared", tmp_path, "--params", params, "--out", out, cwd=tmp_path)
    assert_clean_failure(result, message, out)
