"""DVC stage `prepare-dev`: the dev set -> mono audio, references and model features.

    python stages/prepare_dev.py --model data/model/model.nemo --prepared data/prepared \
        --params params.yaml --out data/dev

Reads the `dev_set` section (and `data.max_duration_s`); writes the layout of
nemo_ptq/data/prepared.py with one set of role `dev`, checked disjoint from every set in
--prepared (the eval sets and the calibration set). Its own stage, so that editing the dev set
reruns only what tunes on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs
from nemo_ptq.data.config import parse_data_params, parse_dev_set
from nemo_ptq.data.preparation import prepare_dev
from nemo_ptq.params import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="FP32 NeMo CTC model (.nemo)")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    args = parser.parse_args()

    with stage_outputs(args.out):  # any failure, a bad params section included, leaves no output
        spec = parse_dev_set(load_section("dev_set", args.params))
        max_duration_s = parse_data_params(load_section("data", args.params)).max_duration_s
        summary = prepare_dev(spec, max_duration_s, args.model, args.prepared, args.out)
    for s in summary["sets"]:
        print(f"{s['role']:<11} {s['name']}: {s['utterances']} utterances, {s['seconds'] / 60:.1f} min ({s['kind']})")


if __name__ == "__main__":
    run_stage(main)
