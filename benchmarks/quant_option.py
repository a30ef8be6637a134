"""One quantization option at each of its values (issue 11, item 5), per variant, on the dev set.

    python benchmarks/quant_option.py equalize --variants ort_int8 ov_int8
    python benchmarks/quant_option.py bias_correction --variants ov_int8 [--set equalize=cross_layer]
    python benchmarks/quant_option.py calibration.per_layer --variants ort_int8

For each variant named, everything as in params.yaml (plus any `--set KEY=VALUE`; a dotted KEY is
a nested option, e.g. calibration.percentile=99.99) but the option, which takes each of its values
(named in VALUES): calibrated on the same calibration utterances (once for a convert option, which
every value builds from; once per value otherwise), converted, and scored on the dev set against
NeMo's FP32 model (WER vs FP32, WER, logit SQNR). The eval sets are not touched. Not timed: the
artifacts are the same graph with other weights (the INT8 coverage is printed to show it), and two
sessions of one runtime in one process slow each other unevenly (measured: ORT 20-50 % apart
in-process, within noise in separate processes). Needs `dvc repro fuse prepare-dev` (data/model,
data/fused, data/prepared, data/dev). Writes benchmarks/results/<option>[_<KEY>-<VALUE>...].json
(dots as underscores) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

from nemo_ptq.cli import run_stage

RESULTS = Path(__file__).resolve().parent / "results"


def separable_groups(fp32) -> dict[str, str]:
    """{"depthwise": regex, "pointwise": regex} matching exactly the FP32 module paths of the
    depthwise convs (groups == channels > 1) and of the 1x1 conv that follows each in its body."""
    modules = dict(fp32.named_modules())
    depthwise = [path for path, m in modules.items() if path.endswith(".conv") and getattr(m, "groups", 1) > 1
                 and m.groups == m.in_channels]
    pointwise = [path for path in (re.sub(r"body\.(\d+)\.conv$", lambda g: f"body.{int(g[1]) + 1}.conv", d)
                                   for d in depthwise) if path in modules]

    def exactly(paths: list[str]) -> str:
        return "^(" + "|".join(re.escape(path) for path in paths) + ")$"

    return {"depthwise": exactly(depthwise), "pointwise": exactly(pointwise)}


VALUES = {  # option -> {name in the results: value, or a function of the FP32 model's separable groups}
    "equalize": {"none": "none", "cross_layer": "cross_layer"},
    "bias_correction": {"none": "none", "fast": "fast", "full": "full"},
    # ort: the inputs of these layers calibrated by percentile or entropy, the rest by the variant's method
    "calibration.per_layer": {
        "none": {}, "depthwise_percentile": lambda g: {g["depthwise"]: "percentile"},
        "pointwise_percentile": lambda g: {g["pointwise"]: "percentile"}, "all_percentile": {".": "percentile"},
        "pointwise_entropy": lambda g: {g["pointwise"]: "entropy"}, "all_entropy": {".": "entropy"}},
}


def replaced(config, key: str, value):
    """`config` with the option `key` (dotted: a nested option) set to `value`."""
    name, _, rest = key.partition(".")
    if name not in {f.name for f in dataclasses.fields(config)}:
        raise ValueError(f"no option {key}")
    return dataclasses.replace(config, **{name: replaced(getattr(config, name), rest, value) if rest else value})


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
    import yaml

    fixed = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
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
            convert_option = args.option in base.config.CONVERT_OPTIONS
            rows = {}
            for label, value in VALUES[args.option].items():
                if callable(value):
                    value = value(separable_groups(session.trials.fp32))
                try:
                    config = base.config
                    for key, fixed_value in [*fixed.items(), (args.option, value)]:
                        config = replaced(config, key, fixed_value)
                except ValueError as err:
                    raise ConfigError(f"variants.{variant} ({base.name} backend): {err}") from None
                backend = type(base)(config, base.card, variant, base.model_dir)
                chosen = select_utterances(pool, backend.calibration_sample())
                calibration = Path(tmp) / f"{variant}_{'shared' if convert_option else label}_cal"
                if not calibration.is_dir():
                    backend.calibrate(session.trials.fp32, (utt.features() for utt in chosen), calibration)
                artifact = Path(tmp) / f"{variant}_{label}"
                trials = Trials(backend, session.trials.fp32, calibration, session.trials.scorer, params.threads)
                trials.build([], artifact)
                runner = backend.load(artifact, params.threads)
                rows[label] = {"value": value, "dev": trials.scorer.score(runner).as_dict(),
                               "int8_weight_mac_fraction": backend.describe(artifact).int8_weight_mac_fraction}
                del runner
                print(f"{variant} {args.option}={label}: {rows[label]}", file=sys.stderr)
            result["variants"][variant] = {"calibration_utterances": len(chosen), "calibrations": 1 if convert_option
                                           else len(rows), "dev_utterances": len(session.trials.scorer),
                                           args.option: rows}
    RESULTS.mkdir(exist_ok=True)
    name = "_".join([args.option, *(f"{key}-{value}" for key, value in sorted(fixed.items()))]).replace(".", "_")
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
