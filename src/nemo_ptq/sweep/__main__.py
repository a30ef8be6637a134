"""Run a params grid as DVC experiments on Ray workers, each in its own clone; see README, 'Sweeps'.

    python -m nemo_ptq.sweep -S 'variants.ort_int8.calibration.num_utterances=8,32,128' \\
        -S 'variants.ort_int8.calibration.method=minmax,entropy' [--address HOST:6379] [targets...]

Without --address, Ray runs here with --workers points at once. Rerun the same command to resume:
points already on the Git remote are skipped. Exit status 1 if a point failed (each is listed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemo_ptq.cli import run_stage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nemo_ptq.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("-S", "--set-param", dest="settings", action="append", default=[], required=True,
                        metavar="PATH=V1,V2", help="a params.yaml key and its values (repeat for a grid)")
    parser.add_argument("targets", nargs="*", help="dvc.yaml stages to reproduce per point (default: all)")
    parser.add_argument("--address", help="Ray cluster address (HOST:PORT of `ray start --head`); "
                                          "default: Ray on this machine")
    parser.add_argument("--workers", type=int, default=2, help="points at once when Ray runs here (default 2)")
    parser.add_argument("--cpus-per-point", type=float, default=1.0,
                        help="Ray CPUs each point holds (default 1); set it to evaluate.threads to time without contention")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a point whose worker died (default 2)")
    parser.add_argument("--git-remote", default="origin", help="Git remote the workers clone and push to")
    parser.add_argument("--name", default="sweep", help="experiment name prefix (default: sweep)")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (default: here)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from nemo_ptq.errors import ConfigError
    from nemo_ptq.sweep.driver import SweepOptions, run_sweep

    if args.workers < 1 or args.cpus_per_point <= 0 or args.retries < 0:
        raise ConfigError("--workers must be >= 1, --cpus-per-point > 0 and --retries >= 0")
    options = SweepOptions(settings=args.settings, git_remote=args.git_remote, address=args.address,
                           workers=args.workers, cpus_per_point=args.cpus_per_point, retries=args.retries,
                           targets=args.targets, name=args.name)
    result = run_sweep(args.repo, options)
    labels = {point.name: point.label() for point in result.points}
    for name in result.skipped:
        print(f"{name}  {labels[name]}  (already on {args.git_remote})")
    for outcome in result.done:
        print(f"{outcome['name']}  {labels[outcome['name']]}  done on {outcome['host']} in {outcome['seconds']} s")
    if result.failed:
        for name, error in result.failed.items():
            print(f"{name}  {labels[name]}  FAILED\n{error}", file=sys.stderr)
        print(f"error: {len(result.failed)} of {len(result.points)} points failed; rerun the same command to "
              "retry them (finished points are skipped)", file=sys.stderr)
        sys.exit(1)
    print("all points are experiments now: dvc exp show")


if __name__ == "__main__":
    run_stage(main)
