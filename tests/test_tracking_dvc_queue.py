"""A real `dvc exp run --queue` experiment logs to the main repository's MLflow store (slow: ~40 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def sh(cwd: Path, env: dict, *args: str) -> str:
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_queued_experiment_logs_to_the_main_store(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "NEMO_PTQ_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    log = "from nemo_ptq import tracking; tracking.log_summary(files=[], variants=['queued'])"
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  log:\n"
        f"    cmd: {sys.executable} -c \"{log}\" && echo done > out.txt\n"
        "    params: [x]\n    outs: [out.txt]\n"
    )
    (repo / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    sh(repo, env, "git", "init", "-q")
    sh(repo, env, "dvc", "init", "-q")
    sh(repo, env, "git", "add", "-A")
    sh(repo, env, "git", "commit", "-qm", "init")
    sh(repo, env, "dvc", "exp", "run", "--queue", "-S", "x=2")
    sh(repo, env, "dvc", "queue", "start", "-j", "1")
    deadline = time.time() + 180
    while "Success" not in (status := sh(repo, env, "dvc", "queue", "status")):
        assert "Failed" not in status and time.time() < deadline, status
        time.sleep(2)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nemo-ptq").experiment_id])
    assert [run.data.tags["variants"] for run in runs] == ["queued"]
    assert runs[0].data.tags["dvc.exp_name"]  # it ran as a queued experiment, in a temporary copy
    assert not list((repo / ".dvc/tmp").rglob("mlflow.db"))
