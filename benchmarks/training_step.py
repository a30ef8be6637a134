"""Training throughput of the embedded model's step on this CPU, in seconds of audio per second.

Each variant runs the same batches (random speech-length audio, random transcripts at read-speech
character rates) through one full optimizer step: forward, CTC loss, backward, AdamW. Variants:
- `audio`: NeMo's front end per batch (dither, STFT, log-mel, normalization), as the lightning
  recipe ran it, then SpecAugment and the encoder;
- `features`: log-mel features cached once (what recipes/embedded trains from now);
- `+bf16`: the encoder and decoder under `torch.autocast("cpu", bfloat16)` (needs AVX512_BF16/AMX
  to be fast; the CTC loss stays fp32);
- `+nomask`: NeMo's conv masking off (`conv_mask: false`), to price masking.
Rounds rotate over the variants, so load from other processes hits them alike; medians are reported.
Lightning's own overhead is measured by the recipe's training runs, not here.

`--depthwise` times instead one depthwise conv of each kernel size of the model, forward and backward,
as NeMo's Conv1d and as a Conv2d with a 1 x K kernel (the form that PT2E inference uses), fp32 and bf16.

    python benchmarks/training_step.py --arch quartznet_5x5_half --threads 2 --out bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from nemo_ptq.cli import quiet_environment
from nemo_ptq import cpu as cpus

VARIANTS = {
    "audio (NeMo front end per batch), fp32": {"features": False, "bf16": False, "mask": True},
    "cached features, fp32": {"features": True, "bf16": False, "mask": True},
    "cached features, bf16 autocast": {"features": True, "bf16": True, "mask": True},
    "cached features, fp32, no conv mask": {"features": True, "bf16": False, "mask": False},
    "cached features, bf16 autocast, no conv mask": {"features": True, "bf16": True, "mask": False},
}


def build(arch: str, mask: bool):
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import open_dict

    from nemo_ptq.models.architectures import quartznet_config

    cfg = quartznet_config(arch, spec_augment=True)
    with open_dict(cfg):
        cfg.encoder.conv_mask = mask
    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=cfg).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def make_batches(count: int, batch: int, seconds: float, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        durations = seconds * (0.8 + 0.2 * torch.rand(batch, generator=generator))
        samples = (durations * 16000).long()
        audio = 0.05 * torch.randn(batch, int(samples.max()), generator=generator)
        for row, n in enumerate(samples):
            audio[row, n:] = 0
        target_lengths = (durations * 14).long()  # about 14 characters per second of read speech
        targets = torch.randint(1, 28, (batch, int(target_lengths.max())), generator=generator)
        batches.append({"audio": audio, "samples": samples, "targets": targets, "target_lengths": target_lengths,
                        "seconds": float(durations.sum())})
    return batches


def step(model, optimizer, batch: dict, feats, feat_len, bf16: bool, mask: bool) -> None:
    if feats is None:
        feats, feat_len = model.preprocessor(input_signal=batch["audio"], length=batch["samples"])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        feats = model.spec_augmentation(input_spec=feats, length=feat_len)
        encoded, encoded_len = model.encoder(audio_signal=feats, length=feat_len)
        log_probs = model.decoder(encoder_output=encoded)
    if not mask:  # without masking NeMo does not track lengths; the prolog's stride 2 halves them
        encoded_len = (feat_len - 1) // 2 + 1
    loss = model.loss(log_probs=log_probs.float(), targets=batch["targets"], input_lengths=encoded_len,
                      target_lengths=batch["target_lengths"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def depthwise_forms(arch: str, batch: int, frames: int, rounds: int) -> dict:
    from nemo_ptq.models.architectures import ARCHITECTURES, quartznet_encoder_blocks

    shapes = sorted({(b["filters"], b["kernel"][0]) for b in quartznet_encoder_blocks(ARCHITECTURES[arch])
                     if b["separable"]})
    results = {}
    for channels, kernel in shapes:
        conv1d = torch.nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        conv2d = torch.nn.Conv2d(channels, channels, (1, kernel), padding=(0, kernel // 2), groups=channels)
        x1 = torch.randn(batch, channels, frames, requires_grad=True)
        x2 = x1.detach()[:, :, None, :].clone().requires_grad_(True)
        for form, conv, x in (("conv1d", conv1d, x1), ("conv2d_1xk", conv2d, x2)):
            for bf16 in (False, True):
                times = []
                for _ in range(rounds + 1):
                    started = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        out = conv(x)
                    out.float().sum().backward()
                    times.append(time.perf_counter() - started)
                key = f"{channels}ch k{kernel} {form} {'bf16' if bf16 else 'fp32'}"
                results[key] = round(1000 * statistics.median(times[1:]), 2)
                print(f"  {key:32s} {results[key]:8.2f} ms forward+backward")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="quartznet_5x5_half")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=8.0, help="longest clip of a batch")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="substrings of variant names to run")
    parser.add_argument("--depthwise", action="store_true", help="time depthwise conv forms instead of steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    quiet_environment()
    torch.set_num_threads(args.threads)
    if args.depthwise:
        print(f"depthwise convs of {args.arch}, batch {args.batch}, {int(args.seconds * 50)} frames after stride 2")
        result = depthwise_forms(args.arch, args.batch, int(args.seconds * 50), args.rounds * args.steps)
        if args.out:
            args.out.write_text(json.dumps({"cpu": dataclasses.asdict(cpus.detect()), "threads": args.threads, "ms": result}, indent=2) + "\n")
        return
    variants = {name: v for name, v in VARIANTS.items() if not args.only or any(s in name for s in args.only)}
    if not cpus.detect().native_bf16:
        print("this CPU has no native bf16 (AVX512_BF16/AMX): bf16 autocast is emulated and slow")
    models = {name: build(args.arch, v["mask"]) for name, v in variants.items()}
    batches = make_batches(args.steps, args.batch, args.seconds)
    features = {}
    with torch.no_grad():
        any_model = next(iter(models.values()))[0]
        for index, batch in enumerate(batches):
            features[index] = any_model.preprocessor(input_signal=batch["audio"], length=batch["samples"])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, variant in variants.items():
            model, optimizer = models[name]
            for index, batch in enumerate(batches):
                feats, feat_len = features[index] if variant["features"] else (None, None)
                started = time.perf_counter()
                step(model, optimizer, batch, feats, feat_len, variant["bf16"], variant["mask"])
                if round_index:
                    times[name].append(batch["seconds"] / (time.perf_counter() - started))
    base = statistics.median(next(iter(times.values())))
    result = {"arch": args.arch, "threads": args.threads, "batch": args.batch, "longest_clip_s": args.seconds,
              "cpu": dataclasses.asdict(cpus.detect()), "torch": torch.__version__, "audio_seconds_per_second": {}}
    print(f"{args.arch}, {args.threads} threads, batches of {args.batch} x <= {args.seconds} s, {cpus.detect().model}")
    for name, values in times.items():
        median = statistics.median(values)
        result["audio_seconds_per_second"][name] = {"median": round(median, 1), "min": round(min(values), 1),
                                                    "max": round(max(values), 1), "vs_first": round(median / base, 2)}
        print(f"  {name:50s} {median:7.1f} audio s/s  ({median / base:.2f}x)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
