"""Stage report: every variant's metrics in one table, one Pareto plot and one points file.

    python stages/report.py --metrics metrics --out-plot plots/pareto.png \
        --out-table metrics/summary.json --out-points plots/pareto.json

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
    parser.add_argument("--out-plot", type=Path, required=True)
    parser.add_argument("--out-table", type=Path, required=True, help="summary JSON (may live in --metrics)")
    parser.add_argument("--out-points", type=Path, required=True, help="plotted points for `dvc plots`")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from nemo_ptq import report, tracking

    with stage_outputs(args.out_plot, args.out_table, args.out_points):
        metrics = report.load_metrics(args.metrics, skip=(args.out_table,))
        rows = report.summary_rows(metrics)
        front = report.pareto_front(rows)
        points = report.plot_points(rows, front)
        report.plot_pareto(points, args.out_plot, report.caption(metrics))
        for path, payload in (
            (args.out_points, points),
            # Keyed by variant (not a list) so `dvc metrics show` can display it.
            (args.out_table, {"variants": {r["variant"]: r for r in rows}, "pareto_front": front}),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=2) + "\n")
    print(report.markdown_table(rows))
    print(f"\nPareto front (latency vs WER): {', '.join(front) or '(none)'}")

    tracking.log_safely(
        tracking.log_summary,
        files=[args.out_plot, args.out_table, args.out_points],
        variants=[r["variant"] for r in rows],
    )


if __name__ == "__main__":
    run_stage(main)
