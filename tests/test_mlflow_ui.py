"""What `mlflow ui` opens for the project's runs, checked in headless Chromium (skipped without it):
scripts/mlflow_ui_screenshot.py on a store of the committed metrics; the rendered page must be
the runs table, with the calibration tag and metric columns and the runs named by their settings."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, stage_env
from nemo_ptq import tracking

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                 reason="needs Chromium (apt-get install -y chromium)")]


def test_the_address_opens_the_runs_table_with_the_calibration_columns(tmp_path):
    env = stage_env()
    env.pop("NEMO_PTQ_MLFLOW")
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "mlflow_ui_screenshot.py"), "--out", str(tmp_path / "runs.png"),
         "--dom", str(tmp_path / "runs.html")],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "/runs?workflowType=machine_learning&viewStateShareKey=nemo-ptq" in result.stdout
    html = (tmp_path / "runs.html").read_text()
    for column in tracking.runs_view()["selectedColumns"][:3]:  # the grid renders only the columns in view
        assert f'col-id="{column}"' in html
    entry = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["variants"]["onednn"]
    backend = json.loads((REPO_ROOT / "metrics" / "onednn.json").read_text())["backend"]
    name = tracking.run_labels("onednn", backend, {k: v for k, v in entry.items() if k != "backend"})["name"]
    assert name in html and "Detect Issues" not in html  # the runs table, not the GenAI overview
    assert (tmp_path / "runs.png").stat().st_size > 10_000
