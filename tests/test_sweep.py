"""Sweeps: the grid, the driver's checks, and a 4-point sweep on a loopback Ray cluster of two worker
nodes logging to `mlflow server` on PostgreSQL, through a worker killed mid-point and a driver killed
mid-sweep, then resumed.

The sweep runs a small DVC project whose evaluate stage sleeps, then logs through the product's
tracking code (the real pipeline's stages take minutes per point; benchmarks/sweep.py runs those)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nemo_ptq.errors import ConfigError
from nemo_ptq.sweep import grid
from nemo_ptq.sweep.driver import RAY_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_grid_is_the_cartesian_product_with_stable_names():
    points = grid.expand(["a.n=1,2", "b=x,y,z"], baseline="abc")
    assert [p.settings for p in points] == [
        ("a.n=1", "b=x"), ("a.n=1", "b=y"), ("a.n=1", "b=z"), ("a.n=2", "b=x"), ("a.n=2", "b=y"), ("a.n=2", "b=z")]
    assert len({p.name for p in points}) == 6 and all(p.name.startswith("sweep-") for p in points)
    again = grid.expand(["b=z,y,x", "a.n=2,1"], baseline="abc")  # order of options and values: same names
    assert {p.name for p in again} == {p.name for p in points}
    assert {p.name for p in grid.expand(["a.n=1,2", "b=x,y,z"], baseline="def")}.isdisjoint(p.name for p in points)


@pytest.mark.parametrize("options, message", [
    ([], "at least one -S"),
    (["a.n"], "expected path.to.param=value"),
    (["a.n=1,,2"], "empty value"),
    (["a.n=1,1"], "listed twice"),
    (["a=1", "a=2"], "swept twice: a"),
    (["../x=1"], "expected path.to.param=value"),
])
def test_bad_grids_are_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        grid.expand(options, baseline="abc")


# --- the loopback cluster ---------------------------------------------------------------------------

PARAMS = "prep:\n  size: 3\nvariants:\n  v:\n    backend: ort\n    n: 0\n"
DVC_YAML = """\
stages:
  prep:
    cmd: python prep.py
    deps: [prep.py]
    params: [prep]
    outs: [prep.txt]
  evaluate:
    cmd: python evaluate.py
    deps: [prep.txt, evaluate.py]
    params: [variants.v]
    outs: [transcripts]
    metrics:
      - metrics.json:
          cache: false
"""
PREP = "import yaml; open('prep.txt', 'w').write('x' * yaml.safe_load(open('params.yaml'))['prep']['size'])\n"
EVALUATE = """\
import json, os, time
from pathlib import Path
import yaml
from nemo_ptq import tracking
from nemo_ptq.evaluation.sysinfo import system_info

entry = yaml.safe_load(open("params.yaml"))["variants"]["v"]
markers = Path(os.environ["SWEEP_TEST_MARKERS"])
(markers / f"{entry['n']}-{os.getpid()}").touch()  # the test kills a worker once one appears
time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP_S", "4")))
Path("transcripts").mkdir(exist_ok=True)
Path("transcripts/set.jsonl").write_text(json.dumps({"n": entry["n"]}) + "\\n")
metrics = {"variant": "v", "wer": entry["n"] / 10, "sets": {}, "system": system_info(1)}
Path("metrics.json").write_text(json.dumps(metrics))
tracking.log_safely(tracking.log_evaluation, variant="v", params=entry, metrics=metrics,
                    inputs=[Path("prep.txt")], metrics_file=Path("metrics.json"), transcripts_dir=Path("transcripts"))
