"""Our accuracy search against NNCF's accuracy control (issue 11's peer), at the same budget on the
same calibration and dev utterances, on one OpenVINO variant of params.yaml `accuracy`.

Needs the variant's calibration and the dev set (`dvc repro calibrate@ov_int8 prepare-dev`) and our
search's result, `metrics/<v>_budget.json` (committed by the pipeline run). From the one calibration
it converts full INT8 and ours (the float layers our search chose) and runs NNCF's
quantize_with_accuracy_control (nemo_ptq.accuracy.nncf_peer); then it scores the three models on the
dev set and times them in one process, in alternating blocks (10 s of audio, median of the runs).
Writes benchmarks/results/accuracy_peer_<v>.json and prints a markdown table.

    python benchmarks/accuracy_peer.py --variant ov_int8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nemo_ptq.cli import run_stage

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ov_int8", help="an ov int8 variant with an accuracy budget")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model")
    args = parser.parse_args()

    from nemo_ptq.accuracy import nncf_peer
    from nemo_ptq.accuracy.config import SensitivityParams, budget_row, parse_accuracy
    from nemo_ptq.accuracy.setup import open_session
    from nemo_ptq.cpu import detect
    from nemo_ptq.errors import DataError
    from nemo_ptq.evaluation.fp32 import latency_features
    from nemo_ptq.evaluation.latency import time_in_blocks
    from nemo_ptq.params import load_config, load_section

    variants = load_section("variants", args.params) or {}
    budgets = parse_accuracy(load_section("accuracy", args.params, required=False), variants)
    if args.variant not in budgets:
        raise DataError(f"accuracy.{args.variant} is not in {args.params}: give the variant a budget")
    budget = budgets[args.variant]
    searched = Path("metrics") / f"{budget_row(args.variant)}.json"
    calibration = Path("data/calibration") / args.variant
    if not searched.is_file():
        raise DataError(f"{searched} is missing: run dvc repro evaluate-budget@{args.variant}")
    record = json.loads(searched.read_text())["accuracy_search"]
    if record["budget"] != dataclasses.asdict(budget):
        raise DataError(f"{searched} was searched with budget {record['budget']}, params.yaml now says "
                        f"{dataclasses.asdict(budget)}: run dvc repro evaluate-budget@{args.variant}")
    for folder, stage in ((calibration, f"calibrate@{args.variant}"), (Path("data/dev"), "prepare-dev")):
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: run dvc repro {stage}")
    session = open_session(args.variant, args.params, load_config(SensitivityParams, "sensitivity", args.params),
                           Path("data/model"), Path("data/fused"), Path("data/dev"),
                           calibration)
    trials = session.trials

    with tempfile.TemporaryDirectory(prefix="accuracy_peer_") as tmp:
        models = {"full INT8": Path(tmp) / "full", "ours (greedy search)": Path(tmp) / "ours",
                  "NNCF accuracy control": Path(tmp) / "nncf"}
        trials.build([], models["full INT8"])
        trials.build(record["float_layers"], models["ours (greedy search)"])
        start = time.perf_counter()
        nncf_peer.quantize_with_accuracy_control(trials, budget, models["NNCF accuracy control"])
        nncf_seconds = time.perf_counter() - start
        backend = trials.backend
        runners = {name: backend.load(folder, trials.threads) for name, folder in models.items()}
        rows = {}
        for name, folder in models.items():
            info = backend.describe(folder)
            rows[name] = {"dev": trials.scorer.score(runners[name]).as_dict(),
                          "int8_weight_mac_fraction": info.int8_weight_mac_fraction,
                          "float_layers": [p for p, prec in info.layer_precisions.items() if prec != "int8"]}
        features = latency_features(session.nemo, 10.0, int(backend.card["sample_rate"]))
        timings = time_in_blocks({name: (lambda r=runner: r(features)) for name, runner in runners.items()},
                                 3, args.runs, 3)
        del runners
    base_ms = 1000 * statistics.median(timings["full INT8"])
    for name, row in rows.items():
        row["latency_ms_median"] = 1000 * statistics.median(timings[name])
        row["speed_vs_full_int8"] = base_ms / row["latency_ms_median"]
    result = {"variant": args.variant, "budget": record["budget"], "dev_utterances": len(trials.scorer),
              "nncf_seconds": nncf_seconds, "cpu": detect().model, "threads": trials.threads,
              "latency_audio_s": 10.0, "timed_runs": args.runs, "models": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"accuracy_peer_{args.variant}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.variant}, budget wer_vs_fp32 <= {budget.max_wer_increase:g} on {len(trials.scorer)} dev utterances; "
          f"NNCF took {nncf_seconds:.0f} s", file=sys.stderr)
    print("| model | dev WER vs FP32 | dev WER | INT8 MAC share | latency ms (10 s) | speed vs full INT8 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['dev']['wer_vs_fp32']:.3f} | {row['dev']['wer']:.3f} | "
              f"{row['int8_weight_mac_fraction']:.1%} | {row['latency_ms_median']:.2f} | "
              f"{row['speed_vs_full_int8']:.2f}x |")


if __name__ == "__main__":
    run_stage(main)
