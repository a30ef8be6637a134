"""The speed cost of the float layers: the searched artifact against the variant's full INT8, timed
in one process in alternating blocks (medians of one run, as evaluate times variants against FP32)."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nemo_ptq.evaluation.fp32 import latency_features
from nemo_ptq.evaluation.latency import time_in_blocks

AUDIO_S = 10.0
WARMUP_RUNS, TIMED_RUNS, ROUNDS = 3, 15, 3


def speed_against_full_int8(session, artifact_dir: Path, float_layers: Sequence[str]) -> dict:
    trials = session.trials
    features = latency_features(session.nemo, AUDIO_S, int(trials.backend.card["sample_rate"]))
    chosen = trials.with_float_layers(float_layers).load(Path(artifact_dir), trials.threads)
    with tempfile.TemporaryDirectory(prefix="nemo_ptq_full_int8_") as tmp:
        full = trials.build([], Path(tmp)).load(Path(tmp), trials.threads)
        timings = time_in_blocks({"full_int8": lambda: full(features), "searched": lambda: chosen(features)},
                                 WARMUP_RUNS, TIMED_RUNS, ROUNDS)
        del full
    full_ms, chosen_ms = (1000 * statistics.median(timings[name]) for name in ("full_int8", "searched"))
    return {"audio_s": AUDIO_S, "threads": trials.threads, "latency_ms_full_int8": full_ms,
            "latency_ms": chosen_ms, "speed_vs_full_int8": full_ms / chosen_ms}
