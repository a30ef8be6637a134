"""Log-mel features computed once per training clip and kept, so that epochs skip the front end.

NeMo's preprocessor normalizes each utterance over its own frames, so a clip's features do not
depend on the batch it lands in: computing them alone and zero-padding later gives the batch NeMo
would have built (padding frames are zero after normalization there too). Only the dither
(1e-5 white noise) is not redrawn per epoch. SpecAugment stays per batch (see loop.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

from embedded_recipe.audio import read_16k

_CHAR_IDS = {char: index for index, char in enumerate(QUARTZNET_VOCABULARY)}
CACHE_FORMAT = 1


def tokenize(text: str) -> list[int]:
    """Character ids of a normalized transcript (space, a-z, apostrophe)."""
    try:
        return [_CHAR_IDS[char] for char in text]
    except KeyError as err:
        raise ValueError(f"character {err.args[0]!r} of {text!r} is not in the model's vocabulary") from None


@dataclass
class FeatureSet:
    """Features [64, frames] (fp16) and token ids of each clip of one manifest."""

    features: list[torch.Tensor]
    tokens: list[torch.Tensor]
    texts: list[str]

    @property
    def frames(self) -> list[int]:
        return [f.shape[1] for f in self.features]

    def __len__(self) -> int:
        return len(self.features)


def manifest_digest(rows: list[dict], preprocessor_cfg: dict) -> str:
    """What the cache depends on: every clip's path, duration and text, and the front end's settings."""
    payload = json.dumps([CACHE_FORMAT, preprocessor_cfg,
                          [(r["audio_filepath"], r["duration"], r["text"]) for r in rows]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.inference_mode()
def compute_features(rows: list[dict], preprocessor, desc: str = "features") -> FeatureSet:
    preprocessor.eval()  # no dither: the cached value is the noiseless one
    features, tokens = [], []
    for row in tqdm(rows, desc=desc, unit="clip", mininterval=10):
        audio = torch.from_numpy(read_16k(Path(row["audio_filepath"])))[None]
        feats, length = preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
        features.append(feats[0, :, : int(length[0])].to(torch.float16).clone())
        tokens.append(torch.tensor(tokenize(row["text"]), dtype=torch.int32))
    return FeatureSet(features, tokens, [row["text"] for row in rows])


def load_or_compute(rows: list[dict], preprocessor, preprocessor_cfg: dict, cache: Path, desc: str) -> FeatureSet:
    """The cached features of `rows`, recomputed (and the file replaced) when any clip or setting changed."""
    digest = manifest_digest(rows, preprocessor_cfg)
    cache = Path(cache)
    if cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored.get("digest") == digest:
            return FeatureSet(stored["features"], stored["tokens"], stored["texts"])
    feature_set = compute_features(rows, preprocessor, desc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    torch.save({"digest": digest, "features": feature_set.features, "tokens": feature_set.tokens,
                "texts": feature_set.texts}, partial)
    partial.replace(cache)
    return feature_set


def collate(feature_set: FeatureSet, indices: list[int]) -> tuple[torch.Tensor, ...]:
    """(features [B, 64, T] fp32, frame lengths, padded targets, target lengths) for one batch."""
    feats = [feature_set.features[i] for i in indices]
    toks = [feature_set.tokens[i] for i in indices]
    lengths = torch.tensor([f.shape[1] for f in feats])
    batch = torch.zeros(len(feats), feats[0].shape[0], int(lengths.max()))
    for row, f in enumerate(feats):
        batch[row, :, : f.shape[1]] = f
    target_lengths = torch.tensor([len(t) for t in toks])
    targets = torch.zeros(len(toks), max(1, int(target_lengths.max())), dtype=torch.long)
    for row, t in enumerate(toks):
        targets[row, : len(t)] = t
    return batch, lengths, targets, target_lengths
