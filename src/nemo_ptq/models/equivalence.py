"""Proof that the fused rewrite computes what NeMo computes, on real inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from nemo_ptq.errors import EquivalenceError
from nemo_ptq.models.fp32 import nemo_log_probs
from nemo_ptq.models.fused import FusedCTC


def check_equivalence(model: Any, fused: FusedCTC, utterances: Sequence[Any], tolerance: float) -> dict:
    """Max |log-prob difference| per utterance; raises EquivalenceError above `tolerance`."""
    if not utterances:
        raise EquivalenceError("no evaluation utterances to check the rewrite on")
    worst = {}
    with torch.inference_mode():
        for utt in tqdm(utterances, desc="equivalence", unit="utt"):
            features = torch.from_numpy(utt.features())[None]
            diff = (nemo_log_probs(model, features) - fused(features)).abs().max().item()
            worst[utt.id] = diff
    max_diff = max(worst.values())
    report = {
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "utterances": len(worst),
        "worst_utterance": max(worst, key=worst.get),
    }
    if not max_diff <= tolerance:  # also catches NaN
        raise EquivalenceError(
            f"the fused rewrite differs from NeMo's forward by {max_diff:.3g} (> tolerance {tolerance:g}) "
            f"on utterance {report['worst_utterance']}: the model has a layer the rewrite mishandles"
        )
    return report
