"""MLflow mirrors what the stages wrote; nothing in the pipeline reads it back.

The metrics files under metrics/ are the source of truth, so a failure to log to MLflow prints a
warning and the stage still succeeds (`log_safely`). `NEMO_PTQ_MLFLOW=off` skips MLflow entirely;
`NEMO_PTQ_MLFLOW=required` makes a failure fail the stage in one line instead, with no local
fallback (sweep workers run so: their local store is a temporary clone).

Where runs go: `MLFLOW_TRACKING_URI` if set; otherwise `sqlite:///<repo>/mlflow.db` with artifacts
in `<repo>/mlartifacts/`, where <repo> is the main repository. Queued experiments
(`dvc exp run --queue`, also `--temp`) run in a copy under `<repo>/.dvc/tmp/exps/<tmpdir>/` that
has its own `.dvc/` folder; DVC passes the main root as `DVC_ROOT`, and the path itself says so
too, so their runs land in the same store as `dvc repro` runs.

A tracking server (`MLFLOW_TRACKING_URI=http://…`, e.g. `mlflow server` on PostgreSQL for runs from
several machines) is probed first (`/health`, a few seconds). If it does not answer, or fails while
a run is logged, the run goes to the default local store instead and one warning line says so:
no run is lost, and the stage still succeeds. A run left RUNNING by a process that died (a killed
sweep worker, a server that went away mid-run) is marked KILLED the next time a stage logs to that
store, if its process is gone from this host or a finished run of the same stage fingerprint
supersedes it; so the store holds no RUNNING runs that nothing is running.

What `mlflow ui` shows: each run is named after its variant, calibration and backend settings
(`run_name`), so a calibration sweep reads in the runs table as it is. The experiment is tagged
as a model-training experiment and holds a saved runs-table view (metric columns included) that
`runs_view_url` opens; `python -m nemo_ptq.tracking` prints that URL.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from nemo_ptq.errors import ConfigError, TrackingError

SWITCH_ENV = "NEMO_PTQ_MLFLOW"  # "off" disables MLflow, "required" fails the stage when logging fails
REQUIRED = "required"
EXPERIMENT_ENV = "NEMO_PTQ_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "nemo-ptq"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
EXPERIMENT_COPY = (".dvc", "tmp", "exps")  # where DVC runs queued/temp experiments
# MLflow 3 reads an experiment's type from this tag: "custom_model_development" is its
# "Machine learning" kind (runs, not GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SERVER_PROBE_TIMEOUT_S = 5.0
BATCH_PARAMS, BATCH_METRICS = 100, 1000  # the most MLflow's log_batch takes per request
# MLflow retries a failing server 7 times with growing waits (about 4 minutes); a stage that has
# finished its work should fall back to the local store quickly instead. Users can still override.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# MLflow 3.17's UI ignores that tag when it picks the landing page and opens GenAI traces unless the URL
# says workflowType=machine_learning; and its runs table starts without metric columns. A view stored
# the way the UI's own "share view" stores one (an experiment tag) fixes the columns; both go in the URL.
VIEW_KEY = "nemo-ptq"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# Columns in this order, calibration first: a sweep's settings next to its fidelity (wer_vs_fp32).
VIEW_COLUMNS = ("tags.calibration", "metrics.wer_vs_fp32", "metrics.wer", "metrics.latency_ms_median",
                "metrics.speedup_vs_fp32", "metrics.rtfx_best", "metrics.size_ratio_vs_fp32", "tags.backend_options")
VIEW_WIDTHS = {"attributes.Run Name": 150, "runDateAndNestInfo": 110, "tags.calibration": 420,
               "metrics.wer_vs_fp32": 100, "metrics.wer": 80}  # pixels: wer_vs_fp32 in a 1600-pixel window


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(SWITCH_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


def required(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(SWITCH_ENV, "on").strip().lower() == REQUIRED


def repo_root(cwd: Path | None = None, env: Mapping[str, str] = os.environ) -> Path:
    """The main repository root: DVC_ROOT if DVC set it, else the nearest folder above cwd with `.dvc/`;
    a DVC experiment copy (…/.dvc/tmp/exps/…) resolves to the repository it was copied from."""
    start = Path(env["DVC_ROOT"]) if env.get("DVC_ROOT") else Path(cwd or Path.cwd())
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return _outside_experiment_copy(folder)
    raise ConfigError(
        f"no DVC repository (a folder with .dvc/) at or above {start}: run from the repository or set "
        f"MLFLOW_TRACKING_URI (or {SWITCH_ENV}=off)"
    )


def _outside_experiment_copy(folder: Path) -> Path:
    parts = folder.parts
    for i in range(len(parts) - len(EXPERIMENT_COPY), 0, -1):
        if parts[i : i + len(EXPERIMENT_COPY)] == EXPERIMENT_COPY:
            return Path(*parts[:i])
    return folder


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer; the run can go to the local store instead."""


