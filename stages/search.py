"""search: the fastest INT8 model of one variant that keeps its accuracy budget on the dev set.

    python stages/search.py --variant ort_int8 --model data/model --fused data/fused --dev data/dev \
        --calibration data/calibration/ort_int8 --sensitivity metrics/sensitivity/ort_int8.json \
        --params params.yaml --out data/quantized/ort_int8_budget

Reads params.yaml `accuracy.<variant>` (the budget and its ranking) and `sensitivity` (the same dev
utterances the table was measured on). Ranks the table's groups by the budget's `rank_by` and keeps
the top-ranked ones float until the budget holds (nemo_ptq.accuracy.search),
then writes that artifact, with accuracy.json: the budget, every trial, the chosen float layers,
their MAC share, and the speed against full INT8 timed here in one run. No subset within the
limits: one error line and no output.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output folder")
    parser.add_argument("--fused", type=Path, required=True, help="fuse stage output folder")
    parser.add_argument("--dev", type=Path, required=True, help="prepare-dev output folder")
    parser.add_argument("--calibration", type=Path, required=True, help="calibrate output of the variant")
    parser.add_argument("--sensitivity", type=Path, required=True, help="sensitivity table of the variant")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="the searched artifact's folder")
    args = parser.parse_args()

    from dataclasses import asdict

    from nemo_ptq.accuracy import search
    from nemo_ptq.accuracy.config import ACCURACY_FILE, SensitivityParams, budget_row, parse_accuracy
    from nemo_ptq.accuracy.setup import open_session
    from nemo_ptq.accuracy.speed import speed_against_full_int8
    from nemo_ptq.errors import DataError
    from nemo_ptq.params import load_config, load_section

    variants = load_section("variants", args.params) or {}
    budgets = parse_accuracy(load_section("accuracy", args.params, required=False), variants)
    if args.variant not in budgets:
        raise DataError(f"accuracy.{args.variant} is not in {args.params}: add a budget for it")
    budget = budgets[args.variant]
    params = load_config(SensitivityParams, "sensitivity", args.params)
    if not args.sensitivity.is_file():
        raise DataError(f"{args.sensitivity} is missing: run dvc repro sensitivity@{args.variant}")
    table = json.loads(args.sensitivity.read_text())
    if table.get("variant") != args.variant:
        raise DataError(f"{args.sensitivity} ranks {table.get('variant')!r}, not {args.variant!r}: "
                        f"run dvc repro sensitivity@{args.variant}")
    session = open_session(args.variant, args.params, params, args.model, args.fused, args.dev, args.calibration)
    total_macs = sum(layer.macs for layer in session.table.values())
    started = time.perf_counter()
    result = search.greedy_search(search.rank_groups(table["groups"], budget.rank_by), total_macs, budget,
                                  lambda layers: session.trials.run(layers).score,
                                  where=f"accuracy.{args.variant}", log=lambda line: print(line, file=sys.stderr))
    search_seconds = time.perf_counter() - started
    with stage_outputs(args.out):
        session.trials.build(result.float_layers, args.out)
        speed = speed_against_full_int8(session, args.out, result.float_layers)
        record = {"variant": budget_row(args.variant), "searched_from": args.variant, "budget": asdict(budget),
                  "dev_utterances": table["dev_utterances"], "rank_by": budget.rank_by,
                  "float_layers": list(result.float_layers), "float_groups": list(result.float_groups),
                  "float_mac_fraction": result.float_mac_fraction, "dev_score": result.score,
                  "speed": speed, "search_seconds": search_seconds, "steps": list(result.steps)}
        (args.out / ACCURACY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{budget_row(args.variant)}: {len(result.float_groups)} groups float ({result.float_mac_fraction:.1%} of "
          f"MACs); dev {budget.metric} {budget.used(result.score):.3f}; "
          f"{speed['speed_vs_full_int8']:.2f}x the speed of full INT8")


if __name__ == "__main__":
    run_stage(main)
