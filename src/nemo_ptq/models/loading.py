"""Getting the FP32 NeMo CTC model: from NGC, Hugging Face, a local .nemo, the embedded model,
or a built-in architecture with random weights; and describing it in a small model card.

Restoring a .nemo runs code (its config names classes that NeMo imports and calls, and its weights
are pickles), so every checkpoint file is hashed first and checked against a pinned sha256, if any,
before it is opened.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_ptq.errors import ModelSourceError, UnsupportedModelError

REPO_ROOT = Path(__file__).resolve().parents[3]
EMBEDDED_MODEL = REPO_ROOT / "data" / "embedded" / "model.nemo"
SOURCE_KINDS = ("embedded", "file:<path.nemo>", "ngc:<name>", "hf:<repo>", "arch:<name>")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # embedded | file | ngc | hf | arch
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSource":
        text = text.strip()
        if text == "embedded":
            return cls("embedded")
        kind, sep, value = text.partition(":")
        if not sep or kind not in {"file", "ngc", "hf", "arch"} or not value.strip():
            raise ModelSourceError(
                f"unknown model source {text!r}; use one of: {', '.join(SOURCE_KINDS)}"
            )
        return cls(kind, value.strip())

    def __str__(self) -> str:
        return self.kind if self.kind == "embedded" else f"{self.kind}:{self.value}"


def load_nemo(path: Path) -> Any:
    """Restore a local .nemo checkpoint on the CPU, with a clear error if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"model file {path} not found: check model.source in params.yaml")
    if not tarfile.is_tarfile(path):
        raise ModelSourceError(f"{path} is not a valid .nemo archive (corrupt or not a NeMo checkpoint)")
    return _restore(path)


def _restore(path: Path) -> Any:
    """ASRModel.restore_from a .nemo file, or a folder holding its unpacked contents (an HF repo)."""
    from nemo.collections.asr.models import ASRModel
    from nemo.core.connectors.save_restore_connector import SaveRestoreConnector

    connector = SaveRestoreConnector()
    if path.is_dir():
        connector.model_extracted_dir = str(path)
    try:
        model = ASRModel.restore_from(str(path), map_location="cpu", save_restore_connector=connector)
    except Exception as err:  # NeMo raises many types for a bad archive
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSourceError(f"could not restore {path}: {first_line}") from None
    return model.eval()


def sha256_of(path: Path) -> str:
    """sha256 of a checkpoint file; of a folder (an unpacked HF repo), sha256 of its `sha256sum`-style
    listing (one "<sha256>  <relative path>" line per file, sorted by path)."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{sha256_of(f)}  {f.relative_to(path).as_posix()}\n"
                          for f in sorted(p for p in path.rglob("*") if p.is_file()))
        return hashlib.sha256(listing.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, pinned: str | None) -> str:
    """The checkpoint's sha256, after checking it against the pinned value (if any)."""
    actual = sha256_of(path)
    if pinned is not None and actual != pinned.lower():
        raise ModelSourceError(
            f"{path} has sha256 {actual}, but model.sha256 pins {pinned.lower()}: restore the pinned file, "
            "or set model.sha256 to the new hash if you trust this one (loading a .nemo runs code)"
        )
    return actual


def _download(kind: str, name: str) -> Path:
    """NeMo's own download into its cache (needs the network); the path of the .nemo (or folder)."""
    from nemo.collections.asr.models import ASRModel

    model_name = name if kind == "ngc" else (name if "/" in name else f"nvidia/{name}")
    try:
        return Path(ASRModel.from_pretrained(model_name=model_name, return_model_file=True))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelSourceError(
            f"could not fetch {kind}:{name} ({reason}); without network access, download the .nemo "
            f"elsewhere and set model.source to file:<path.nemo>"
        ) from None


def _checkpoint_file(source: ModelSource) -> Path:
    """The local checkpoint an embedded/file:/ngc:/hf: source restores from (downloaded for ngc:/hf:)."""
    if source.kind == "embedded":
        if not EMBEDDED_MODEL.is_file():
            raise ModelSourceError(
                f"the embedded model {EMBEDDED_MODEL} is missing from this checkout; "
                "train it with recipes/embedded (see README) or use another model.source"
            )
        return EMBEDDED_MODEL
    if source.kind == "file":
        return Path(os.path.expanduser(source.value))
    return _download(source.kind, source.value)


