"""Where MLflow runs go (env override, repo root, DVC experiment copies) and what a run holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nemo_ptq import tracking
from nemo_ptq.errors import ConfigError


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (root / "src/deep").mkdir(parents=True)
    return root


def test_env_uri_wins(repo):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tracking.tracking_uri(repo, env) == "http://127.0.0.1:5000"
    assert tracking.artifact_location(repo, env) is None


def test_default_store_is_at_the_repo_root(repo):
    assert tracking.tracking_uri(repo / "src/deep", {}) == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert tracking.artifact_location(repo / "src", {}) == (repo.resolve() / "mlartifacts").as_uri()


def test_dvc_experiment_copy_resolves_to_the_main_repo(repo):
    # `dvc exp run --queue` runs stages in <repo>/.dvc/tmp/exps/<tmp>/, a copy with its own .dvc/.
    copy = repo / ".dvc/tmp/exps/tmpab12cd"
    (copy / ".dvc").mkdir(parents=True)
    (copy / "stages").mkdir()
    assert tracking.repo_root(copy / "stages", {}) == repo.resolve()
    # DVC also passes the main root as DVC_ROOT; it takes precedence over cwd.
    assert tracking.repo_root(copy, {"DVC_ROOT": str(repo)}) == repo.resolve()


def test_no_repository_is_a_typed_error(tmp_path):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        tracking.repo_root(tmp_path, {})


def test_switch_and_failure_only_warn(capsys, monkeypatch):
    assert tracking.enabled({}) and not tracking.enabled({"NEMO_PTQ_MLFLOW": "off"})

    def broken(**_):
        raise OSError("disk full")

    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "on")
    tracking.log_safely(broken)
    assert "warning: MLflow logging skipped (OSError: disk full)" in capsys.readouterr().err
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    tracking.log_safely(broken)
    assert capsys.readouterr().err == ""


def test_flatten_and_fingerprint(tmp_path):
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"})
    assert flat == {"a.b": 1, "d": "x"} and tracking.numeric({**flat, "e": True, "f": None}) == {"a.b": 1.0}
    (tmp_path / "art").mkdir()
    (tmp_path / "art/w.bin").write_bytes(b"1")
    first = tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])
    assert first == tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])
    assert first != tracking.fingerprint({"engine": "x86"}, [tmp_path / "art"])
    (tmp_path / "art/w.bin").write_bytes(b"2")
    assert first != tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])


def test_run_from_an_experiment_copy_lands_in_the_main_store(repo, monkeypatch, tmp_path):
    copy = repo / ".dvc/tmp/exps/tmpqueued"
    (copy / ".dvc").mkdir(parents=True)
    metrics = {"variant": "onednn", "wer": 0.1, "sets": {"clips": {"kind": "real", "wer": 0.2}},
               "layers": [{"name": "c", "precision": "int8"}], "model": {"trained": True}}
    (copy / "m.json").write_text(json.dumps(metrics))
    (copy / "tr").mkdir()
    (copy / "tr/clips.jsonl").write_text("{}\n")
    monkeypatch.chdir(copy)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "NEMO_PTQ_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "bandy-scup")
    run_id = tracking.log_evaluation(
        variant="onednn", params={"backend": "eager", "options": {"engine": "onednn", "calibration": {"seed": 0}}},
        metrics=metrics, inputs=[copy / "m.json"], metrics_file=copy / "m.json", transcripts_dir=copy / "tr",
    )
    assert not (copy / "mlflow.db").exists() and (repo / "mlflow.db").is_file()
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert run.data.params == {"backend": "eager", "options.engine": "onednn", "options.calibration.seed": "0"}
    assert run.data.metrics == {"wer": 0.1, "sets.clips.wer": 0.2}
    assert run.data.tags["dvc.exp_name"] == "bandy-scup" and run.data.tags["set_kinds"] == "clips=real"
    assert run.info.artifact_uri.startswith((repo.resolve() / "mlartifacts").as_uri())
    assert (repo / "mlartifacts").is_dir()
    with sqlite3.connect(repo / "mlflow.db") as db:
        assert db.execute("select name from experiments where name = 'nemo-ptq'").fetchone()
