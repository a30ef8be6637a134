"""Small non-QuartzNet NeMo CTC models (Citrinet, Conformer-CTC) built in code, with random
weights and a tiny SentencePiece tokenizer: they check that the export-based backends handle
any NeMo CTC model (squeeze-excite, strided residuals, attention, LayerNorm, BPE vocabulary).
Their shapes follow NVIDIA's published configs, scaled down to run in tests in seconds.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_ptq.models.architectures import preprocessor_config

TOKENIZER_TEXT = (
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "a stitch in time saves nine",
    "speech recognition on a small computer",
    "quantization keeps the words but shrinks the model",
    "every conv layer runs in eight bits",
)


def train_tokenizer(out_dir: Path, vocab_size: int = 48, lines: tuple[str, ...] = TOKENIZER_TEXT) -> Path:
    """A SentencePiece BPE tokenizer trained on a few lines, in the folder layout NeMo expects."""
    import sentencepiece

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "text.txt"
    text.write_text("\n".join(lines) + "\n")
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")  # NeMo registers it as an artifact
    return out_dir


def _model_config(encoder: dict, feat_out: int, tokenizer_dir: Path, features: int) -> DictConfig:
    preprocessor = {**preprocessor_config(), "features": features}
    return OmegaConf.create({
        "sample_rate": 16000,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": preprocessor,
        "encoder": encoder,
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": feat_out, "num_classes": -1, "vocabulary": [],
        },
        "train_ds": None, "validation_ds": None, "test_ds": None, "optim": None,
    })


# Kernel widths of the blocks in each of Citrinet's three mega-blocks (the first block of each has
# stride 2); the full list is the Citrinet paper's, the test default keeps two blocks per mega-block.
CITRINET_KERNELS = ((11, 13, 15, 17, 19, 21), (13, 15, 17, 19, 21, 23, 25), (25, 27, 29, 31, 33, 35, 37, 39))
TEST_CITRINET_KERNELS = ((11, 13), (15, 17), (19, 21))


def citrinet_config(tokenizer_dir: Path, filters: int = 64, features: int = 80, repeat: int = 2,
                    kernels: tuple[tuple[int, ...], ...] = TEST_CITRINET_KERNELS,
                    epilog_filters: int | None = None) -> DictConfig:
    """Citrinet layout: prolog, three mega-blocks with squeeze-excite and a stride-2 first block
    (8x subsampling), epilog; `residual_mode: stride_add` as in NeMo's Citrinet configs."""

    def block(kernel: int, stride: int = 1, repeat: int = repeat, residual: bool = True, width: int = filters) -> dict:
        return {
            "filters": width, "repeat": repeat, "kernel": [kernel], "stride": [stride], "dilation": [1],
            "dropout": 0.0, "residual": residual, "separable": True, "se": True, "se_context_size": -1,
            "residual_mode": "stride_add", "stride_last": True,
        }

    blocks = [block(5, repeat=1, residual=False)]
    for mega_block in kernels:
        blocks += [block(mega_block[0], stride=2)] + [block(kernel) for kernel in mega_block[1:]]
    epilog = epilog_filters or filters
    blocks.append(block(41, repeat=1, residual=False, width=epilog))
    encoder = {
        "_target_": "nemo.collections.asr.modules.ConvASREncoder",
        "feat_in": features, "activation": "relu", "conv_mask": True, "jasper": blocks,
    }
    return _model_config(encoder, epilog, tokenizer_dir, features)


def conformer_config(tokenizer_dir: Path, d_model: int = 64, layers: int = 2, features: int = 80, heads: int = 2,
                     conv_kernel: int = 9, ff_expansion: int = 2) -> DictConfig:
    """Conformer-CTC: striding subsampling (4x), relative-position attention, conv module."""
    encoder = {
        "_target_": "nemo.collections.asr.modules.ConformerEncoder",
        "feat_in": features, "feat_out": -1, "n_layers": layers, "d_model": d_model,
        "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": d_model,
        "ff_expansion_factor": ff_expansion, "self_attention_model": "rel_pos", "n_heads": heads,
        "conv_kernel_size": conv_kernel,
        "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0,
    }
    return _model_config(encoder, d_model, tokenizer_dir, features)


def published_size_config(name: str, tokenizer_dir: Path) -> DictConfig:
    """Encoders at the size of NVIDIA's published checkpoints (random weights, this module's small
    tokenizer: the decoder is smaller than a 256/1024-token one, the encoder is what costs time).
    citrinet_256: 256 filters, 5 sub-blocks per block, the paper's 21 blocks, 640-wide epilog.
    conformer_ctc_small: d_model 176, 16 layers, 4 heads, conv kernel 31, feed-forward x4."""
    if name == "citrinet_256":
        return citrinet_config(tokenizer_dir, filters=256, repeat=5, kernels=CITRINET_KERNELS, epilog_filters=640)
    if name == "conformer_ctc_small":
        return conformer_config(tokenizer_dir, d_model=176, layers=16, heads=4, conv_kernel=31, ff_expansion=4)
    raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(PUBLISHED_SIZES)}")


PUBLISHED_SIZES = ("citrinet_256", "conformer_ctc_small")


def build_bpe_ctc(cfg: DictConfig, seed: int = 0):
    """An `EncDecCTCModelBPE` with random weights."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE

    torch.manual_seed(seed)
    return EncDecCTCModelBPE(cfg=cfg).eval()
