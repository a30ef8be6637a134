"""Stage report: the params.yaml variants' metrics in one table, one Pareto plot (latency and RTFx) and one points file.

    python stages/report.py --metrics metrics --params params.yaml --model data/model/model.nemo \
        --prepared data/prepared --out-plot plots/pareto.png --out-table reports/summary.json \
        --out-points plots/pareto.json

Reads metrics/fp32.json, metrics/<v>.json for each variant v in params.yaml and
metrics/<v>_budget.json for each accuracy search (params.yaml `accuracy`), each of which must
have been measured on --model and --prepared's eval sets (else an error says which stage to rerun).
Prints the table as markdown; the outputs are then mirrored to an MLflow "summary" run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True, help="folder of evaluate metrics files")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its variants are the rows")
    parser.add_argument("--model", type=Path, required=True, help="the .nemo the rows must come from")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare output: the eval sets the rows must use")
    parser.add_argument("--out-plot", type=Path, required=True)
    parser.add_argument("--out-table", type=Path, required=True, help="summary JSON")
    parser.add_argument("--out-points", type=Path, required=True, help="plotted points for `dvc plots`")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from nemo_ptq import report, tracking
    from nemo_ptq.accuracy.config import budget_row, parse_accuracy
    from nemo_ptq.params import load_section

    with stage_outputs(args.out_plot, args.out_table, args.out_points):
        variants = load_section("variants", args.params) or {}
        budgets = parse_accuracy(load_section("accuracy", args.params, required=False), variants)
        searched = {budget_row(v): f"evaluate-budget@{v}" for v in budgets}
        inputs = report.Inputs.current(args.model, args.prepared)
        metrics, left_out = report.load_metrics(args.metrics, [*variants, *searched], inputs, searched)
        rows = report.summary_rows(metrics)
        ranked, elsewhere = report.split_by_hardware(rows)
        front = report.pareto_front(ranked)
        throughput = report.throughput_speed(ranked)
        throughput_front = [] if throughput is None else report.pareto_front(ranked, throughput)
        points = report.plot_points(ranked, front, throughput, throughput_front)
        report.plot_pareto(points, args.out_plot, report.caption(metrics), throughput)
        summary = {"variants": {r["variant"]: r for r in rows}, "pareto_front": front, "pareto_front_rtfx": throughput_front,
                   "not_ranked": {r["variant"]: r["hardware"] for r in elsewhere}}
        for path, payload in (
            (args.out_points, points),
            # Keyed by variant (not a list) so `dvc metrics show` can display it.
            (args.out_table, summary),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=2) + "\n")
    if left_out:
        print(f"not shown (not a variant in {args.params}): {', '.join(str(p) for p in left_out)}")
    print(report.markdown_table(rows))
    if elsewhere:
        print(f"\nnot ranked (latency measured on other hardware than fp32's, {ranked[0]['hardware']}): "
              + ", ".join(f"{r['variant']} ({r['hardware']})" for r in elsewhere)
              + ". Rerun their evaluate stages on one machine to compare them.")
    print(f"\nPareto front (latency vs WER): {', '.join(front) or '(none)'}")
    if throughput is not None:
        print(f"Pareto front ({throughput.key} vs WER): {', '.join(throughput_front) or '(none)'}")

    tracking.log_safely(
        tracking.log_summary,
        files=[args.out_plot, args.out_table, args.out_points],
        variants=[r["variant"] for r in rows],
    )


if __name__ == "__main__":
    run_stage(main)
