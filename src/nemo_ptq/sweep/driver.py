"""The sweep driver: checks that workers can reach what they need, then runs the missing points on Ray.

Before any point runs:
- the baseline commit must be on the Git remote, and tracked files must be committed (workers see
  only commits);
- a default DVC remote must be set; the baseline's outputs are pushed to it (`dvc push`);
- MLflow must be reachable by every worker: a tracking server (MLFLOW_TRACKING_URI) on a cluster,
  the repository's own store when Ray runs on this machine only.

Points whose experiment is already on the Git remote are skipped, so rerunning the command resumes
a sweep. A worker that dies mid-point is retried by Ray (`retries`); a point that still fails is
reported with its error, and the command exits non-zero: no point is silently lost. Finished points
are pulled back (`dvc exp pull`), so `dvc exp show` lists them here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nemo_ptq import tracking
from nemo_ptq.errors import ConfigError
from nemo_ptq.sweep.grid import Point, expand
from nemo_ptq.sweep.point import Job, run_point, tool

# For every Ray process here, and on `ray start` on every machine (README):
# - kill a dead worker's whole process group, so that a point's dvc and stage processes die with it
#   instead of running on (and pushing) beside the retry;
# - run workers at normal priority: Ray's default niceness 15 let any other load on the machine
#   starve a point's dvc commands 20-fold (measured: dvc --version 5.3 s instead of 0.26 s).
RAY_ENV = {"RAY_process_group_cleanup_enabled": "1", "RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class SweepOptions:
    settings: Sequence[str]  # -S options: path=v1,v2,...
    git_remote: str = "origin"
    address: str | None = None  # a Ray cluster; None: a Ray instance on this machine only
    workers: int = 2  # points at once when Ray runs here
    cpus_per_point: float = 1.0  # Ray CPUs each point holds
    retries: int = 2  # reruns of a point whose worker died
    targets: Sequence[str] = ()
    name: str = "sweep"


@dataclass
class SweepResult:
    points: list[Point]
    skipped: list[str] = field(default_factory=list)  # already on the remote
    done: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def _dvc(repo: Path, *args: str) -> str:
    result = subprocess.run([tool("dvc"), *args], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if result.returncode != 0:
        raise ConfigError(f"dvc {' '.join(args)} failed in {repo}: {(result.stdout + result.stderr).strip()[-1500:]}")
    return result.stdout


def baseline_commit(repo: Path, git_remote: str) -> tuple[str, str]:
    """(HEAD's sha, the remote's URL), or a ConfigError saying what to commit or push."""
    dirty = [line for line in _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines() if line]
    if dirty:
        raise ConfigError(f"uncommitted changes ({', '.join(line[3:] for line in dirty[:5])}): workers run commits "
                          "only; commit or stash them first")
    sha = _git(repo, "rev-parse", "HEAD")
    url = _git(repo, "remote", "get-url", git_remote)
    _git(repo, "fetch", "--quiet", git_remote)
    on_remote = _git(repo, "branch", "--remotes", "--contains", sha, "--format=%(refname)")
    if not any(ref.startswith(f"refs/remotes/{git_remote}/") for ref in on_remote.splitlines()):
        raise ConfigError(f"commit {sha[:12]} is not on Git remote {git_remote!r}, so workers cannot clone it: "
                          f"git push {git_remote} HEAD")
    return sha, url


def dvc_remote_url(repo: Path) -> str:
    name = _dvc(repo, "remote", "default").strip()
    if not name:
        raise ConfigError("no default DVC remote: workers fetch the baseline's outputs and push their results "
                          "there. Add one that every machine reaches: dvc remote add -d shared <url>")
    url = _dvc(repo, "config", f"remote.{name}.url").strip()
    if "://" not in url and not Path(url).is_absolute():  # DVC resolves these against .dvc/
        url = str((repo / ".dvc" / url).resolve())
    return url


def tracking_env(repo: Path, on_cluster: bool) -> dict[str, str]:
    """Where the workers' evaluate runs go; checked (and the experiment created) before any point runs."""
    if not tracking.enabled():
        return {tracking.SWITCH_ENV: "off"}
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and on_cluster:
        raise ConfigError("a sweep on a Ray cluster needs MLFLOW_TRACKING_URI: a tracking server every machine "
                          f"reaches (see README, 'Sweeps'), or {tracking.SWITCH_ENV}=off")
    if uri and on_cluster and not uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI={uri} is not a server the other machines can reach: use "
                          "`mlflow server` (README, 'Sweeps')")
    try:
        tracking.experiment_id()  # the experiment, with its artifact folder, before workers log to it
    except tracking.TrackingUnavailable as err:
        raise ConfigError(f"{err}: start it, or unset MLFLOW_TRACKING_URI to use the local store") from None
    # Required: a worker's local fallback store would be its temporary clone, lost with it; a point
    # whose run cannot be logged fails and is reported instead.
    env = {"MLFLOW_TRACKING_URI": uri or tracking.tracking_uri(repo), tracking.SWITCH_ENV: tracking.REQUIRED}
    if os.environ.get(tracking.EXPERIMENT_ENV):
        env[tracking.EXPERIMENT_ENV] = os.environ[tracking.EXPERIMENT_ENV]
    return env


