"""Check what `mlflow ui` shows for this project's runs: start it, open the runs view in headless
Chromium and save a screenshot (and, with --dom, the rendered page's HTML).

    python scripts/mlflow_ui_screenshot.py --out /tmp/mlflow_runs.png [--store sqlite:///mlflow.db]

Without --store, a temporary store gets one run per committed metrics/<variant>.json, logged by
nemo_ptq.tracking with that variant's params.yaml entry (the numbers are the committed results).
Needs Chromium (Debian: `apt-get install -y chromium`); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000", "--virtual-time-budget=20000"]


def demo_store(folder: Path) -> str:
    """A store holding one evaluate run per committed metrics file, logged by the project's code."""
    (folder / ".dvc").mkdir(parents=True)  # tracking finds its store next to a DVC repository
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("DVC_ROOT", None)
    os.chdir(folder)
    from nemo_ptq import tracking

    variants = yaml.safe_load((REPO / "params.yaml").read_text())["variants"]
    (folder / "transcripts").mkdir()
    for path in sorted((REPO / "metrics").glob("*.json")):
        metrics = json.loads(path.read_text())
        entry = variants.get(path.stem) or {}
        tracking.log_evaluation(
            variant=path.stem,
            params={"variant": path.stem, "backend": metrics["backend"],
                    "options": {k: v for k, v in entry.items() if k != "backend"}},
            metrics=metrics, inputs=[path], metrics_file=path, transcripts_dir=folder / "transcripts",
        )
    return tracking.tracking_uri(folder, {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(server: subprocess.Popen, url: str, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    sys.exit(f"error: mlflow ui did not answer at {url} within {seconds:.0f} s: {tail}")


def stop(server: subprocess.Popen) -> None:
    """End the server and its workers: its own process group, started by this script."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: stopped"))  # so `finally` stops the server
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="screenshot (PNG)")
    parser.add_argument("--dom", type=Path, help="also write the rendered page's HTML here")
    parser.add_argument("--store", help="tracking URI to show (default: a temporary store of metrics/*.json)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: Chromium not found: install it (Debian: apt-get install -y chromium)")
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    out, dom = args.out.resolve(), args.dom.resolve() if args.dom else None

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or demo_store(Path(tmp) / "repo")
        os.environ["MLFLOW_TRACKING_URI"] = store
        from nemo_ptq import tracking

        experiment = tracking.experiment_id()  # tags an older store's experiment too
        port, log = free_port(), Path(tmp) / "mlflow_ui.log"
        with log.open("w") as log_file:
            server = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store,
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            wait_for(server, f"http://127.0.0.1:{port}/health", log, 600)  # minutes on a busy machine
            url = tracking.runs_view_url(experiment, f"http://127.0.0.1:{port}")
            browser = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'chromium'}"]
            subprocess.run([*browser, f"--screenshot={out}", url], capture_output=True, timeout=300, check=True)
            if dom is not None:
                html = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=300,
                                      check=True).stdout
                dom.write_text(html)
        finally:
            stop(server)
    print(f"{url}\n-> {out}" + (f", {dom}" if dom else ""))


if __name__ == "__main__":
    main()
