"""How far quantized variants stray from the FP32 model on a development manifest of your own,
without touching the pipeline's evaluation sets: for choosing presets and calibration settings on
data you do not report on.

Starts from the pipeline's outputs (data/model, data/fused, data/prepared: `dvc repro fuse` first)
and calibrates each variant as the calibrate stage does (same pool, same selection by
num_utterances and seed), in a temporary folder. Prints, per variant, the WER of its greedy
transcripts against the FP32 model's (what evaluate reports as wer_vs_fp32) and the share of
feature frames whose argmax token agrees with FP32.

    python benchmarks/fidelity.py --manifest dev.jsonl --variants ort_int8 onednn \
        --entry 'ort_8bit_logits={"backend": "ort", "float_logits": false}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nemo_ptq.cli import quiet_environment, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="NeMo manifest of development audio")
    parser.add_argument("--variants", nargs="*", default=[], help="variant names from params.yaml")
    parser.add_argument("--entry", action="append", default=[], metavar="NAME=JSON",
                        help="an extra variant given as its params.yaml entry in JSON")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet_environment()
    torch.set_num_threads(args.threads)

    from nemo_ptq.backends import get_backend
    from nemo_ptq.backends.calibration import select_utterances
    from nemo_ptq.data.audio import load_audio
    from nemo_ptq.data.features import model_feature_extractor
    from nemo_ptq.data.manifest import read_manifest
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.evaluation.decoding import CtcVocabulary
    from nemo_ptq.evaluation.wer import wer
    from nemo_ptq.models.card import read_card
    from nemo_ptq.models.fp32 import load_fp32
    from nemo_ptq.params import load_section

    shipped = load_section("variants", args.params) or {}
    unknown = [name for name in args.variants if name not in shipped]
    if unknown:
        parser.error(f"no variant {', '.join(unknown)} in {args.params}; it has: {', '.join(shipped)}")
    entries = {name: shipped[name] for name in args.variants}
    for item in args.entry:
        name, _, text = item.partition("=")
        try:
            entries[name] = json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"--entry {name}: not JSON ({error.msg}): write NAME='{{\"backend\": \"ort\", ...}}'")
    if not entries:
        parser.error("name at least one variant (--variants) or give one with --entry")
    if not args.manifest.is_file():
        parser.error(f"manifest {args.manifest} not found")
    card = read_card(Path("data/model"))
    vocabulary = CtcVocabulary.from_card(card)
    fp32 = load_fp32(Path("data/fused"), Path("data/model"))
    extract = model_feature_extractor(Path("data/model/model.nemo"))  # as prepare computes them
    dev = [extract(load_audio(e.audio_path, sample_rate=extract.sample_rate, max_duration_s=3600.0))
           for e in read_manifest(args.manifest)]
    pool = PreparedData.load(Path("data/prepared")).calibration_set.utterances()
    with torch.inference_mode():
        reference = [fp32(torch.from_numpy(f)[None]).numpy()[0] for f in dev]
    reference_text = [vocabulary.transcript(r) for r in reference]

    print(f"{len(dev)} utterances from {args.manifest}; calibration pool: {len(pool)} utterances\n")
    print("| variant | WER vs FP32 | frame argmax agreement | build s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in entries.items():
            start = time.perf_counter()
            backend = get_backend(name, entry, card)
            chosen = select_utterances(pool, backend.calibration_sample())
            backend.calibrate(fp32, (utt.features() for utt in chosen), Path(tmp) / name / "cal")
            backend.quantize(fp32, Path(tmp) / name / "cal", Path(tmp) / name / "q")
            build_s = time.perf_counter() - start
            run = backend.load(Path(tmp) / name / "q", threads=args.threads)
            outputs = [run(f[None])[0] for f in dev]
            agreement = np.concatenate([o.argmax(-1) == r.argmax(-1) for o, r in zip(outputs, reference)]).mean()
            changed = wer(reference_text, [vocabulary.transcript(o) for o in outputs])
            print(f"| {name} | {changed:.1%} | {agreement:.2%} | {build_s:.0f} |", flush=True)


if __name__ == "__main__":
    run_stage(main)