def tracking_uri(cwd: Path | None = None, env: Mapping[str, str] = os.environ, local: bool = False) -> str:
    if env.get("MLFLOW_TRACKING_URI") and not local:
        return env["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root(cwd, env) / STORE_FILE}"


def artifact_location(cwd: Path | None = None, env: Mapping[str, str] = os.environ, local: bool = False) -> str | None:
    """Artifacts next to the default store; a user-chosen tracking server keeps its own default."""
    if env.get("MLFLOW_TRACKING_URI") and not local:
        return None
    return (repo_root(cwd, env) / ARTIFACT_DIR).as_uri()


def check_server(uri: str, timeout_s: float = SERVER_PROBE_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless an http(s) tracking server answers its /health endpoint."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingUnavailable(f"tracking server {uri} does not answer ({reason})")


def fingerprint(config: Mapping[str, Any], inputs: Iterable[Path]) -> str:
    """sha256 over the stage's config and the md5 of every input file (folders are walked)."""
    digests = {str(path): _md5(path) for path in _files(inputs)}
    payload = json.dumps({"config": config, "inputs": digests}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _files(inputs: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, inputs):
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What MLflow accepts in a param name: alphanumerics, underscores, dashes, periods, spaces, slashes.
PARAM_NAME = re.compile(r"[\w\-. /]+")


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are left out (per-layer tables live in the artifacts). A
    mapping keyed by what MLflow cannot name a param (regexes: ort's `calibration.per_layer`) stays
    one value, as JSON."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not all(PARAM_NAME.fullmatch(str(k)) for k in value):
            flat[name] = json.dumps(value, sort_keys=True)
        elif isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(v) for key, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _mlflow(local: bool = False):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before the import: it phones home
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter in stage logs
    # Both before set_tracking_uri, which exports MLFLOW_TRACKING_URI and so would hide our default.
    uri, artifacts = tracking_uri(local=local), artifact_location(local=local)
    check_server(uri)
    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports the variable: put the user's back, so that a fallback to the
    # local store lasts one run and the next run tries the server again.
    if chosen is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = chosen
    name = experiment_name()
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # else a parallel queue worker created it
                raise
    experiment = mlflow.set_experiment(name)
    _tag_experiment(mlflow, experiment)
    return mlflow


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def reap_abandoned_runs(mlflow: Any, fingerprint_of_new_run: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs that nothing runs any more: those whose process (tags `host` and
    `pid`) is gone from this host, and those a run of the same stage fingerprint supersedes."""
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name())
    here = socket.gethostname()
    reaped = []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        dead = tags.get("host") == here and tags.get("pid", "").isdigit() and not _process_alive(int(tags["pid"]))
        superseded = fingerprint_of_new_run is not None and tags.get("stage_fingerprint") == fingerprint_of_new_run
        if dead or superseded:
            client.set_tag(run.info.run_id, "abandoned", "process gone" if dead else "superseded by a rerun")
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    return reaped


def _process_tags() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT


def experiment_id() -> str:
    """The id of this project's experiment in the store, created and tagged if no stage has logged yet."""
    mlflow = _mlflow()
    return mlflow.get_experiment_by_name(experiment_name()).experiment_id


def runs_view() -> dict[str, Any]:
    """The saved runs-table view, in the UI's own state keys and column ids ("metrics.`wer`")."""

    def column(name: str) -> str:
        kind, sep, key = name.partition(".")
        return f"{kind}.`{key}`" if sep else name  # runDateAndNestInfo etc. are the UI's own columns

    columns = [column(name) for name in VIEW_COLUMNS]
    return {"selectedColumns": columns,
            "columnOrder": [column("attributes.Run Name"), "runDateAndNestInfo", *columns, "duration"],
            "columnWidths": {column(name): width for name, width in VIEW_WIDTHS.items()}}


def _tag_experiment(mlflow: Any, experiment: Any) -> None:
    view = json.dumps(runs_view())
    wanted = {VIEW_TAG: view}
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind the user picked in the UI stays
        wanted[EXPERIMENT_KIND_TAG] = EXPERIMENT_KIND
    for key, value in wanted.items():
        if experiment.tags.get(key) == value:
            continue
        try:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        except mlflow.exceptions.MlflowException:
            # Another stage set it at the same moment (a database server reports the duplicate key).
            if key not in mlflow.get_experiment(experiment.experiment_id).tags:
                raise


def runs_view_url(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The `mlflow ui` address that opens the experiment's runs table with the saved view."""
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def _settings(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """{"a": {"b": True}, "c": 2} -> ["a.b=true", "c=2"], in params.yaml order and spelling."""
    items: list[str] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            items += _settings(value, f"{prefix}{key}.")
        else:
            text = json.dumps(value) if isinstance(value, (bool, list)) or value is None else str(value)
            items.append(f"{prefix}{key}={text}")
    return items


def run_labels(variant: str, backend: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The run name and the tags that say how a variant was calibrated and built. Calibration comes
    right after the variant: in a sweep it is the part that differs, and the name column is narrow."""
    calibration = " ".join(_settings(options.get("calibration") or {}))
    others = " ".join(_settings({k: v for k, v in options.items() if k != "calibration"}))
    name = " | ".join(part for part in (variant, calibration, f"{backend} {others}".strip()) if part)
    return {"name": name, "calibration": calibration or "none", "backend_options": others or "none"}


def _dvc_tags() -> dict[str, str]:
    names = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev", "DVC_STAGE": "dvc.stage"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def log_evaluation(*, variant: str, params: Mapping[str, Any], metrics: Mapping[str, Any], inputs: Iterable[Path],
                   metrics_file: Path, transcripts_dir: Path, local: bool = False) -> str:
    """One run per evaluate execution. `params` is everything that configured it (flattened here);
    the stage fingerprint hashes it together with the input files."""
    mlflow = _mlflow(local)
    stage_fingerprint = fingerprint(params, inputs)
    reap_abandoned_runs(mlflow, stage_fingerprint)
    system = metrics.get("system", {})
    set_kinds = {name: item["kind"] for name, item in metrics.get("sets", {}).items()}
    labels = run_labels(variant, str(params.get("backend", "")), params.get("options") or {})
    tags = {
        "stage": "evaluate",
        "variant": variant,
        "backend": str(params.get("backend", "")),
        "calibration": labels["calibration"],
        "backend_options": labels["backend_options"],
        "git_commit": git_commit(),
        "stage_fingerprint": stage_fingerprint,
        "set_kinds": ",".join(f"{name}={kind}" for name, kind in set_kinds.items()),
        "speech_kinds": ",".join(sorted(set(set_kinds.values()))),
        "model_trained": str(metrics.get("model", {}).get("trained")),
        "cpu": str(system.get("cpu")),
        "hardware": str(system.get("hardware")),
        "isa_profile": str(system.get("isa_profile")),
        "isa_flags": ",".join(system.get("isa") or []),
        "threads": str(system.get("threads")),
        **({"skipped": str(metrics["skipped"])} if metrics.get("skipped") else {}),
        **_dvc_tags(),
        **_process_tags(),
    }
    return _log_run(mlflow, name=labels["name"], tags=tags, params={k: str(v) for k, v in flatten(params).items()},
                    metrics=numeric(flatten(metrics)), files=[(metrics_file, "metrics")],
                    folders=[(transcripts_dir, "transcripts")])


def log_summary(*, files: Iterable[Path], variants: Iterable[str], local: bool = False) -> str:
    """One "summary" run per report execution, holding the Pareto plot, its points and the table."""
    mlflow = _mlflow(local)
    reap_abandoned_runs(mlflow)
    tags = {"stage": "report", "git_commit": git_commit(), "variants": ",".join(variants), **_dvc_tags(),
            **_process_tags()}
    return _log_run(mlflow, name="summary", tags=tags, files=[(path, "summary") for path in files])


def _log_run(mlflow: Any, *, name: str, tags: Mapping[str, str], params: Mapping[str, str] | None = None,
             metrics: Mapping[str, float] | None = None, files: Iterable[tuple[Path, str]] = (),
             folders: Iterable[tuple[Path, str]] = ()) -> str:
    """Create, fill and finish one run through the client API, in batches: no process-wide active
    run, so a failure part-way leaves nothing behind in this process for the local fallback to trip
    on (a run it left RUNNING on a server is reaped later, see reap_abandoned_runs)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name())
    run_id = client.create_run(experiment.experiment_id, run_name=name, tags=resolve_tags(dict(tags))).info.run_id
    try:
        now = int(time.time() * 1000)
        param_items = [Param(key, value) for key, value in (params or {}).items()]
        metric_items = [Metric(key, value, now, 0) for key, value in (metrics or {}).items()]
        for start in range(0, len(param_items), BATCH_PARAMS):
            client.log_batch(run_id, params=param_items[start:start + BATCH_PARAMS])
        for start in range(0, len(metric_items), BATCH_METRICS):
            client.log_batch(run_id, metrics=metric_items[start:start + BATCH_METRICS])
        for path, artifact_path in files:
            client.log_artifact(run_id, str(path), artifact_path)
        for path, artifact_path in folders:
            client.log_artifacts(run_id, str(path), artifact_path)
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def log_safely(action: Callable[..., Any], **kwargs: Any) -> None:
    """Mirror to MLflow unless disabled. A tracking server that fails sends the run to the local store
    (one warning line says where); any other failure warns instead of failing the stage."""
    if not enabled():
        return
    if required():
        try:
            action(**kwargs)
        except Exception as err:
            raise TrackingError(f"MLflow logging failed ({type(err).__name__}: {_one_line(err)}); {SWITCH_ENV}="
                                f"{REQUIRED}, so the stage fails: make the tracking server reachable and rerun") from None
        return
    try:
        try:
            action(**kwargs)
        except Exception as err:
            if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
                raise
            action(**kwargs, local=True)
            print(f"warning: MLflow run logged to the local store {tracking_uri(local=True)} instead: "
                  f"{_one_line(err)}", file=sys.stderr)
    except Exception as err:  # MLflow, sqlite and filesystem errors alike: the metrics files stand
        print(
            f"warning: MLflow logging skipped ({type(err).__name__}: {_one_line(err)}); the metrics files are written. "
            f"Set {SWITCH_ENV}=off to silence this.",
            file=sys.stderr,
        )


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the `mlflow ui` address of this project's runs table.")
    parser.add_argument("--server", default="http://127.0.0.1:5000", help="where `mlflow ui` listens")
    args = parser.parse_args()
    print(runs_view_url(experiment_id(), args.server))


if __name__ == "__main__":
    main()
