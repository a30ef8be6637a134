"""What the sensitivity and search stages share: the variant's backend, FP32 models, dev scorer and trials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_ptq.accuracy.config import SensitivityParams
from nemo_ptq.accuracy.dev import DevScorer
from nemo_ptq.accuracy.trials import Trials
from nemo_ptq.backends import backend_for_variant
from nemo_ptq.data.prepared import PreparedData
from nemo_ptq.errors import DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.fp32 import NemoEagerRunner, load_fp32
from nemo_ptq.models.card import read_card
from nemo_ptq.models.fp32 import load_fp32 as load_fused


@dataclass
class Session:
    trials: Trials
    nemo: Any  # NeMo's own FP32 model: the dev reference and the latency input's preprocessor
    table: dict  # the FP32 model's layer table (`nemo_ptq.models.layers`)


def open_session(variant: str, params_path: Path, params: SensitivityParams, model_dir: Path, fused_dir: Path,
                 dev_dir: Path, calibration_dir: Path) -> Session:
    import torch

    torch.set_num_threads(params.threads)  # the FP32 reference passes; each trial's runtime sets its own
    backend = backend_for_variant(variant, params_path, model_dir)
    card = read_card(model_dir)
    dev = PreparedData.load(dev_dir)
    if dev.feature_dim != int(card["feature_dim"]):
        raise DataError(f"{dev_dir} has {dev.feature_dim}-dim features but the model expects {card['feature_dim']}: "
                        "rerun dvc repro prepare-dev")
    nemo = load_fp32(model_dir)
    scorer = DevScorer(dev.dev_set, NemoEagerRunner(nemo), CtcVocabulary.from_card(card), dev.feature_dim,
                       params.max_utterances)
    fused = load_fused(fused_dir, model_dir)
    trials = Trials(backend, fused, calibration_dir, scorer, params.threads)
    return Session(trials, nemo, backend.layer_table(fused))
