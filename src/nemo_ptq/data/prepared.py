"""The layout that the `prepare` stage writes and every later stage reads.

    <prepared>/summary.json
        {"sample_rate": 16000, "feature_dim": 64, "features_from": what computed the features,
         "sets": [{"name", "kind": "real"|"synthetic", "role": "eval"|"calibration"|"dev",
                   "utterances", "seconds"}, ...]}
    <prepared>/<set name>/manifest.jsonl
        one JSON object per utterance: {"id", "audio_filepath" (relative to the set folder),
        "duration", "text" (as given), "text_norm" (normalized reference), "source" (where the
        audio came from)}
    <prepared>/<set name>/audio/<id>.wav       mono 16-bit PCM at the model's sample rate
    <prepared>/<set name>/features/<id>.npy    float32 [feature_dim, frames]: the model's own
                                               preprocessor output (`nemo_ptq.data.features`),
                                               trimmed to the valid frames
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nemo_ptq.errors import DataError

SUMMARY = "summary.json"
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Utterance:
    id: str
    audio_path: Path
    features_path: Path
    duration: float
    text: str
    text_norm: str

    def features(self) -> np.ndarray:
        return np.load(self.features_path)


@dataclass(frozen=True)
class PreparedSet:
    name: str
    kind: str
    role: str
    folder: Path

    def utterances(self) -> list[Utterance]:
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise DataError(f"{manifest} is missing: rerun the prepare stage (dvc repro prepare)")
        items = []
        with manifest.open() as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                items.append(
                    Utterance(
                        id=row["id"],
                        audio_path=self.folder / row["audio_filepath"],
                        features_path=self.folder / "features" / f"{row['id']}.npy",
                        duration=float(row["duration"]),
                        text=row["text"],
                        text_norm=row["text_norm"],
                    )
                )
        return items


@dataclass(frozen=True)
class PreparedData:
    root: Path
    sample_rate: int
    feature_dim: int
    sets: tuple[PreparedSet, ...]

    @classmethod
    def load(cls, root: Path) -> "PreparedData":
        root = Path(root)
        summary_path = root / SUMMARY
        if not summary_path.is_file():
            raise DataError(f"{summary_path} is missing: run the prepare stage first (dvc repro prepare)")
        summary = json.loads(summary_path.read_text())
        sets = tuple(
            PreparedSet(name=s["name"], kind=s["kind"], role=s["role"], folder=root / s["name"])
            for s in summary["sets"]
        )
        return cls(root=root, sample_rate=summary["sample_rate"], feature_dim=summary["feature_dim"], sets=sets)

    @property
    def eval_sets(self) -> list[PreparedSet]:
        return [s for s in self.sets if s.role == "eval"]

    @property
    def calibration_set(self) -> PreparedSet:
        found = [s for s in self.sets if s.role == "calibration"]
        if len(found) != 1:
            raise DataError(f"{self.root / SUMMARY} lists {len(found)} calibration sets, expected 1")
        return found[0]

    @property
    def dev_set(self) -> PreparedSet:
        found = [s for s in self.sets if s.role == "dev"]
        if len(found) != 1:
            raise DataError(f"{self.root / SUMMARY} lists {len(found)} dev sets, expected 1: "
                            "run the prepare-dev stage (dvc repro prepare-dev)")
        return found[0]

    def iter_eval(self) -> Iterator[tuple[PreparedSet, Utterance]]:
        for prepared_set in self.eval_sets:
            for utt in prepared_set.utterances():
                yield prepared_set, utt
