"""sensitivity: measure what keeping each of one variant's layer groups in float recovers on the dev set.

    python stages/sensitivity.py --variant ort_int8 --model data/model --fused data/fused --dev data/dev \
        --calibration data/calibration/ort_int8 --params params.yaml \
        --out-table metrics/sensitivity/ort_int8.json --out-plot plots/sensitivity/ort_int8.png

For a variant named in params.yaml `accuracy`; reads `sensitivity` (not the budget). The table holds
the full-INT8 dev score and, per group (largest SQNR gain first), its MACs and its SQNR and WER-vs-FP32
gains; the search ranks them by its budget's `rank_by`.
"""

import argparse
import json
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output folder")
    parser.add_argument("--fused", type=Path, required=True, help="fuse stage output folder")
    parser.add_argument("--dev", type=Path, required=True, help="prepare-dev output folder")
    parser.add_argument("--calibration", type=Path, required=True, help="calibrate output of the variant")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-table", type=Path, required=True)
    parser.add_argument("--out-plot", type=Path, required=True)
    args = parser.parse_args()

    from nemo_ptq.accuracy import sensitivity
    from nemo_ptq.accuracy.config import SensitivityParams, parse_accuracy
    from nemo_ptq.accuracy.groups import layer_groups
    from nemo_ptq.accuracy.setup import open_session
    from nemo_ptq.params import load_config, load_section

    variants = load_section("variants", args.params) or {}
    parse_accuracy(load_section("accuracy", args.params, required=False), variants)  # the variant is checked as budgetable
    params = load_config(SensitivityParams, "sensitivity", args.params)
    session = open_session(args.variant, args.params, params, args.model, args.fused, args.dev, args.calibration)
    with stage_outputs(args.out_table, args.out_plot):
        full = session.trials.run([])
        already_float = frozenset(p for p, prec in full.info.layer_precisions.items() if prec != "int8")
        groups = layer_groups(session.trials.fp32, session.table, skip=already_float)
        table = {"variant": args.variant, "backend": session.trials.backend.name,
                 **sensitivity.measure(session.trials, full, groups)}
        args.out_table.parent.mkdir(parents=True, exist_ok=True)
        args.out_table.write_text(json.dumps(table, indent=1) + "\n")
        sensitivity.plot(table, args.out_plot, args.variant)
    top = ", ".join(f"{row['group']} (+{row['sqnr_gain_db']:.1f} dB)" for row in table["groups"][:3])
    print(f"{args.variant}: {len(table['groups'])} groups measured on {table['dev_utterances']} dev utterances, "
          f"{len(table['not_floatable'])} not floatable; most sensitive: {top}")


if __name__ == "__main__":
    run_stage(main)
