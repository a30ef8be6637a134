"""Train the project's embedded QuartzNet model on CPU, end to end and resumable.

    python recipes/embedded/run.py [--params PHASE.yaml ...] [--steps STEP ...]

Steps, in order: synthesize (Kokoro held-out + training clips), manifests (real speech, speed
perturbation, held-out checks), train (cached features, resumes from the last checkpoint),
evaluate (WER/CER per held-out set), export (.nemo and model card). Each step skips work that
is already done, so rerunning after an interruption continues where it stopped.

`--params` takes one file per training phase (default: recipes/embedded/params.yaml, the one phase
whose checkpoint folder is committed). The files must agree on everything but `train:`; the
data steps run once, `train` once per phase in order, evaluate and export on the last phase.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from nemo_ptq.cli import quiet_environment
from nemo_ptq.errors import ConfigError, PipelineError

from embedded_recipe import steps
from embedded_recipe.params import load_recipe_params

PHASES = [Path("recipes/embedded/params.yaml")]
PER_PHASE = {"train"}
STEPS = {
    "synthesize": steps.synthesize,
    "manifests": steps.build_manifests,
    "train": steps.train,
    "evaluate": steps.evaluate,
    "export": steps.export,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, nargs="+", default=PHASES, help="one file per training phase")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--minutes", type=float, help="stop training after this many minutes of this run "
                        "(a checkpoint is saved; rerun to resume); SIGINT/SIGTERM also stop it cleanly")
    args = parser.parse_args(argv)
    quiet_environment()
    try:
        phases = [load_recipe_params(path) for path in args.params]
        check_phases_agree(phases, args.params)
        for name in STEPS:
            if name not in args.steps:
                continue
            for path, params in zip(args.params, phases) if name in PER_PHASE else [(args.params[-1], phases[-1])]:
                print(f"== {name} ({path})", flush=True)
                STEPS[name](params, args.minutes) if name == "train" else STEPS[name](params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def check_phases_agree(phases: list, paths: list[Path]) -> None:
    """Phases share the data and export sections; only `train:` may differ."""
    first = dataclasses.replace(phases[0], train=None)
    for path, params in zip(paths[1:], phases[1:]):
        if dataclasses.replace(params, train=None) != first:
            raise ConfigError(f"{path} differs from {paths[0]} outside `train:`: phases must share data and export")


if __name__ == "__main__":
    sys.exit(main())
