"""Scores a runner on the dev set against NeMo's FP32 model, the way evaluate scores the eval sets.

The FP32 side (features, hypotheses, log-probs) is computed once; each trial then costs one pass of
the candidate over the same utterances. Three numbers per trial:
    wer_vs_fp32  the candidate's WER against the FP32 hypotheses (what quantization alone changed)
    wer          its WER against the references (fp32_wer: FP32's own)
    sqnr_db      logit SQNR: 10 log10(sum fp32^2 / sum (candidate - fp32)^2) over every frame of the
                 log-probs, pooled over the utterances (continuous where a small set's WER is not)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from nemo_ptq.data.prepared import PreparedSet
from nemo_ptq.errors import DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.wer import wer

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DevScore:
    wer_vs_fp32: float
    wer: float
    fp32_wer: float
    sqnr_db: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def every_kth(items: list, limit: int) -> list:
    """At most `limit` items, evenly spread over the list (deterministic)."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


class DevScorer:
    def __init__(self, dev_set: PreparedSet, fp32: Runner, vocabulary: CtcVocabulary, feature_dim: int,
                 max_utterances: int):
        utterances = every_kth(dev_set.utterances(), max_utterances)
        if not utterances:
            raise DataError(f"{dev_set.folder} has no utterances: add sentences or voices to dev_set in params.yaml")
        self.vocabulary = vocabulary
        self.ids = [utt.id for utt in utterances]
        self.references = [utt.text_norm for utt in utterances]
        self.features = []
        for utt in utterances:
            features = utt.features()
            if features.ndim != 2 or features.shape[0] != feature_dim:
                raise DataError(f"{utt.features_path} has shape {features.shape}, expected [{feature_dim}, frames]: "
                                "the dev set was made for another model; rerun dvc repro prepare-dev")
            self.features.append(features[None].astype(np.float32))
        self.fp32_log_probs = [np.asarray(fp32(f), dtype=np.float64) for f in self.features]
        self.fp32_hypotheses = [vocabulary.transcript(lp) for lp in self.fp32_log_probs]
        self.fp32_wer = wer(self.references, self.fp32_hypotheses)

    def __len__(self) -> int:
        return len(self.features)

    def score(self, runner: Runner) -> DevScore:
        hypotheses, signal, noise = [], 0.0, 0.0
        for features, reference in zip(self.features, self.fp32_log_probs):
            log_probs = np.asarray(runner(features), dtype=np.float64)
            hypotheses.append(self.vocabulary.transcript(log_probs))
            frames = min(log_probs.shape[1], reference.shape[1])  # equal for every backend we have; be safe
            signal += float(np.sum(reference[:, :frames] ** 2))
            noise += float(np.sum((log_probs[:, :frames] - reference[:, :frames]) ** 2))
        sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise)
        return DevScore(wer_vs_fp32=wer(self.fp32_hypotheses, hypotheses), wer=wer(self.references, hypotheses),
                        fp32_wer=self.fp32_wer, sqnr_db=sqnr)
