"""What every stage script shares: telemetry off, quiet logs, one-line errors, no partial outputs."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nemo_ptq.errors import PipelineError

TELEMETRY_OFF = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
}


def quiet_environment() -> None:
    """Disable telemetry and silence NeMo's chatter before anything heavy is imported."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
    # NeMo resets its logger's level on import; a filter on the logger object survives that.
    logging.getLogger("nemo_logger").addFilter(lambda record: record.levelno >= logging.WARNING)
    logging.getLogger("nv_one_logger").setLevel(logging.ERROR)


@contextmanager
def stage_outputs(*paths: Path) -> Iterator[None]:
    """Remove these outputs if the body fails, so a failed stage leaves nothing half-written."""
    for path in paths:
        _remove(path)
    try:
        yield
    except BaseException:
        for path in paths:
            _remove(path)
        raise


def _remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a PipelineError becomes one line on stderr and exit status 1."""
    quiet_environment()
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
