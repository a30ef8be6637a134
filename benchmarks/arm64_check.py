"""ARM64 artifacts checked on this x86 machine: each variant's artifact (data/quantized/<variant>)
runs on a few eval utterances here, through its backend's `load`, and under qemu user-mode
emulation in an aarch64 Python (`nemo_ptq.arm64`); the greedy transcripts and log-probs are
compared. Each side's agreement with the FP32 model (data/fused) is written beside it, to tell a
broken ARM artifact from kernels that round differently. Needs the pipeline's outputs for those
variants (dvc repro quantize@<variant>) and the emulation environment (bash scripts/arm64_env.sh).
Emulated timings are not speeds: none is written.

    python benchmarks/arm64_check.py --variants qnnpack ort_int8_arm64 --utterances 8
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from nemo_ptq.cli import run_stage

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["qnnpack", "ort_int8_arm64"])
    parser.add_argument("--utterances", type=int, default=8, help="eval utterances, spread over the pooled sets")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/arm64_check.json"))
    args = parser.parse_args()
    if args.utterances < 1:
        parser.error("--utterances must be at least 1")

    from nemo_ptq.arm64 import Emulator, compare, run_emulated
    from nemo_ptq.backends import get_backend
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.errors import DataError
    from nemo_ptq.evaluation.decoding import CtcVocabulary
    from nemo_ptq.evaluation.evaluate import variant_entry
    from nemo_ptq.evaluation.sysinfo import system_info
    from nemo_ptq.evaluation.throughput import select_utterances
    from nemo_ptq.models.card import read_card
    from nemo_ptq.models.fp32 import load_fp32
    from nemo_ptq.params import load_section

    emulator = Emulator.find()
    card = read_card(Path("data/model"))
    vocabulary = CtcVocabulary.from_card(card)
    utterances = select_utterances(PreparedData.load(Path("data/prepared")).eval_sets, args.utterances)
    features = [utt.features() for utt in utterances]
    ids = [utt.id for utt in utterances]
    fp32 = load_fp32(Path("data/fused"), Path("data/model"))
    with torch.inference_mode():
        fp32_log_probs = [fp32(torch.from_numpy(feats)[None]).numpy() for feats in features]

    def versus_fp32(log_probs: list) -> dict:
        agreement = compare(fp32_log_probs, log_probs, vocabulary.transcript, ids)
        return {key: agreement[key] for key in ("identical_transcripts", "frame_argmax_agreement")}

    variants = load_section("variants", args.params)
    results, arm_system = {}, None
    for name in args.variants:
        backend = get_backend(name, variant_entry(variants, name), card)
        artifact = Path("data/quantized") / name
        if not artifact.is_dir():
            raise DataError(f"{artifact} is missing: run dvc repro quantize@{name} first")
        runner = backend.load(artifact, threads=1)
        reference = [runner(feats[None]) for feats in features]
        with tempfile.TemporaryDirectory() as tmp:
            emulated, arm_system = run_emulated(emulator, backend.name, artifact.resolve(), features, Path(tmp))
        results[name] = {"backend": backend.name, "config": backend.config_payload(),
                         **compare(reference, emulated, vocabulary.transcript, ids),
                         "versus_fp32": {"x86": versus_fp32(reference), "arm64": versus_fp32(emulated)}}
        print(f"{name}: {results[name]['identical_transcripts']}/{len(features)} identical transcripts, "
              f"max |log-prob difference| {results[name]['max_abs_log_prob_difference']:.4g}, "
              f"frame argmax agreement {results[name]['frame_argmax_agreement']:.4f} (with FP32: x86 "
              f"{results[name]['versus_fp32']['x86']['frame_argmax_agreement']:.4f}, arm64 "
              f"{results[name]['versus_fp32']['arm64']['frame_argmax_agreement']:.4f})")
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "note": "the same artifact on this x86 machine (the backend's load) and on aarch64 under qemu user-mode "
                "emulation; emulated timings are not speeds, so none is reported",
        "utterances": ids,
        "x86": system_info(threads=1),
        "arm64": {**emulator.describe(), "system": arm_system},
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_stage(main)
