"""Server throughput of one model: RTFx at several batch sizes, and with concurrent streams.

RTFx is seconds of audio per second of compute (the HF Open ASR Leaderboard's figure, 1 / RTF),
on the eval utterances' prepared features: feature extraction is not timed, as for latency.

Batches: the utterances sorted by length (longest first) and cut into batches of b, each
zero-padded to its longest row, so little is padding. A model that masks padding (a
`BatchRunner`: `Backend.load_batch`, NeMo's own encoder) is told each row's length; any other gets
the padded batch as it is, and its convolutions carry the padding into the last valid frames.
Either way each row is cut to the output frames it has at batch 1 and decoded, and `agreement` is
the share of utterances whose transcript equals batch 1's: what batching costs in accuracy. A
conv stack's context is wide (QuartzNet: thousands of frames), so without masking padding changes
most rows; `rtfx_best` therefore counts only batch sizes that keep the transcripts.

Streams: N processes (spawned), each loading the model with threads // N intra-op threads, each
transcribing every N-th utterance at batch 1, all starting together; RTFx is the audio over the
wall time from the first start to the last end, latency the per-utterance compute time.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nemo_ptq.backends.base import BatchRunner, Runner
from nemo_ptq.data.prepared import PreparedSet, Utterance
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.params import ThroughputParams

MASKED = "masked"  # the model is told each row's length and masks the rest
UNMASKED = "not masked"  # the model sees the zero padding as input
FAITHFUL = 0.99  # agreement with batch 1 above which a batch size counts as giving the same transcripts
STREAM_START_TIMEOUT_S = 1800  # loading and compiling in every stream process must end by then


@dataclass(frozen=True)
class RunnerSpec:
    """How a stream process loads the same model: NeMo's FP32 (entry None) or a variant's artifact."""

    variant: str
    entry: Mapping[str, Any] | None
    model_dir: Path
    artifact_dir: Path | None

    def load(self, threads: int) -> Runner:
        from nemo_ptq.backends import get_backend
        from nemo_ptq.evaluation.fp32 import NemoEagerRunner, load_fp32
        from nemo_ptq.models.card import read_card

        if self.entry is None:
            return NemoEagerRunner(load_fp32(self.model_dir))
        backend = get_backend(self.variant, dict(self.entry), read_card(self.model_dir), Path(self.model_dir))
        return backend.load(Path(self.artifact_dir), threads)


def select_utterances(sets: Sequence[PreparedSet], max_utterances: int) -> list[Utterance]:
    """The eval utterances, pooled; past `max_utterances`, every k-th, so the lengths stay representative."""
    pooled = [utt for prepared_set in sets for utt in prepared_set.utterances()]
    if len(pooled) <= max_utterances:
        return pooled
    return [pooled[i] for i in np.linspace(0, len(pooled) - 1, max_utterances).round().astype(int)]


def length_sorted_batches(frames: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, longest first (ties in input order), cut into batches of batch_size."""
    order = sorted(range(len(frames)), key=lambda i: -frames[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def pad_batch(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """[feature_dim, frames] arrays -> zero-padded [B, feature_dim, longest] and the lengths [B]."""
    lengths = np.array([f.shape[-1] for f in features], dtype=np.int64)
    batch = np.zeros((len(features), features[0].shape[0], int(lengths.max())), dtype=np.float32)
    for row, f in enumerate(features):
        batch[row, :, : f.shape[-1]] = f
    return batch, lengths


def unmasked(runner: Runner) -> BatchRunner:
    """A batch runner for a model without a lengths input: it runs the padded batch as it is."""
    return lambda features, lengths: runner(features)


def measure_batches(
    runner: Runner, run_batch: BatchRunner, features: Sequence[np.ndarray], durations: Sequence[float],
    vocabulary: CtcVocabulary, params: ThroughputParams, progress: bool = True,
    limit: tuple[int, str] | None = None,
) -> dict[str, dict]:
    """Per batch size: RTFx (audio / median timed pass), agreement with batch 1, padding share.
    `runner` (batch 1, unpadded) gives the reference each row is cut to and compared with. Batch
    sizes above the backend's `limit` are not run: their entry holds the reason, `skipped`."""
    reference = [runner(f[None])[0] for f in features]
    reference_text = [vocabulary.transcript(log_probs) for log_probs in reference]
    frames = [f.shape[-1] for f in features]
    audio_s = float(sum(durations))
    results = {}
    for batch_size in params.batch_sizes:
        if limit is not None and batch_size > limit[0]:
            results[str(batch_size)] = {"skipped": limit[1]}
            continue
        batches = length_sorted_batches(frames, batch_size)
        padded = [pad_batch([features[i] for i in batch]) for batch in batches]
        identical, diff = 0, 0.0
        for batch, (x, lengths) in zip(batches, padded):  # untimed: warms up (compiles shapes) and checks
            log_probs = run_batch(x, lengths)
            for row, i in enumerate(batch):
                valid = log_probs[row, : reference[i].shape[0]]
                identical += vocabulary.transcript(valid) == reference_text[i]
                diff = max(diff, float(np.abs(valid - reference[i]).max()))
        seconds = []
        for _ in tqdm(range(params.timed_passes), desc=f"throughput batch {batch_size}", unit="pass",
                      disable=not progress, file=sys.stderr):
            start = time.perf_counter()
            for x, lengths in padded:
                run_batch(x, lengths)
            seconds.append(time.perf_counter() - start)
        results[str(batch_size)] = {
            "rtfx": audio_s / float(np.median(seconds)),
            "agreement": identical / len(features),
            "identical_transcripts": identical,
            "max_abs_logprob_diff": diff,
            "padding_fraction": 1.0 - sum(frames) / sum(x.shape[0] * x.shape[-1] for x, _ in padded),
            "batches": len(batches),
            "pass_seconds": [round(s, 4) for s in seconds],
        }
    return results


def measure_streams(spec: RunnerSpec, utterances: Sequence[Utterance], streams: int, threads: int) -> dict:
    """`streams` processes at threads // streams threads each, every one transcribing its share
    (every N-th utterance) at batch 1 from a common start: aggregate RTFx and per-utterance latency."""
    shares = [list(utterances[k::streams]) for k in range(streams)]
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's runtime thread pools
    barrier = context.Barrier(streams)
    per_stream = max(1, threads // streams)
    with concurrent.futures.ProcessPoolExecutor(streams, mp_context=context, initializer=_init_stream,
                                                initargs=(barrier,)) as pool:
        futures = [pool.submit(_stream, spec, per_stream, [u.features_path for u in share]) for share in shares]
        results = [future.result() for future in futures]
    starts, ends, latencies = zip(*results)
    wall = max(ends) - min(starts)
    ms = 1000.0 * np.concatenate([np.asarray(times) for times in latencies])
    return {
        "rtfx": float(sum(u.duration for u in utterances)) / wall,
        "threads_per_stream": per_stream,
        "latency_ms_median": float(np.median(ms)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "wall_seconds": round(wall, 4),
    }


_start_together = None  # the stream processes' shared barrier, set by _init_stream


def _init_stream(barrier: Any) -> None:
    global _start_together
    _start_together = barrier


def _stream(spec: RunnerSpec, threads: int, feature_paths: Sequence[Path]) -> tuple[float, float, list[float]]:
    """One stream process: load, warm up on every utterance (compiling each shape), wait for the
    others, then time its utterances; returns its start, end (one clock for all processes) and latencies."""
    from nemo_ptq.cli import quiet_environment

    quiet_environment()
    import torch

    try:
        torch.set_num_threads(threads)
        runner = spec.load(threads)
        features = [np.load(path)[None].astype(np.float32) for path in feature_paths]
        for f in features:
            runner(f)
    except BaseException:
        _start_together.abort()  # the other streams stop waiting and fail too
        raise
    _start_together.wait(timeout=STREAM_START_TIMEOUT_S)
    start = time.monotonic()
    latencies = []
    for f in features:
        begin = time.perf_counter()
        runner(f)
        latencies.append(time.perf_counter() - begin)
    return start, time.monotonic(), latencies


def measure_throughput(
    spec: RunnerSpec, runner: Runner, run_batch: BatchRunner | None, sets: Sequence[PreparedSet],
    vocabulary: CtcVocabulary, params: ThroughputParams, threads: int, progress: bool = True,
    batch_limit: tuple[int, str] | None = None,
) -> dict:
    """The `throughput` section of the metrics: batches (in this process, `threads` threads) and streams."""
    utterances = select_utterances(sets, params.max_utterances)
    features = [utt.features().astype(np.float32) for utt in utterances]
    durations = [utt.duration for utt in utterances]
    batches = measure_batches(runner, run_batch or unmasked(runner), features, durations, vocabulary, params,
                              progress, batch_limit)
    streams = {}
    for n in tqdm(params.streams, desc="throughput streams", unit="setting", disable=not progress, file=sys.stderr):
        streams[str(n)] = measure_streams(spec, utterances, n, threads)
    return {
        "padding": UNMASKED if run_batch is None else MASKED,
        "utterances": len(utterances),
        "audio_s": float(sum(durations)),
        "threads": threads,
        "batch": batches,
        "streams": streams,
    }


def headline(throughput: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level figures: rtfx_batch<b> and rtfx_streams<n> as measured; batch_agreement at
    the largest batch size measured (a backend's `batch_limit` skips larger ones); and rtfx_best, the highest RTFx of a setting that keeps batch 1's
    transcripts (a batch size whose agreement is at least FAITHFUL, or streams, which run batch 1),
    with rtfx_best_setting naming it."""
    batches = {b: result for b, result in throughput["batch"].items() if "skipped" not in result}
    streams = throughput["streams"]
    figures: dict[str, Any] = {f"rtfx_batch{b}": result["rtfx"] for b, result in batches.items()}
    figures.update({f"rtfx_streams{n}": result["rtfx"] for n, result in streams.items()})
    figures["batch_agreement"] = batches[max(batches, key=int)]["agreement"]
    faithful = {f"batch {b}": result["rtfx"] for b, result in batches.items() if result["agreement"] >= FAITHFUL}
    faithful.update({f"{n} streams": result["rtfx"] for n, result in streams.items()})
    if faithful:
        best = max(faithful, key=faithful.get)
        figures.update(rtfx_best=faithful[best], rtfx_best_setting=best)
    return figures
