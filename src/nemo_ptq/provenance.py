"""What a metrics file was measured on: the model file and the eval sets, by content hash.

evaluate records it in every metrics file; report shows a row only if its record equals what
data/model and data/prepared hold now, so a table never mixes models or eval sets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nemo_ptq.data.audio import sha256_file
from nemo_ptq.data.prepared import MANIFEST, PreparedData, PreparedSet
from nemo_ptq.errors import DataError


def model_sha256(model_file: Path) -> str:
    """Of the .nemo that the stages load (data/model/model.nemo)."""
    if not Path(model_file).is_file():
        raise DataError(f"{model_file} is missing: run dvc repro fetch-pretrained")
    return sha256_file(Path(model_file))


def set_sha256(prepared_set: PreparedSet) -> str:
    """Of the manifest and every prepared audio file, in manifest order; features follow from
    the audio and the model, which has its own hash."""
    utterances = prepared_set.utterances()  # a missing manifest is a DataError here
    digest = hashlib.sha256(sha256_file(prepared_set.folder / MANIFEST).encode())
    for utt in utterances:
        if not utt.audio_path.is_file():
            raise DataError(f"{utt.audio_path} is missing: rerun the prepare stage (dvc repro prepare)")
        digest.update(sha256_file(utt.audio_path).encode())
    return digest.hexdigest()


def eval_sets(prepared: PreparedData) -> list[dict]:
    """[{name, kind, sha256}] per eval set, in params.yaml order. A list, so `dvc metrics show`
    keeps these hashes out of its table."""
    return [{"name": s.name, "kind": s.kind, "sha256": set_sha256(s)} for s in prepared.eval_sets]
