"""Server throughput (RTFx at several batch sizes, and concurrent streams) of NeMo's FP32 model and
the export-based backends on a random-weight architecture, with the evaluate stage's measurement
(`nemo_ptq.evaluation.throughput`).

The utterances are random features (speed only: accuracy needs a trained model and real speech)
of seeded lengths spread evenly over --min-s .. --max-s seconds; the artifacts are built as in
`export_backends.py` (calibrated on random features, in a temporary folder).

    python benchmarks/throughput.py --arch quartznet_15x5 --only "ORT INT8 (avx" "ORT FP32" --out tp.json
"""

from __future__ import annotations

import argparse
import json
import runpy
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from nemo_ptq import cpu as cpus
from nemo_ptq.cli import quiet_environment

HERE = Path(__file__).resolve().parent


def write_utterances(folder: Path, feature_dim: int, count: int, min_s: float, max_s: float):
    from nemo_ptq.data.prepared import Utterance

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    utterances = []
    for i, seconds in enumerate(rng.permutation(np.linspace(min_s, max_s, count))):
        path = folder / f"u{i}.npy"
        np.save(path, rng.standard_normal((feature_dim, int(seconds * 100))).astype(np.float32))
        utterances.append(Utterance(f"u{i}", path, path, float(seconds), "", ""))
    return utterances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="quartznet_15x5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--min-s", type=float, default=2.0)
    parser.add_argument("--max-s", type=float, default=15.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--streams", type=int, nargs="*", default=[2])
    parser.add_argument("--timed-passes", type=int, default=3)
    parser.add_argument("--calibration-utterances", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=[], help="keep variants whose label contains a word")
    parser.add_argument("--skip-nemo", action="store_true", help="leave out NeMo's FP32 model (slow on big models)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    quiet_environment()
    torch.set_num_threads(args.threads)

    from nemo_ptq.backends import get_backend
    from nemo_ptq.evaluation.decoding import CtcVocabulary
    from nemo_ptq.evaluation.fp32 import NemoEagerRunner
    from nemo_ptq.evaluation.throughput import RunnerSpec, measure_batches, measure_streams, unmasked
    from nemo_ptq.params import ThroughputParams

    exporting = runpy.run_path(str(HERE / "export_backends.py"))
    params = ThroughputParams(batch_sizes=tuple(args.batch_sizes), streams=tuple(args.streams),
                              timed_passes=args.timed_passes)
    rng = np.random.default_rng(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, quantizable, card = exporting["build"](args.arch, work)
        model_dir = work / "model"
        model_dir.mkdir()
        model.save_to(str(model_dir / "model.nemo"))
        (model_dir / "card.json").write_text(json.dumps(card))
        vocabulary = CtcVocabulary.from_card(card)
        utterances = write_utterances(work / "utterances", card["feature_dim"], args.utterances, args.min_s,
                                      args.max_s)
        features = [np.load(u.features_path) for u in utterances]
        durations = [u.duration for u in utterances]
        calibration = [rng.standard_normal((card["feature_dim"], 500)).astype(np.float32)
                       for _ in range(args.calibration_utterances)]
        runners, infos = exporting["prepare_runners"](quantizable, card, work, args.threads, calibration, args.only,
                                                      exporting["ARCH_OVERRIDES"].get(args.arch, {}))
        fp32 = NemoEagerRunner(model)
        measured = {} if args.skip_nemo else {
            "NeMo FP32 eager": (fp32, fp32.batch, RunnerSpec("fp32", None, model_dir, None))}
        for label, runner in runners.items():
            entry = {**exporting["VARIANTS"][label], **exporting["ARCH_OVERRIDES"].get(args.arch, {}).get(label, {})}
            if entry.get("precision", "int8") == "int8":
                entry["calibration"] = {"num_utterances": len(calibration), "seed": 0}
            backend = get_backend(entry["backend"], entry, card, model_dir)
            spec = RunnerSpec(entry["backend"], entry, model_dir, work / label / "q")
            measured[label] = (runner, backend.load_batch(work / label / "q", args.threads), spec)
        for label, (runner, run_batch, spec) in measured.items():
            print(f"measuring: {label}", flush=True)
            batches = measure_batches(runner, run_batch or unmasked(runner), features, durations, vocabulary, params)
            streams = {str(n): measure_streams(spec, utterances, n, args.threads) for n in params.streams}
            results[label] = {"padding": "not masked" if run_batch is None else "masked", "batch": batches,
                              "streams": streams}

    cpu = cpus.detect()
    audio_s = sum(durations)
    print(f"\n{args.arch}, {len(utterances)} utterances ({audio_s:.0f} s, {args.min_s}-{args.max_s} s each), "
          f"{args.threads} threads, {cpu.model} ({cpu.profile}); RTFx = audio s / compute s, median of "
          f"{args.timed_passes} passes\n")
    sizes, streams = list(params.batch_sizes), list(params.streams)
    print("| variant | padding | " + " | ".join(f"RTFx b{b}" for b in sizes) + " | "
          + " | ".join(f"RTFx {n} streams" for n in streams) + f" | b{sizes[-1]} / b1 | agreement b{sizes[-1]} |")
    print("|---|---|" + "---|" * (len(sizes) + len(streams) + 2))
    for label, result in results.items():
        batch = result["batch"]
        cells = [f"{batch[str(b)]['rtfx']:.0f}" for b in sizes] + [
            f"{result['streams'][str(n)]['rtfx']:.0f}" for n in streams]
        ratio = batch[str(sizes[-1])]["rtfx"] / batch["1"]["rtfx"]
        print(f"| {label} | {result['padding']} | " + " | ".join(cells)
              + f" | {ratio:.2f}× | {batch[str(sizes[-1])]['agreement']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({
            "arch": args.arch, "threads": args.threads, "utterances": len(utterances), "audio_s": audio_s,
            "lengths_s": [args.min_s, args.max_s], "params": asdict(params), "cpu": asdict(cpu), "builds": infos,
            "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
