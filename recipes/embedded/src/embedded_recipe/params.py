"""recipes/embedded/params.yaml as validated dataclasses (an unknown key is an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nemo_ptq.config import check_choices, parse_dataclass
from nemo_ptq.errors import ConfigError
from nemo_ptq.models.architectures import ARCHITECTURES


@dataclass(frozen=True)
class ManifestSource:
    name: str
    manifest: str
    include_prefix: str = ""  # keep only rows whose audio path, as written, starts with this
    synthetic: bool = False  # TTS speech: counted as synthetic and not speed-perturbed
    coding: str = ""  # lossy coding the audio went through (the model card lists it), "" if none


@dataclass(frozen=True)
class RealParams:
    sets: list = field(default_factory=list)  # of ManifestSource
    speed_perturb: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if any(not 0.5 <= float(f) <= 2.0 or float(f) == 1.0 for f in self.speed_perturb):
            raise ValueError("speed_perturb factors must be in [0.5, 2] and not 1.0")


@dataclass(frozen=True)
class KokoroParams:
    sentences: str
    sentence_words: list = field(default_factory=lambda: [6, 25])
    train_clips: int = 700
    speed_range: list = field(default_factory=lambda: [0.85, 1.2])
    blend_probability: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.sentence_words) != 2 or len(self.speed_range) != 2:
            raise ValueError("sentence_words and speed_range are [low, high] pairs")
        if self.train_clips < 0 or not 0 <= self.blend_probability <= 1:
            raise ValueError("train_clips must be >= 0 and blend_probability in [0, 1]")


@dataclass(frozen=True)
class EspeakParams:
    voices: list = field(default_factory=list)
    train_clips: int = 0
    speed_range: list = field(default_factory=lambda: [0.85, 1.15])
    seed: int = 0

    def __post_init__(self) -> None:
        if any("klatt" in voice for voice in self.voices):
            raise ValueError("klatt variants are reserved for evaluation (the pipeline evaluates on en-us+klatt2)")


@dataclass(frozen=True)
class HeldOutParams:
    test_other: ManifestSource
    kokoro_voices: list
    kokoro_clips_per_voice: int = 20
    espeak_voices: list = field(default_factory=list)
    sentence_files: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.kokoro_voices) < 2:
            raise ValueError("hold out at least two Kokoro voices")


PRECISIONS = ("auto", "bf16", "fp32")
OPTIMIZERS = ("adamw", "novograd")


@dataclass(frozen=True)
class TrainParams:
    architecture: str = "quartznet_5x5_half"
    dropout: float = 0.0
    spec_augment: bool = True
    # Weights to start from when checkpoint_dir holds no last.ckpt: a .nemo or a checkpoint of this
    # loop (relative to the repository root), or "" for random initialization.
    init_from: str = ""
    # Resumable checkpoints (last.ckpt, best.ckpt), relative to the repository root: committed, so
    # that the next session resumes where this one stopped.
    checkpoint_dir: str = "recipes/embedded/checkpoint"
    max_duration_s: float = 18.0
    batch_seconds: float = 64.0  # padded audio per training batch (batches are duration-bucketed)
    batch_size: int = 16  # validation and evaluation batches
    val_clips_per_source: int = 15
    max_steps: int = 30000  # length of the LR schedule; training ends there
    # Steps where the LR schedule starts again (warmup, then a cosine to the next restart or
    # max_steps): a finished campaign can go on without a jump to the middle of a longer cosine.
    lr_restarts: list = field(default_factory=list)
    optimizer: str = "adamw"
    lr: float = 0.001
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.001
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    gradient_clip: float = 0.0
    precision: str = "auto"  # auto: bf16 autocast where the CPU has AVX512_BF16/AMX, else fp32
    threads: int = 2
    seed: int = 0
    val_every_steps: int = 500  # validation WER (for the curve and the best checkpoint)
    checkpoint_minutes: float = 5.0  # how often last.ckpt is refreshed (for resuming)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
        check_choices(self, {"precision": PRECISIONS, "optimizer": OPTIMIZERS})
        if self.batch_seconds < self.max_duration_s:
            raise ValueError("batch_seconds must be at least max_duration_s")
        if min(self.max_steps, self.batch_size, self.val_every_steps, self.threads) < 1:
            raise ValueError("max_steps, batch_size, val_every_steps and threads must be positive")
        if list(self.lr_restarts) != sorted(set(self.lr_restarts)) or any(
                not 0 < r < self.max_steps for r in self.lr_restarts):
            raise ValueError(f"lr_restarts must be increasing steps between 0 and max_steps ({self.max_steps}), "
                             f"got {self.lr_restarts}")


@dataclass(frozen=True)
class ExportParams:
    model: str = "data/embedded/model.nemo"
    card_json: str = "data/embedded/model_card.json"
    card_markdown: str = "data/embedded/MODEL_CARD.md"


@dataclass(frozen=True)
class RecipeParams:
    work_dir: str
    real: RealParams
    kokoro: KokoroParams
    espeak: EspeakParams
    heldout: HeldOutParams
    train: TrainParams
    export: ExportParams

    def __post_init__(self) -> None:
        shared = set(self.espeak.voices) & set(self.heldout.espeak_voices)
        if shared:
            raise ConfigError(f"espeak.voices {sorted(shared)} are held out for evaluation; remove them")

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser()


def load_recipe_params(path: Path) -> RecipeParams:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the recipe from the repository root")
    raw = yaml.safe_load(path.read_text()) or {}
    params = parse_dataclass(RecipeParams, raw, where=str(path))
    sets = [parse_dataclass(ManifestSource, s, where=f"real.sets[{i}]") for i, s in enumerate(params.real.sets)]
    real = RealParams(sets=sets, speed_perturb=[float(f) for f in params.real.speed_perturb])
    return RecipeParams(params.work_dir, real, params.kokoro, params.espeak, params.heldout, params.train,
                        params.export)
