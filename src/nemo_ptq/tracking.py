"""MLflow mirrors what the stages wrote; nothing in the pipeline reads it back.

The metrics files under metrics/ are the source of truth, so a failure to log to MLflow prints a
warning and the stage still succeeds (`log_safely`). `NEMO_PTQ_MLFLOW=off` skips MLflow entirely.

Where runs go: `MLFLOW_TRACKING_URI` if set; otherwise `sqlite:///<repo>/mlflow.db` with artifacts
in `<repo>/mlartifacts/`, where <repo> is the main repository. Queued experiments
(`dvc exp run --queue`, also `--temp`) run in a copy under `<repo>/.dvc/tmp/exps/<tmpdir>/` that
has its own `.dvc/` folder; DVC passes the main root as `DVC_ROOT`, and the path itself says so
too, so their runs land in the same store as `dvc repro` runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from nemo_ptq.errors import ConfigError

SWITCH_ENV = "NEMO_PTQ_MLFLOW"  # "off" disables MLflow
EXPERIMENT_ENV = "NEMO_PTQ_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "nemo-ptq"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
EXPERIMENT_COPY = (".dvc", "tmp", "exps")  # where DVC runs queued/temp experiments


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(SWITCH_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


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


def tracking_uri(cwd: Path | None = None, env: Mapping[str, str] = os.environ) -> str:
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root(cwd, env) / STORE_FILE}"


def artifact_location(cwd: Path | None = None, env: Mapping[str, str] = os.environ) -> str | None:
    """Artifacts next to the default store; a user-chosen tracking server keeps its own default."""
    if env.get("MLFLOW_TRACKING_URI"):
        return None
    return (repo_root(cwd, env) / ARTIFACT_DIR).as_uri()


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


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are left out (per-layer tables live in the artifacts)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
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


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before the import: it phones home
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter in stage logs
    # Both before set_tracking_uri, which exports MLFLOW_TRACKING_URI and so would hide our default.
    uri, artifacts = tracking_uri(), artifact_location()
    mlflow.set_tracking_uri(uri)
    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # else a parallel queue worker created it
                raise
    mlflow.set_experiment(name)
    return mlflow


def _dvc_tags() -> dict[str, str]:
    names = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev", "DVC_STAGE": "dvc.stage"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def log_evaluation(*, variant: str, params: Mapping[str, Any], metrics: Mapping[str, Any], inputs: Iterable[Path],
                   metrics_file: Path, transcripts_dir: Path) -> str:
    """One run per evaluate execution. `params` is everything that configured it (flattened here);
    the stage fingerprint hashes it together with the input files."""
    mlflow = _mlflow()
    set_kinds = {name: item["kind"] for name, item in metrics.get("sets", {}).items()}
    tags = {
        "stage": "evaluate",
        "variant": variant,
        "git_commit": git_commit(),
        "stage_fingerprint": fingerprint(params, inputs),
        "set_kinds": ",".join(f"{name}={kind}" for name, kind in set_kinds.items()),
        "speech_kinds": ",".join(sorted(set(set_kinds.values()))),
        "model_trained": str(metrics.get("model", {}).get("trained")),
        "cpu": str(metrics.get("system", {}).get("cpu")),
        **_dvc_tags(),
    }
    with mlflow.start_run(run_name=f"evaluate-{variant}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params({key: str(value) for key, value in flatten(params).items()})
        mlflow.log_metrics(numeric(flatten(metrics)))
        mlflow.log_artifact(str(metrics_file), artifact_path="metrics")
        mlflow.log_artifacts(str(transcripts_dir), artifact_path="transcripts")
        return run.info.run_id


def log_summary(*, files: Iterable[Path], variants: Iterable[str]) -> str:
    """One "summary" run per report execution, holding the Pareto plot, its points and the table."""
    mlflow = _mlflow()
    with mlflow.start_run(run_name="summary") as run:
        mlflow.set_tags({"stage": "report", "git_commit": git_commit(), "variants": ",".join(variants), **_dvc_tags()})
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="summary")
        return run.info.run_id


def log_safely(action: Callable[..., Any], **kwargs: Any) -> None:
    """Mirror to MLflow unless disabled; a failure warns instead of failing the stage."""
    if not enabled():
        return
    try:
        action(**kwargs)
    except Exception as err:  # MLflow, sqlite and filesystem errors alike: the metrics files stand
        print(
            f"warning: MLflow logging skipped ({type(err).__name__}: {err}); the metrics files are written. "
            f"Set {SWITCH_ENV}=off to silence this.",
            file=sys.stderr,
        )
