"""NeMo model configs for the QuartzNet family, built in code.

NeMo 3.0's wheel ships no example YAML configs, so the configs that users know as
"QuartzNet 15x5" and "QuartzNet 5x5" are written here, following NVIDIA's published
layout (separable JasperBlocks, 64 mel features, 16 kHz, character vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

# NVIDIA QuartzNet's character vocabulary: space, a-z, apostrophe. CTC blank is appended by NeMo.
QUARTZNET_VOCABULARY: tuple[str, ...] = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")

# (filters, kernel) of the five repeated "B" blocks of QuartzNet.
_QUARTZNET_B_BLOCKS: tuple[tuple[int, int], ...] = ((256, 33), (256, 39), (512, 51), (512, 63), (512, 75))


@dataclass(frozen=True)
class QuartzNetShape:
    """The free dimensions of a QuartzNet: blocks per kernel size, sub-blocks, width scale."""

    block_repeats: int = 3  # 3 -> 15 blocks ("15x5"), 1 -> 5 blocks ("5x5")
    sub_blocks: int = 5
    width: float = 1.0  # scales every channel count (0.5 = half width)

    def __post_init__(self) -> None:
        if self.block_repeats < 1 or self.sub_blocks < 1:
            raise ValueError("block_repeats and sub_blocks must be >= 1")
        if not 0.05 <= self.width <= 4.0:
            raise ValueError(f"width must be in [0.05, 4], got {self.width}")


ARCHITECTURES: dict[str, QuartzNetShape] = {
    "quartznet_15x5": QuartzNetShape(block_repeats=3, sub_blocks=5),
    "quartznet_5x5": QuartzNetShape(block_repeats=1, sub_blocks=5),
    "quartznet_5x5_half": QuartzNetShape(block_repeats=1, sub_blocks=5, width=0.5),
    # Small enough for unit tests and the end-to-end test (a few hundred k parameters).
    "quartznet_tiny": QuartzNetShape(block_repeats=1, sub_blocks=2, width=0.125),
}


def _block(filters: int, kernel: int, repeat: int, residual: bool, stride: int = 1, dilation: int = 1,
            separable: bool = True) -> dict:
    return {
        "filters": filters,
        "repeat": repeat,
        "kernel": [kernel],
        "stride": [stride],
        "dilation": [dilation],
        "dropout": 0.0,
        "residual": residual,
        "separable": separable,
    }


def quartznet_encoder_blocks(shape: QuartzNetShape) -> list[dict]:
    """JasperBlock configs: prolog C1, the B blocks, epilog C2..C4 (as in QuartzNet)."""

    def ch(n: int) -> int:
        return max(8, int(round(n * shape.width / 8)) * 8)

    blocks = [_block(ch(256), 33, 1, residual=False, stride=2)]
    for filters, kernel in _QUARTZNET_B_BLOCKS:
        blocks += [_block(ch(filters), kernel, shape.sub_blocks, residual=True) for _ in range(shape.block_repeats)]
    blocks.append(_block(ch(512), 87, 1, residual=False, dilation=2))
    blocks.append(_block(ch(1024), 1, 1, residual=False, separable=False))
    return blocks


def preprocessor_config(sample_rate: int = 16000) -> dict:
    """QuartzNet's feature extractor: 64 log-mel bins, 20 ms window, 10 ms stride, per-feature norm."""
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": sample_rate,
        "normalize": "per_feature",
        "window_size": 0.02,
        "window_stride": 0.01,
        "window": "hann",
        "features": 64,
        "n_fft": 512,
        "frame_splicing": 1,
        "dither": 1e-5,
        "pad_to": 16,
    }


def quartznet_config(name_or_shape: str | QuartzNetShape, *, dropout: float = 0.0,
                     spec_augment: bool = False) -> DictConfig:
    """A complete `EncDecCTCModel` config (no datasets or optimizer: those belong to training)."""
    if isinstance(name_or_shape, str):
        if name_or_shape not in ARCHITECTURES:
            raise KeyError(f"unknown architecture {name_or_shape!r}; choose one of: {', '.join(ARCHITECTURES)}")
        shape = ARCHITECTURES[name_or_shape]
    else:
        shape = name_or_shape
    blocks = quartznet_encoder_blocks(shape)
    for block in blocks[1:-2]:
        block["dropout"] = dropout
    labels = list(QUARTZNET_VOCABULARY)
    cfg: dict = {
        "sample_rate": 16000,
        "labels": labels,
        "preprocessor": preprocessor_config(),
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConvASREncoder",
            "feat_in": 64,
            "activation": "relu",
            "conv_mask": True,
            "jasper": blocks,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": blocks[-1]["filters"],
            "num_classes": len(labels),
            "vocabulary": labels,
        },
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "optim": None,
    }
    if spec_augment:
        cfg["spec_augment"] = {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2,
            "time_masks": 2,
            "freq_width": 15,
            "time_width": 0.05,
        }
    return OmegaConf.create(cfg)


def build_quartznet(name_or_shape: str | QuartzNetShape, *, seed: int = 0, **kwargs):
    """An `EncDecCTCModel` with random weights (for structure and speed, not accuracy)."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModel

    torch.manual_seed(seed)
    model = EncDecCTCModel(cfg=quartznet_config(name_or_shape, **kwargs))
    return model.eval()
