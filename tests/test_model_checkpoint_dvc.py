"""DVC tracks a `file:` checkpoint through params.yaml `model.checkpoint`: replacing the file marks
fetch-pretrained changed and `dvc repro` reruns it, without `-f`. Runs in a temporary copy."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, stage_env

pytestmark = pytest.mark.slow
COPIED = ["dvc.yaml", "params.yaml", "stages", "src", "data/embedded"]


def dvc(*args, cwd):
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc_bin), *args], cwd=cwd, env=stage_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_replacing_a_file_checkpoint_reruns_fetch_pretrained(tmp_path, tiny_nemo):
    project = tmp_path / "project"
    for name in COPIED:
        source, target = REPO_ROOT / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    checkpoint = tmp_path / "models" / "mine.nemo"  # outside the repository, as a user's download would be
    checkpoint.parent.mkdir()
    shutil.copy(tiny_nemo, checkpoint)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"].update(source=f"file:{checkpoint}", checkpoint=str(checkpoint))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc("init", "-q", cwd=project)

    dvc("repro", "fetch-pretrained", cwd=project)
    assert json.loads(dvc("status", "fetch-pretrained", "--json", cwd=project)) == {}

    with checkpoint.open("ab") as f:  # still a valid .nemo (a tar), with other bytes
        f.write(b"\0" * 1024)
    status = json.loads(dvc("status", "fetch-pretrained", "--json", cwd=project))
    assert list(status) == ["fetch-pretrained"]
    assert {"changed deps": {str(checkpoint): "modified"}} in status["fetch-pretrained"]

    assert "Running stage 'fetch-pretrained'" in dvc("repro", "fetch-pretrained", cwd=project)
    card = json.loads((project / "data" / "model" / "card.json").read_text())
    assert card["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
