"""One quantization option at each of its values (issue 11, item 5), per variant, on the dev set.

    python benchmarks/quant_option.py equalize --variants ort_int8 ov_int8
    python benchmarks/quant_option.py bias_correction --variants ov_int8 [--set equalize=cross_layer]

For each variant named, everything as in params.yaml (plus any `--set KEY=VALUE`) but the option,
which takes each of its values: calibrated on the same calibration utterances (once for a convert
option, which every value builds from; once per value otherwise), converted, and scored on the dev
set against NeMo's FP32 model (WER vs FP32, WER, logit SQNR). The eval sets are not touched. Not
timed: the artifacts are the same graph with other weights (the INT8 coverage is printed to show
it), and two sessions of one runtime in one process slow each other unevenly (measured: ORT 20-50 %
apart in-process, within noise in separate processes). Needs `dvc repro fuse prepare-dev`
(data/model, data/fused, data/prepared, data/dev). Writes benchmarks/results/<option>[_<set>].json
and prints a markdown table.
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
VALUES = {"equalize": ("none", "cross_layer"), "bias_correction": ("none", "fast", "full")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("option", choices=list(VALUES))
    parser.add_argument("--variants", nargs="+", default=["ort_int8", "ov_int8"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="other options of every variant, e.g. equalize=cross_layer")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from nemo_ptq.accuracy.config import SensitivityParams
    from nemo_ptq.accuracy.setup import open_session
    from nemo_ptq.accuracy.trials import Trials
    from nemo_ptq.backends.calibration import select_utterances
    from nemo_ptq.cpu import detect
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.errors import ConfigError, DataError
    from nemo_ptq.params import load_config

    for folder in ("data/model", "data/fused", "data/prepared", "data/dev"):
        if not Path(folder).is_dir():
            raise DataError(f"{folder} is missing: run dvc repro fuse prepare-dev")
    fixed = dict(item.split("=", 1) for item in args.set)
    if args.option in fixed:
        raise ConfigError(f"--set {args.option}=... fixes the option being varied; leave it out")
    params = load_config(SensitivityParams, "sensitivity", args.params)
    pool = PreparedData.load(Path("data/prepared")).calibration_set.utterances()
    result = {"cpu": detect().model, "threads": params.threads, "option": args.option, "set": fixed, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="quant_option_") as tmp:
        for variant in args.variants:
            session = open_session(variant, args.params, params, Path("data/model"), Path("data/fused"),
                                   Path("data/dev"), Path(tmp) / "unused")
            base = session.trials.backend
            if args.option not in {f.name for f in dataclasses.fields(base.config)}:
                raise ConfigError(f"variants.{variant}: the {base.name} backend has no option {args.option}")
            chosen = select_utterances(pool, base.calibration_sample())
            convert_option = args.option in base.config.CONVERT_OPTIONS
            rows = {}
            for value in VALUES[args.option]:
                config = dataclasses.replace(base.config, **fixed, **{args.option: value})
                backend = type(base)(config, base.card, variant, base.model_dir)
                calibration = Path(tmp) / f"{variant}_{'shared' if convert_option else value}_cal"
                if not calibration.is_dir():
                    backend.calibrate(session.trials.fp32, (utt.features() for utt in chosen), calibration)
                artifact = Path(tmp) / f"{variant}_{value}"
                trials = Trials(backend, session.trials.fp32, calibration, session.trials.scorer, params.threads)
                trials.build([], artifact)
                runner = backend.load(artifact, params.threads)
                rows[value] = {"dev": trials.scorer.score(runner).as_dict(),
                               "int8_weight_mac_fraction": backend.describe(artifact).int8_weight_mac_fraction}
                del runner
                print(f"{variant} {args.option}={value}: {rows[value]}", file=sys.stderr)
            result["variants"][variant] = {"calibration_utterances": len(chosen), "calibrations": 1 if convert_option
                                           else len(rows), "dev_utterances": len(session.trials.scorer),
                                           args.option: rows}
    RESULTS.mkdir(exist_ok=True)
    name = "_".join([args.option, *(f"{key}-{value}" for key, value in sorted(fixed.items()))])
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"| variant | {args.option} | dev WER vs FP32 | dev WER | logit SQNR dB | INT8 share of MACs |")
    print("|---|---|---|---|---|---|")
    for variant, entry in result["variants"].items():
        for value, row in entry[args.option].items():
            dev = row["dev"]
            print(f"| {variant} | {value} | {dev['wer_vs_fp32']:.3f} | {dev['wer']:.3f} | {dev['sqnr_db']:.2f} | "
                  f"{row['int8_weight_mac_fraction']:.1%} |")


if __name__ == "__main__":
    run_stage(main)
