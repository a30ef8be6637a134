"""scripts/submission_size.py counts every rewrite of a large file again, and fails over the limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "submission_size.py"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _commit(repo: Path, name: str, size: int, seed: int) -> None:
    (repo / name).write_bytes(bytes((seed * 7 + i) % 251 for i in range(size)))
    _git(repo, "add", name)
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-q", "-m",
         f"{name} {seed}")


def _run(repo: Path, base: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), base], cwd=repo, capture_output=True, text=True)


def test_each_rewrite_counts_its_old_and_new_blob(tmp_path):
    _git(tmp_path, "init", "-q")
    _commit(tmp_path, "small.txt", 10, seed=0)
    base = _git(tmp_path, "rev-parse", "HEAD").strip()
    for seed in (1, 2):
        _commit(tmp_path, "last.ckpt", 2**20, seed)
    result = _run(tmp_path, base)
    assert result.returncode == 0, result.stderr
    # added (1 MiB) then rewritten (1 MiB old + 1 MiB new)
    assert "3.0 MiB in 2 file changes (limit 256 MiB)" in result.stdout
    assert "last.ckpt" in result.stdout.splitlines()[0]


def test_over_the_limit_exits_1(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    _commit(tmp_path, "small.txt", 10, seed=0)
    base = _git(tmp_path, "rev-parse", "HEAD").strip()
    _commit(tmp_path, "big.bin", 2**20, seed=1)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import submission_size
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(submission_size, "LIMIT_MIB", 0.5)
    monkeypatch.setattr(sys, "argv", ["submission_size.py", base])
    monkeypatch.chdir(tmp_path)
    assert submission_size.main() == 1
