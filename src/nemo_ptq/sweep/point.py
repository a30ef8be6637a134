"""One sweep point on a worker: a fresh clone of the baseline, `dvc exp run`, `dvc exp push`.

The clone pulls the baseline's outputs from the DVC remote first, so only the stages the point's
settings change rerun. Its folder is removed afterwards. A point holds a lock on its clone while it
runs (the kernel drops it when the process dies), so a clone left by a killed worker is removed by
the next point of any sweep that starts on that machine.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nemo_ptq.sweep.grid import Point

CLONE_PREFIX = "nemo-ptq-sweep-"
OUTPUT_TAIL = 3000  # characters of a failed command's output kept in the error


class PointFailed(RuntimeError):
    """A command of the point failed; the message ends with its output."""


@dataclass(frozen=True)
class Job:
    """What every point of a sweep shares."""

    git_url: str  # the Git remote the baseline is on and the experiments are pushed to
    baseline: str  # commit sha
    dvc_remote: str  # URL of the DVC remote every worker reaches
    targets: tuple[str, ...] = ()  # dvc.yaml stages to reproduce (default: all)
    env: dict[str, str] = field(default_factory=dict)  # e.g. MLFLOW_TRACKING_URI


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)  # this environment's dvc, on the driver and workers alike
    return str(beside) if beside.exists() else name


def _run(args: list[str], cwd: Path, env: dict[str, str], what: str, seconds: dict[str, float] | None = None) -> str:
    started = time.monotonic()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if seconds is not None:
        seconds[what.split(" (")[0]] = round(time.monotonic() - started, 1)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-OUTPUT_TAIL:]
        raise PointFailed(f"{what} failed (exit {result.returncode}): {' '.join(args[:4])} ...\n{output}")
    return result.stdout


LOCK_FILE = ".nemo-ptq-sweep.lock"


def _lock(clone: Path) -> int | None:
    """A non-blocking exclusive lock on the clone's lock file: its descriptor, or None if held."""
    try:
        descriptor = os.open(clone / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_clones(root: Path) -> list[Path]:
    """Remove the clones no running point holds (their process died), here on this machine."""
    removed = []
    for clone in root.glob(f"{CLONE_PREFIX}*"):
        descriptor = _lock(clone)
        if descriptor is not None:
            shutil.rmtree(clone, ignore_errors=True)
            os.close(descriptor)
            removed.append(clone)
    return removed


def run_point(job: Job, point: Point, root: Path | None = None) -> dict:
    """Run one point to a pushed experiment; returns where and how long it ran."""
    root = Path(root or tempfile.gettempdir())
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix=f"{CLONE_PREFIX}{point.name}-", dir=root))
    held = _lock(workspace)  # before looking for stale clones, so that this one is not one
    remove_stale_clones(root)
    clone = workspace / "repo"
    env = {**os.environ, **job.env, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    dvc = tool("dvc")
    seconds: dict[str, float] = {}  # per step, returned so the driver can say where the time went
    try:
        _run(["git", "clone", "--quiet", "--no-checkout", job.git_url, str(clone)], root, env, "git clone", seconds)
        _run(["git", "checkout", "--quiet", job.baseline], clone, env, "git checkout")
        for key, value in (("user.name", "nemo-ptq sweep"), ("user.email", "nemo-ptq-sweep@localhost")):
            if subprocess.run(["git", "config", key], cwd=clone, capture_output=True).returncode != 0:
                _run(["git", "config", key, value], clone, env, "git config")  # dvc exp run commits
        _run([dvc, "remote", "add", "--local", "--default", "--force", "sweep", job.dvc_remote], clone, env,
             "dvc remote add")
        pull_targets = [*job.targets, "--with-deps"] if job.targets else []
        _run([dvc, "pull", "--quiet", "--allow-missing", *pull_targets], clone, env, "dvc pull", seconds)
        settings = [arg for setting in point.settings for arg in ("-S", setting)]
        _run([dvc, "exp", "run", "--name", point.name, *settings, *job.targets], clone, env,
             f"dvc exp run ({point.label()})", seconds)
        _run([dvc, "exp", "push", "origin", point.name], clone, env, "dvc exp push", seconds)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        if held is not None:
            os.close(held)
    return {"name": point.name, "settings": list(point.settings), "host": socket.gethostname(),
            "seconds": round(time.monotonic() - started, 1), "steps": seconds}
