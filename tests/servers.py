"""Throwaway services for the multi-machine tests: a PostgreSQL cluster (Debian's `postgresql`
package, made with initdb/pg_ctl in a temp dir, on 127.0.0.1) and `mlflow server` on top of it with
served artifacts, the documented setup for runs from several machines.

Without PostgreSQL the tests that need it are skipped, except under NEMO_PTQ_TEST_STRICT=1 (set by
.ci/run, whose setup installs it), where a missing service fails them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_USER = "postgres"  # initdb refuses to run as root; Debian's package creates this account


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def require_postgres() -> Path:
    bindir = postgres_bin()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql; scripts/setup.sh does)"
        if os.environ.get("NEMO_PTQ_TEST_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return bindir


@dataclass
class Postgres:
    url: str  # SQLAlchemy URL of the `mlflow` database
    folder: Path


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    bindir = require_postgres()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="nemo-ptq-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
    port = free_port()
    data = folder / "data"
    run = lambda *args: subprocess.run(_as_postgres_user([str(a) for a in args]), check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    run(bindir / "initdb", "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8")
    run(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "mlflow")
        yield Postgres(f"postgresql://mlflow@127.0.0.1:{port}/mlflow", folder)
    finally:
        subprocess.run(_as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a PostgreSQL store; stop() and start() keep the port and the store."""

    def __init__(self, store_url: str, artifacts: Path, port: int | None = None):
        self.store_url, self.artifacts, self.port = store_url, artifacts, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", self.store_url, "--serve-artifacts",
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.process.stderr.read()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.uri} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn workers
            self.process.wait(timeout=30)
        self.process = None


@contextlib.contextmanager
def mlflow_server(store_url: str, artifacts: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(store_url, artifacts)
    server.start()
    try:
        yield server
    finally:
        server.stop()