def existing_experiments(repo: Path, git_remote: str) -> set[str]:
    return set(_dvc(repo, "exp", "list", git_remote, "--name-only").split())


def run_sweep(repo: Path, options: SweepOptions, report: Callable[[str], None] = print) -> SweepResult:
    repo = Path(repo).resolve()
    sha, git_url = baseline_commit(repo, options.git_remote)
    points = expand(options.settings, sha, options.name)
    result = SweepResult(points)
    job = Job(git_url, sha, dvc_remote_url(repo), tuple(options.targets),
              tracking_env(repo, on_cluster=options.address is not None))
    done_before = existing_experiments(repo, options.git_remote)
    todo = [point for point in points if point.name not in done_before]
    result.skipped = [point.name for point in points if point.name in done_before]
    report(f"sweep: {len(points)} points on baseline {sha[:12]}; {len(result.skipped)} already on "
           f"{options.git_remote}, {len(todo)} to run")
    if todo:
        report("sweep: dvc push (the baseline's outputs, for the workers)")
        _dvc(repo, "push", "--quiet", *options.targets, *(["--with-deps"] if options.targets else []))
        _run_on_ray(job, todo, options, result, report)
    finished = [point.name for point in points if point.name in result.skipped
                or point.name in {d["name"] for d in result.done}]
    if finished:
        _dvc(repo, "exp", "pull", options.git_remote, *finished)
    return result


def _run_on_ray(job: Job, todo: list[Point], options: SweepOptions, result: SweepResult,
                report: Callable[[str], None]) -> None:
    os.environ.update(RAY_ENV)  # read by a Ray instance started here
    import ray
    from tqdm import tqdm

    runtime_env = {"env_vars": {**job.env, **RAY_ENV}}
    if options.address is None:
        ray.init(num_cpus=options.workers, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(address=options.address, runtime_env=runtime_env, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=options.cpus_per_point, max_retries=options.retries)(run_point)
        pending = {task.remote(job, point): point for point in todo}
        started = time.monotonic()
        with tqdm(total=len(todo), desc="sweep", unit="point", file=sys.stderr) as bar:
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                point = pending.pop(ready)
                try:
                    outcome = ray.get(ready)
                except Exception as err:  # RayTaskError wraps the point's error; a worker lost too often
                    cause = getattr(err, "cause", None) or err
                    result.failed[point.name] = f"{type(cause).__name__}: {cause}"
                    bar.write(f"sweep: {point.name} ({point.label()}) FAILED: {str(cause).splitlines()[0]}")
                else:
                    result.done.append(outcome)
                    steps = ", ".join(f"{step} {seconds} s" for step, seconds in outcome["steps"].items())
                    bar.write(f"sweep: {point.name} ({point.label()}) done on {outcome['host']} "
                              f"in {outcome['seconds']} s ({steps})")
                bar.update()
        report(f"sweep: {len(result.done)} of {len(todo)} points done in {time.monotonic() - started:.0f} s")
    finally:
        ray.shutdown()
