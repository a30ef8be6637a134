"""Wall time of N sweep points: DVC's serial queue vs `python -m nemo_ptq.sweep` on local Ray workers.

    python benchmarks/sweep_overhead.py --points 4 --workers 2 --work-s 20 --out benchmarks/results/sweep_overhead.json

Each point is a small DVC project's stage that does --work-s seconds of single-threaded CPU work
(a fixed number of matrix products, timed once here), so the figure is what a sweep adds per point
(clone, pull, push, Ray) against what running points side by side saves. It is not the pipeline's
own stages: a point of those takes minutes, and their evaluate timing is contended when points
share cores (use --cpus-per-point). MLflow is off in both arms. Pause other work while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = """\
import json, os, yaml
import numpy as np
n = yaml.safe_load(open("params.yaml"))["point"]["n"]
a = np.random.default_rng(n).standard_normal((256, 256))
for _ in range(int(os.environ["BENCH_PRODUCTS"])):
    a = np.tanh(a @ a / 256)
json.dump({"n": n, "checksum": float(a.sum())}, open("metrics.json", "w"))
"""
DVC_YAML = """\
stages:
  work:
    cmd: python work.py
    deps: [work.py]
    params: [point]
    metrics:
      - metrics.json:
          cache: false
"""


def sh(cwd: Path, *args: str, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def products_for(seconds: float, env: dict) -> int:
    probe = ("import time, numpy as np; a = np.ones((256, 256)); t = time.perf_counter()\n"
             "for _ in range(200): a = np.tanh(a @ a / 256)\nprint((time.perf_counter() - t) / 200)")
    per_product = float(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    return max(1, round(seconds / per_product))


def project(folder: Path, env: dict) -> Path:
    repo, bare = folder / "project", folder / "remote.git"
    repo.mkdir(parents=True)
    (repo / "params.yaml").write_text("point:\n  n: 0\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "work.py").write_text(STAGE)
    sh(repo, "git", "init", "-q", "-b", "main", env=env)
    sh(repo, "dvc", "init", "-q", env=env)
    sh(repo, "dvc", "remote", "add", "-d", "shared", str(folder / "dvc-remote"), env=env)
    sh(folder, "git", "init", "-q", "--bare", str(bare), env=env)
    sh(repo, "git", "remote", "add", "origin", str(bare), env=env)
    sh(repo, "dvc", "repro", "-q", env=env)
    sh(repo, "git", "add", "-A", env=env)
    sh(repo, "git", "commit", "-qm", "baseline", env=env)
    sh(repo, "git", "push", "-q", "origin", "main", env=env)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-s", type=float, default=20.0, help="CPU seconds of work per point")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    env.update(DVC_NO_ANALYTICS="1", NEMO_PTQ_MLFLOW="off", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT / "src"))
    env["BENCH_PRODUCTS"] = str(products_for(args.work_s, env))
    values = ",".join(str(n) for n in range(1, args.points + 1))
    with tempfile.TemporaryDirectory() as tmp:
        serial_repo = project(Path(tmp) / "serial", env)
        started = time.monotonic()
        sh(serial_repo, "dvc", "exp", "run", "--queue", "-S", f"point.n={values}", env=env)
        sh(serial_repo, "dvc", "queue", "start", "-j", "1", env=env)
        while "Queued" in (status := sh(serial_repo, "dvc", "queue", "status", env=env)) or "Running" in status:
            time.sleep(1)
        serial_s = time.monotonic() - started
        assert status.count("Success") == args.points, status

        ray_repo = project(Path(tmp) / "ray", env)
        started = time.monotonic()
        out = sh(ray_repo, sys.executable, "-m", "nemo_ptq.sweep", "-S", f"point.n={values}",
                 "--workers", str(args.workers), env=env)
        ray_s = time.monotonic() - started
        assert out.count("  done on ") == args.points, out  # the summary lines
    cores = os.cpu_count()
    result = {"points": args.points, "work_s_per_point": args.work_s, "logical_cpus": cores,
              "serial_queue_s": round(serial_s, 1), f"ray_{args.workers}_workers_s": round(ray_s, 1),
              "ratio_ray_over_serial": round(ray_s / serial_s, 3),
              "cpu": Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
