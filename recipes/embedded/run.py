"""Train the project's embedded QuartzNet model on CPU, end to end and resumable.

    python recipes/embedded/run.py [--params recipes/embedded/params.yaml] [--steps STEP ...]

Steps, in order: synthesize (Kokoro held-out + training clips), manifests (real speech, speed
perturbation, held-out checks), train (NeMo + lightning, resumes from the last checkpoint),
evaluate (WER/CER per held-out set), export (.nemo and model card). Each step skips work that
is already done, so rerunning after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemo_ptq.cli import quiet_environment
from nemo_ptq.errors import PipelineError
from nemo_ptq.training import steps
from nemo_ptq.training.params import load_recipe_params

STEPS = {
    "synthesize": steps.synthesize,
    "manifests": steps.build_manifests,
    "train": steps.train,
    "evaluate": steps.evaluate,
    "export": steps.export,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("recipes/embedded/params.yaml"))
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = parser.parse_args(argv)
    quiet_environment()
    try:
        params = load_recipe_params(args.params)
        for name in STEPS:
            if name in args.steps:
                print(f"== {name}", flush=True)
                STEPS[name](params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
