"""DVC stage `prepare`: eval and calibration sets -> mono audio, references and model features.

    python stages/prepare.py --model data/model/model.nemo --params params.yaml --out data/prepared

Reads the `data` section of params.yaml; writes the layout described in nemo_ptq/data/prepared.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs
from nemo_ptq.data.config import parse_data_params
from nemo_ptq.data.preparation import prepare_data
from nemo_ptq.params import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="FP32 NeMo CTC model (.nemo)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    args = parser.parse_args()

    with stage_outputs(args.out):  # any failure, a bad params section included, leaves no output
        params = parse_data_params(load_section("data", args.params))
        summary = prepare_data(params, args.model, args.out)
    for s in summary["sets"]:
        minutes = s["seconds"] / 60
        print(f"{s['role']:<11} {s['name']}: {s['utterances']} utterances, {minutes:.1f} min ({s['kind']})")


if __name__ == "__main__":
    run_stage(main)
