"""The FP32 model that calibrate and quantize start from.

For QuartzNet/Jasper it is the fused rewrite (`FusedCTC`, BatchNorm folded, quantizable in eager
mode). Any other NeMo CTC model (Citrinet, Conformer-CTC, ...) is used as NeMo builds it, wrapped
as `NemoCTC` with masking switched off the way NeMo's own export does; only export-based backends
can quantize it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nemo_ptq.models.fused import FusedCTC

KIND_FILE = "fp32_kind.json"


def nemo_log_probs(model: Any, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """NeMo's own FP32 forward from features: [B, feature_dim, frames], each row's first `lengths`
    frames valid (default: all) -> log-probs [B, frames', vocabulary + 1]. What
    `EncDecCTCModel.forward` computes from processed features; the one FP32 forward that evaluate,
    the fuse check and the benchmarks run."""
    if lengths is None:
        lengths = torch.full((features.shape[0],), features.shape[-1], dtype=torch.int64)
    encoded, _ = model.encoder(audio_signal=features, length=lengths)
    return model.decoder(encoder_output=encoded)


class NemoCTC(nn.Module):
    """`nemo_log_probs` of a copy of the model with masking switched off, as NeMo's export does;
    the model it came from keeps NeMo's masking."""

    def __init__(self, model: Any):
        super().__init__()
        self.encoder = copy.deepcopy(model.encoder)
        self.decoder = copy.deepcopy(model.decoder)
        for module in (self.encoder, self.decoder):
            if hasattr(module, "_prepare_for_export"):
                module._prepare_for_export(noreplace=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nemo_log_probs(self, features)


def write_kind(out_dir: Path, kind: str, reason: str = "") -> None:
    (Path(out_dir) / KIND_FILE).write_text(json.dumps({"kind": kind, "reason": reason}, indent=2) + "\n")


def load_fp32(fused_dir: Path, model_dir: Path) -> nn.Module:
    """The fuse stage's FP32 model: FusedCTC, or NemoCTC around the fetched .nemo."""
    kind = json.loads((Path(fused_dir) / KIND_FILE).read_text())["kind"]
    if kind == "fused":
        return FusedCTC.load(fused_dir)
    from nemo_ptq.models.loading import load_nemo

    return NemoCTC(load_nemo(Path(model_dir) / "model.nemo")).eval()