"""


def sh(cwd: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "NEMO_PTQ_", "RAY_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PYTHONPATH=str(ROOT / "src"), **extra)
    return env


def make_project(tmp_path: Path, env: dict) -> tuple[Path, Path]:
    """A committed, reproduced DVC project pushed to a bare Git remote and a folder DVC remote."""
    project, bare = tmp_path / "project", tmp_path / "remote.git"
    project.mkdir()
    for name, text in (("params.yaml", PARAMS), ("dvc.yaml", DVC_YAML), ("prep.py", PREP), ("evaluate.py", EVALUATE),
                       (".gitignore", "/mlflow.db\n/mlartifacts/\n")):
        (project / name).write_text(text)
    sh(project, "git", "init", "-q", "-b", "main", env=env)
    sh(project, "dvc", "init", "-q", env=env)
    sh(project, "dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"), env=env)
    sh(tmp_path, "git", "init", "-q", "--bare", str(bare), env=env)
    sh(project, "git", "remote", "add", "origin", str(bare), env=env)
    sh(project, "dvc", "repro", "-q", env=env)
    sh(project, "git", "add", "-A", env=env)
    sh(project, "git", "commit", "-qm", "baseline", env=env)
    return project, bare


def ray_cluster(env: dict) -> str:
    """A head with no CPUs of its own and two worker nodes of one CPU each, on 127.0.0.1."""
    from servers import free_port

    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    sh(Path.cwd(), ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "0",
       "--include-dashboard", "false", "--disable-usage-stats", env=env)
    for _ in range(2):
        sh(Path.cwd(), ray, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
           "--num-cpus", "1", env=env)
    return f"127.0.0.1:{port}"


def ray_worker_of(pid: int) -> int | None:
    """The Ray worker process (`ray::run_point`) that the stage process `pid` runs under."""
    while pid > 1:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the parent
        except (OSError, ValueError):
            return None
    return None


def wait_for(condition, timeout_s: float, what: str, driver: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if driver.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {driver.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_sweep_survives_a_killed_worker_and_a_killed_driver(tmp_path):
    from servers import mlflow_server, postgres

    markers = tmp_path / "markers"
    markers.mkdir()
    # Its own Ray token: not whatever an earlier Ray left in ~/.ray/auth_token.
    env = clean_env(SWEEP_TEST_MARKERS=str(markers), NEMO_PTQ_MLFLOW_EXPERIMENT="sweep-test",
                    RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    project, bare = make_project(tmp_path, env)
    for baseline_marker in markers.iterdir():
        baseline_marker.unlink()
    with postgres() as database, mlflow_server(database.url, tmp_path / "artifacts") as server:
        env["MLFLOW_TRACKING_URI"] = server.uri
        address = ray_cluster({**env, **RAY_ENV})
        try:
            sweep = [sys.executable, "-m", "nemo_ptq.sweep", "-S", "variants.v.n=1,2,3,4", "--address", address]
            unpushed = sh(project, *sweep, env=env, check=False)
            assert unpushed.returncode == 1 and "is not on Git remote 'origin'" in unpushed.stderr
            assert unpushed.stderr.count("\n") == 1  # one line, and nothing ran
            sh(project, "git", "push", "-q", "origin", "main", env=env)

            driver = subprocess.Popen(sweep, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
            first = wait_for(lambda: sorted(markers.iterdir()), 240, "a point's evaluate stage", driver)[0]
            worker = ray_worker_of(int(first.name.split("-")[1]))
            assert worker is not None
            os.kill(worker, signal.SIGKILL)  # mid-point: Ray retries it
            pushed = lambda: sh(bare, "git", "for-each-ref", "refs/exps", env=env).stdout.splitlines()  # noqa: E731
            wait_for(lambda: len(pushed()) >= 2, 300, "two pushed experiments", driver)
            os.killpg(driver.pid, signal.SIGKILL)  # mid-sweep: the driver and whatever it started
            driver.wait(timeout=60)
            done_before_resume = len(pushed())
            assert done_before_resume < 4

            resumed = sh(project, *sweep, env=env)
            assert f"{done_before_resume} already on origin, {4 - done_before_resume} to run" in resumed.stdout
            assert "all points are experiments now" in resumed.stdout
            again = sh(project, *sweep, env=env)
            assert "4 already on origin, 0 to run" in again.stdout
        finally:
            sh(Path.cwd(), str(Path(sys.executable).with_name("ray")), "stop", "--force", env=env, check=False)

        names = set(sh(project, "dvc", "exp", "list", "--name-only", env=env).stdout.split())
        assert len(names) == 4 and all(name.startswith("sweep-") for name in names)
        shown = json.loads(sh(project, "dvc", "exp", "show", "--json", env=env).stdout)
        experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
        values = sorted(exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["variants"]["v"]["n"]
                        for exp in experiments)
        assert values == [1, 2, 3, 4]
        import mlflow

        client = mlflow.MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
        assert not [run for run in runs if run.info.status == "RUNNING"]
        finished = [run for run in runs if run.info.status == "FINISHED"]
        assert {run.data.tags.get("dvc.exp_name") for run in finished} == names
        assert sorted({run.data.params["n"] for run in finished}) == ["1", "2", "3", "4"]
    assert len(list(markers.iterdir())) >= 5  # the killed worker's point ran again
    import tempfile

    from nemo_ptq.sweep.point import CLONE_PREFIX

    # Clones of killed attempts are removed when their point is retried on this machine.
    assert not [p for name in names for p in Path(tempfile.gettempdir()).glob(f"{CLONE_PREFIX}{name}-*")]
