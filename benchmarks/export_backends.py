"""Latency of the eager onednn and export-based backends against NeMo's FP32 eager forward, in one process.

Random-weight QuartzNet (default 15x5) rewritten to FusedCTC, or a published-size Citrinet-256 or
Conformer-CTC small (`--arch citrinet_256 | conformer_ctc_small`, NeMo's own modules with masking
off; a variant that fails on a model is reported as failed); every variant is calibrated on
random features (speed and coverage only: accuracy needs a trained model and real speech),
quantized into a temporary folder, loaded with the given threads and timed on one input of
`--frames` feature frames (1000 = 10 s), with the evaluate stage's timing
(`time_in_blocks`): the timed runs are split into rounds that sweep over all variants in blocks,
so that load from other processes on the machine hits every variant alike; medians and
interquartile ranges are reported.

    python benchmarks/export_backends.py --arch quartznet_15x5 --runs 15 --out bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nemo_ptq.cli import quiet_environment
from nemo_ptq.evaluation.latency import time_in_blocks
from nemo_ptq import cpu as cpus

VARIANTS = {
    "Eager INT8 onednn (histogram)": {"backend": "eager", "engine": "onednn"},
    "ORT FP32": {"backend": "ort", "precision": "fp32"},
    "ORT INT8 (avx512_vnni, minmax)": {"backend": "ort", "preset": "avx512_vnni"},
    "ORT INT8 (avx512_vnni, minmax, padding masked)": {"backend": "ort", "preset": "avx512_vnni", "mask_padding": True},
    "ORT INT8 (avx512_vnni, minmax, attention MatMuls too)": {
        "backend": "ort", "preset": "avx512_vnni", "attention_matmuls": True},
    "ORT INT8 quantize_static defaults": {"backend": "ort", "preset": "ort_defaults"},
    "PT2E INT8 (X86InductorQuantizer, compiled per 2 s length bucket, masked)": {"backend": "pt2e"},
    "PT2E INT8 (compiled with dynamic shapes)": {"backend": "pt2e", "shapes": "dynamic"},
    "PT2E INT8 (compiled for this length only)": {"backend": "pt2e", "shapes": "per_length"},
    "OpenVINO FP32 IR, bf16 inference": {"backend": "ov", "precision": "fp32", "inference_precision": "bf16"},
    "OpenVINO FP32 IR, f32 inference": {"backend": "ov", "precision": "fp32", "inference_precision": "f32"},
    "OpenVINO INT8 (NNCF, convert_model, f32 hint)": {"backend": "ov", "precision": "int8"},
    "OpenVINO INT8 nncf defaults (read_model, default hint)": {
        "backend": "ov", "precision": "int8", "loader": "read_model", "inference_precision": "plugin_default"},
}

# Conformer: the ORT preset quantizes weight layers only (its residual adds cost accuracy, README).
ARCH_OVERRIDES = {
    "conformer_ctc_small": {label: {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"]} for label in (
        "ORT INT8 (avx512_vnni, minmax)", "ORT INT8 (avx512_vnni, minmax, attention MatMuls too)")},
}


def build(arch: str, work: Path):
    """(NeMo model, the module the backends quantize, model card) for a QuartzNet or a
    published-size Citrinet/Conformer; non-QuartzNet models have no eager rewrite."""
    from nemo_ptq.models.architectures_other import PUBLISHED_SIZES
    from nemo_ptq.models.loading import ModelSource, describe

    if arch in PUBLISHED_SIZES:
        from nemo_ptq.models.architectures_other import build_bpe_ctc, published_size_config, train_tokenizer
        from nemo_ptq.models.fp32 import NemoCTC

        model = build_bpe_ctc(published_size_config(arch, train_tokenizer(work / "tokenizer")))
        quantizable = NemoCTC(model).eval()
    else:
        from nemo_ptq.models.architectures import build_quartznet
        from nemo_ptq.models.fused import rewrite

        model = build_quartznet(arch)
        quantizable = rewrite(model)
    return model, quantizable, describe(model, ModelSource("arch", arch)).to_json()


def prepare_runners(fused, card, work: Path, threads: int, calibration: list[np.ndarray], only: list[str],
                    overrides: dict):
    from nemo_ptq.backends import get_backend

    runners, infos = {}, {}
    for label, entry in VARIANTS.items():
        if only and not any(word in label for word in only):
            continue
        entry = {**entry, **overrides.get(label, {})}
        if entry.get("precision", "int8") == "int8":
            entry["calibration"] = {"num_utterances": len(calibration), "seed": 0}
        start = time.perf_counter()
        try:
            backend = get_backend(entry["backend"], entry, card)
            backend.calibrate(fused, iter(calibration), work / label / "cal")
            backend.quantize(fused, work / label / "cal", work / label / "q")
            runners[label] = backend.load(work / label / "q", threads)
            runners[label](calibration[0][None])  # compiling backends fail here, not in the timing
        except Exception as error:  # a variant that fails on this model is a result, not a crash
            runners.pop(label, None)
            reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            infos[label] = {"failed": f"{type(error).__name__}: {reason[:200]}"}
            print(f"failed: {label}: {infos[label]['failed']}", flush=True)
            continue
        build_s = time.perf_counter() - start
        info = backend.describe(work / label / "q")
        infos[label] = {"build_s": round(build_s, 1), "size_mb": round(info.size_bytes / 1e6, 1),
                        "size_bytes": info.size_bytes,
                        "int8_weight_layers": round(info.int8_weight_layer_fraction, 3),
                        "int8_weight_macs": round(info.int8_weight_mac_fraction, 3),
                        "notes": info.notes}
        print(f"ready: {label} ({build_s:.0f} s)", flush=True)
    return runners, infos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="quartznet_15x5")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="sweeps over the variants (runs are split)")
    parser.add_argument("--calibration-utterances", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=[], help="keep variants whose label contains a word")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    quiet_environment()
    torch.set_num_threads(args.threads)

    from nemo_ptq.evaluation.fp32 import NemoEagerRunner

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, quantizable, card = build(args.arch, Path(tmp))
        fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        calibration = [rng.standard_normal((card["feature_dim"], 500)).astype(np.float32)
                       for _ in range(args.calibration_utterances)]
        features = rng.standard_normal((1, card["feature_dim"], args.frames)).astype(np.float32)
        runners, infos = prepare_runners(quantizable, card, Path(tmp), args.threads, calibration, args.only,
                                         ARCH_OVERRIDES.get(args.arch, {}))
        runners = {"NeMo FP32 eager": NemoEagerRunner(model), **runners}  # the evaluate stage's FP32 runner
        calls = {label: (lambda run=run: run(features)) for label, run in runners.items()}
        times = {label: [1000 * t for t in seconds]
                 for label, seconds in time_in_blocks(calls, args.warmup, args.runs, args.rounds).items()}

    rows = []
    for label, samples in times.items():
        q1, median, q3 = statistics.quantiles(samples, n=4)
        rows.append({"variant": label, "median_ms": round(median, 1), "iqr_ms": round(q3 - q1, 1),
                     "min_ms": round(min(samples), 1), **infos.get(label, {}),
                     "samples_ms": [round(t, 2) for t in samples]})
    rows += [{"variant": label, **info} for label, info in infos.items() if "failed" in info]
    nemo_ms = rows[0]["median_ms"]
    cpu = cpus.detect()
    print(f"\n{args.arch}, {args.frames} frames, {args.threads} threads, {len(next(iter(times.values())))} runs in "
          f"{args.rounds} rounds, {args.warmup} warm-up runs each and one untimed run per block, "
          f"{cpu.model} ({cpu.profile}: {' '.join(cpu.isa)}), "
          f"FP32 weights {fp32_bytes / 1e6:.1f} MB\n")
    print("| variant | median ms | IQR ms | vs NeMo FP32 | INT8 weight layers | INT8 weight MACs | size MB | × FP32 size |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "failed" in row:
            print(f"| {row['variant']} | failed: {row['failed']} | | | | | | |")
            continue
        ratio = f"{row['size_bytes'] / fp32_bytes:.3f}" if "size_bytes" in row else "-"
        print(f"| {row['variant']} | {row['median_ms']} | {row['iqr_ms']} | {nemo_ms / row['median_ms']:.1f}× | "
              f"{row.get('int8_weight_layers', '-')} | {row.get('int8_weight_macs', '-')} | {row.get('size_mb', '-')} | {ratio} |")
    if args.out:
        args.out.write_text(json.dumps({"arch": args.arch, "frames": args.frames, "threads": args.threads,
                                        "cpu": dataclasses.asdict(cpu),
                                        "runs": args.runs, "fp32_weight_bytes": fp32_bytes, "rows": rows},
                                       indent=1) + "\n")

if __name__ == "__main__":
    main()
