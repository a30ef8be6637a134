"""Cross-layer equalization on and off (issue 11, item 5), per variant, on the dev set.

For each variant named, calibrates twice on the same calibration utterances (`equalize: none` and
`equalize: cross_layer`, everything else as in params.yaml), converts, and scores both on the dev
set against NeMo's FP32 model (WER vs FP32, WER, logit SQNR). The eval sets are not touched. Not
timed: both artifacts are the same graph with other weights (the INT8 coverage is printed to show
it), and two sessions of one runtime in one process slow each other unevenly (measured: ORT 20-50 %
apart in-process, within noise in separate processes). Needs `dvc repro fuse prepare-dev`
(data/model, data/fused, data/prepared, data/dev). Writes benchmarks/results/equalization.json and
prints a markdown table.

    python benchmarks/equalization.py --variants ort_int8 ov_int8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from nemo_ptq.cli import run_stage

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = ("none", "cross_layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ort_int8", "ov_int8"])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from nemo_ptq.accuracy.config import SensitivityParams
    from nemo_ptq.accuracy.setup import open_session
    from nemo_ptq.accuracy.trials import Trials
    from nemo_ptq.backends.calibration import select_utterances
    from nemo_ptq.cpu import detect
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.errors import DataError
    from nemo_ptq.params import load_config

    for folder in ("data/model", "data/fused", "data/prepared", "data/dev"):
        if not Path(folder).is_dir():
            raise DataError(f"{folder} is missing: run dvc repro fuse prepare-dev")
    params = load_config(SensitivityParams, "sensitivity", args.params)
    pool = PreparedData.load(Path("data/prepared")).calibration_set.utterances()
    result = {"cpu": detect().model, "threads": params.threads, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="equalization_") as tmp:
        for variant in args.variants:
            session = open_session(variant, args.params, params, Path("data/model"), Path("data/fused"),
                                   Path("data/dev"), Path(tmp) / "unused")
            base = session.trials.backend
            chosen = select_utterances(pool, base.calibration_sample())
            rows = {}
            for option in OPTIONS:
                backend = type(base)(dataclasses.replace(base.config, equalize=option), base.card, variant,
                                     base.model_dir)
                calibration, artifact = Path(tmp) / f"{variant}_{option}_cal", Path(tmp) / f"{variant}_{option}"
                backend.calibrate(session.trials.fp32, (utt.features() for utt in chosen), calibration)
                trials = Trials(backend, session.trials.fp32, calibration, session.trials.scorer, params.threads)
                trials.build([], artifact)
                runner = backend.load(artifact, params.threads)
                rows[option] = {"dev": trials.scorer.score(runner).as_dict(),
                                "int8_weight_mac_fraction": backend.describe(artifact).int8_weight_mac_fraction}
                del runner
                print(f"{variant} equalize={option}: {rows[option]}", file=sys.stderr)
            result["variants"][variant] = {"calibration_utterances": len(chosen),
                                           "dev_utterances": len(session.trials.scorer), "equalize": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "equalization.json").write_text(json.dumps(result, indent=1) + "\n")
    print("| variant | equalize | dev WER vs FP32 | dev WER | logit SQNR dB | INT8 share of MACs |")
    print("|---|---|---|---|---|---|")
    for variant, entry in result["variants"].items():
        for option, row in entry["equalize"].items():
            dev = row["dev"]
            print(f"| {variant} | {option} | {dev['wer_vs_fp32']:.3f} | {dev['wer']:.3f} | {dev['sqnr_db']:.2f} | "
                  f"{row['int8_weight_mac_fraction']:.1%} |")


if __name__ == "__main__":
    run_stage(main)
