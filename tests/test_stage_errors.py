"""Bad input to a stage: one `error:` line on stderr, exit status 1, no output left behind."""

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


@pytest.mark.parametrize("source, message", [
    ("file:absent.nemo", "not found"),
    ("file:corrupt.nemo", "not a valid .nemo archive"),
    ("zip:model", "unknown model source 'zip:model'"),
])
def test_fetch_pretrained_bad_sources(tmp_path, source, message):
    (tmp_path / "corrupt.nemo").write_bytes(b"garbage" * 50)
    params = write_params(tmp_path, model={"source": source})
    out = tmp_path / "model"
    result = run_stage("fetch_pretrained.py", "--params", params, "--out", out, cwd=tmp_path)
    assert_clean_failure(result, message, out)


def test_fetch_pretrained_unknown_param_key(tmp_path):
    params = write_params(tmp_path, model={"source": "embedded", "revision": 2})
    out = tmp_path / "model"
    result = run_stage("fetch_pretrained.py", "--params", params, "--out", out, cwd=tmp_path)
    assert_clean_failure(result, "model: unknown key(s) revision; valid keys: source", out)


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
