"""cpu: record the machine the CPU-dependent stages run on (rewritten on every dvc repro).

Writes <out>/isa.json (the ISA profile and flags: calibrate and quantize depend on it, since
`preset: auto` picks settings by it) and <out>/machine.json (also the CPU model and core count:
evaluate depends on it, since its latencies are this machine's). DVC reruns a dependent stage
only when the file it depends on changes, so another machine of the same kind reruns nothing.
"""

import argparse
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from nemo_ptq import cpu

    with stage_outputs(args.out / "isa.json", args.out / "machine.json"):
        found = cpu.write_records(args.out)
    print(f"CPU: {found.model}, ISA profile {found.profile} ({' '.join(found.isa) or 'no relevant flags'})")


if __name__ == "__main__":
    run_stage(main)
