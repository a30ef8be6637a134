"""Runs logged to `mlflow server` on PostgreSQL (the multi-machine setup), and its faults: two
processes logging at once, a server that is down, one that dies mid-run, a run whose process died.

Needs Debian's postgresql (tests/servers.py); about 40 s."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from servers import free_port, mlflow_server, postgres

pytestmark = pytest.mark.slow

# Another process logging as an evaluate stage does (the same `log` as below).
LOGGER = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tracking_server import log
log(Path(sys.argv[3]), sys.argv[1], float(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with postgres() as database, mlflow_server(database.url, tmp_path_factory.mktemp("artifacts")) as running:
        yield running


@pytest.fixture()
def stage_dir(tmp_path, monkeypatch, request) -> Path:
    """A repository (for the local fallback store) holding what an evaluate stage logs."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "transcripts").mkdir()
    (tmp_path / "transcripts" / "set.jsonl").write_text('{"id": "u1", "hypothesis": "a"}\n')
    system = {"cpu": "Test CPU", "hardware": "Test CPU [x]", "isa_profile": "vnni", "isa": ["avx2", "avx512_vnni"],
              "threads": 2}
    (tmp_path / "metrics.json").write_text(json.dumps({"sets": {"s": {"kind": "real"}}, "system": system}))
    monkeypatch.chdir(tmp_path)
    for name in ("NEMO_PTQ_MLFLOW", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEMO_PTQ_MLFLOW_EXPERIMENT", request.node.name[:60])
    return tmp_path


def log(folder: Path, variant: str = "ort_int8", wer: float = 0.2):
    from nemo_ptq import tracking

    metrics = json.loads((folder / "metrics.json").read_text()) | {"variant": variant, "wer": wer}
    tracking.log_safely(tracking.log_evaluation, variant=variant, params={"backend": "ort", "options": {"v": variant}},
                        metrics=metrics, inputs=[folder / "metrics.json"], metrics_file=folder / "metrics.json",
                        transcripts_dir=folder / "transcripts")


def runs(uri: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time"])


def test_two_processes_logging_at_once_keep_their_own_runs(server, stage_dir):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    loggers = [subprocess.Popen([sys.executable, "-c", LOGGER, variant, str(wer), str(stage_dir)], env=env,
                                stderr=subprocess.PIPE, text=True)
               for variant, wer in (("first", 0.25), ("second", 0.5))]
    errors = [process.communicate(timeout=120)[1] for process in loggers]
    assert [process.returncode for process in loggers] == [0, 0] and "warning" not in "".join(errors), errors
    found = runs(server.uri, os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    by_variant = {run.data.tags["variant"]: run for run in found}
    assert sorted(by_variant) == ["first", "second"] and len(found) == 2
    assert by_variant["first"].data.metrics["wer"] == 0.25 and by_variant["second"].data.metrics["wer"] == 0.5
    assert by_variant["second"].data.params["options.v"] == "second"
    assert {run.info.status for run in found} == {"FINISHED"}
    first = by_variant["first"]
    assert first.data.tags["hardware"] == "Test CPU [x]" and first.data.tags["threads"] == "2"
    assert first.data.tags["isa_flags"] == "avx2,avx512_vnni" and first.data.tags["host"] == socket.gethostname()
    import mlflow

    artifacts = mlflow.MlflowClient(server.uri).list_artifacts(first.info.run_id, "transcripts")
    assert [a.path for a in artifacts] == ["transcripts/set.jsonl"]  # served by the server, not a local path


def test_a_server_that_is_down_sends_the_run_to_the_local_store(stage_dir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    log(stage_dir)
    lines = capsys.readouterr().err.strip().splitlines()
    local = f"sqlite:///{stage_dir.resolve() / 'mlflow.db'}"
    assert len(lines) == 1 and lines[0].startswith(f"warning: MLflow run logged to the local store {local} instead")
    assert "does not answer" in lines[0]
    [run] = runs(local, os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    assert run.info.status == "FINISHED" and run.data.metrics["wer"] == 0.2


def test_a_server_dying_mid_run_leaves_no_running_run_once_the_stage_reruns(server, stage_dir, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    upload = mlflow.MlflowClient.log_artifacts

    def server_dies_then_upload(self, *args, **kwargs):
        server.stop()
        return upload(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts", server_dies_then_upload)
    log(stage_dir)
    assert "logged to the local store" in capsys.readouterr().err
    [local_run] = runs(f"sqlite:///{stage_dir.resolve() / 'mlflow.db'}", os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    assert local_run.info.status == "FINISHED"  # not lost

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts", upload)
    server.start()
    [orphan] = runs(server.uri, os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    assert orphan.info.status == "RUNNING"  # the server never heard the end; this process is still alive
    log(stage_dir)  # the stage reruns: same config and inputs, so the same fingerprint
    assert capsys.readouterr().err == ""
    orphan_now, rerun = runs(server.uri, os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    assert (orphan_now.info.status, rerun.info.status) == ("KILLED", "FINISHED")
    assert orphan_now.data.tags["abandoned"] == "superseded by a rerun"


def test_a_run_whose_process_died_is_marked_killed(server, stage_dir, monkeypatch):
    import mlflow

    from nemo_ptq import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = mlflow.MlflowClient(server.uri)
    experiment = client.create_experiment(os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])
    dead = client.create_run(experiment, tags={"host": socket.gethostname(), "pid": gone.stdout.strip()})
    elsewhere = client.create_run(experiment, tags={"host": "another-machine", "pid": gone.stdout.strip()})
    tracking.log_safely(tracking.log_summary, files=[], variants=["v"])
    status = {run.info.run_id: run.info.status for run in runs(server.uri, os.environ["NEMO_PTQ_MLFLOW_EXPERIMENT"])}
    assert status[dead.info.run_id] == "KILLED"
    assert status[elsewhere.info.run_id] == "RUNNING"  # another host's process cannot be checked from here
    assert sorted(status.values()) == ["FINISHED", "KILLED", "RUNNING"]