def fetch(source: ModelSource, pinned_sha256: str | None = None) -> tuple[Any, str | None]:
    """The FP32 NeMo model for a source (a restored `ASRModel` in eval mode on the CPU) and the sha256
    of its checkpoint (None for arch:, which has none). The hash is checked before the file is opened."""
    if source.kind == "arch":
        from nemo_ptq.models.architectures import ARCHITECTURES, build_quartznet

        if pinned_sha256 is not None:
            raise ModelSourceError(f"{source} has no checkpoint file to pin: remove model.sha256")
        if source.value not in ARCHITECTURES:
            raise ModelSourceError(
                f"unknown architecture {source.value!r}; choose one of: {', '.join(ARCHITECTURES)}"
            )
        return build_quartznet(source.value), None
    path = _checkpoint_file(source)
    if not path.exists():
        raise ModelSourceError(f"model file {path} not found: check model.source in params.yaml")
    digest = verify_sha256(path, pinned_sha256)
    # A folder is an HF repo without a .nemo file, which NeMo restores from its unpacked contents.
    return (_restore(path) if path.is_dir() else load_nemo(path)), digest


@dataclass(frozen=True)
class ModelCard:
    source: str
    model_class: str
    encoder: str
    decoder: str
    parameters: int
    vocabulary: list[str]
    blank_id: int
    tokenizer: str  # char | bpe
    sample_rate: int
    feature_dim: int
    subsampling_factor: int
    preprocessor: dict[str, Any]  # feature settings a standalone runtime must reproduce
    trained: bool
    notes: str = ""
    sha256: str | None = None  # of the checkpoint file (see sha256_of); None for arch: sources
    # The preprocessor as an ONNX graph next to model.nemo (`nemo_ptq.models.frontend`), or why not
    frontend: str | None = None
    frontend_unsupported: str = ""

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["class"] = payload.pop("model_class")
        return payload


def describe(model: Any, source: ModelSource, sha256: str | None = None) -> ModelCard:
    """What later stages need to know about the model, read from the model itself."""
    if not hasattr(model, "decoder") or not hasattr(model.decoder, "vocabulary"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a CTC model with a vocabulary; this pipeline quantizes "
            "NeMo CTC models (EncDecCTCModel, EncDecCTCModelBPE, or the CTC head of a hybrid model)"
        )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        vocabulary = [tokenizer.ids_to_tokens([i])[0] for i in range(tokenizer.vocab_size)]
        kind = "bpe"
    else:
        vocabulary = [str(token) for token in model.decoder.vocabulary]
        kind = "char"
    cfg = model.cfg
    trained = source.kind != "arch"
    return ModelCard(
        source=str(source),
        model_class=type(model).__name__,
        encoder=type(model.encoder).__name__,
        decoder=type(model.decoder).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        vocabulary=vocabulary,
        blank_id=len(vocabulary),
        tokenizer=kind,
        sample_rate=int(cfg.preprocessor.get("sample_rate", cfg.get("sample_rate", 16000))),
        feature_dim=int(cfg.preprocessor.get("features", cfg.preprocessor.get("nfilt", 64))),
        subsampling_factor=_subsampling_factor(model),
        preprocessor=_preprocessor_settings(cfg.preprocessor),
        trained=trained,
        notes="" if trained else "random weights from a built-in config: use for speed and size, not WER",
        sha256=sha256,
    )


PREPROCESSOR_KEYS = ("window_size", "window_stride", "window", "n_fft", "features", "normalize", "dither",
                     "preemph", "log", "pad_to", "frame_splicing", "mag_power", "log_zero_guard_type")


def _preprocessor_settings(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg, resolve=True)
    return {key: settings[key] for key in PREPROCESSOR_KEYS if key in settings}


def _subsampling_factor(model: Any) -> int:
    import torch

    encoder = model.encoder
    if hasattr(encoder, "subsampling_factor"):
        return int(encoder.subsampling_factor)
    frames = 320
    with torch.inference_mode():
        feat_in = model.cfg.encoder.feat_in
        _, out_len = encoder(audio_signal=torch.zeros(1, feat_in, frames), length=torch.tensor([frames]))
    return max(1, round(frames / int(out_len[0])))
