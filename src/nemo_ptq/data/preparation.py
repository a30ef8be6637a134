"""The prepare steps: every configured set -> checked mono audio, references and model features,
in the layout of `nemo_ptq.data.prepared` (the prepare stage: eval and calibration sets; the
prepare-dev stage: the dev set, checked against what prepare wrote).

Cheap checks (manifests, files, sentences, overlap of sources) run before the model is loaded,
so a bad input fails in seconds rather than after feature extraction. References are normalized
for the characters the model can write (from its card; see `nemo_ptq.data.text`), and one
warning line counts those it cannot.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nemo_ptq.data.audio import load_audio, pcm16_to_float, sha256_file, to_pcm16, write_wav
from nemo_ptq.data.config import DataParams, SetSpec
from nemo_ptq.data.disjoint import SetFingerprint, check_disjoint
from nemo_ptq.data.features import FeatureExtractor, model_feature_extractor
from nemo_ptq.data.prepared import MANIFEST, SUMMARY, PreparedData, PreparedSet
from nemo_ptq.data.sources import collect
from nemo_ptq.data.text import model_characters, normalize_text, vocabulary_warning
from nemo_ptq.data.utterance import SourceUtterance
from nemo_ptq.errors import ConfigError, DataError
from nemo_ptq.models.card import read_card


def prepare_data(params: DataParams, model_path: Path, out_dir: Path) -> dict:
    """Write all sets and summary.json under out_dir; returns the summary."""
    roles = [(spec, "eval") for spec in params.eval_sets] + [(params.calibration_set, "calibration")]

    def check(fingerprints: dict[str, SetFingerprint]) -> None:
        check_disjoint(fingerprints[params.calibration_set.name], [fingerprints[s.name] for s in params.eval_sets])

    return _prepare(roles, check, params.max_duration_s, model_path, out_dir)


def prepare_dev(spec: SetSpec, max_duration_s: float, model_path: Path, prepared_root: Path, out_dir: Path) -> dict:
    """The dev set (sensitivity and accuracy budgets tune on it) in the prepared layout, checked
    disjoint from every set that the prepare stage wrote: eval sets and the calibration set."""
    prepared = PreparedData.load(prepared_root)
    if spec.name in {s.name for s in prepared.sets}:
        raise ConfigError(f"dev_set name {spec.name!r} is already a set in {prepared_root}; give it another name")
    others = [_prepared_fingerprint(s) for s in prepared.sets]

    def check(fingerprints: dict[str, SetFingerprint]) -> None:
        check_disjoint(fingerprints[spec.name], others)

    return _prepare([(spec, "dev")], check, max_duration_s, model_path, out_dir)


def _prepare(roles: list[tuple[SetSpec, str]], check: Callable[[dict[str, SetFingerprint]], None],
             max_duration_s: float, model_path: Path, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    card = read_card(Path(model_path).parent)  # fetch-pretrained writes it next to model.nemo
    characters = model_characters(card["vocabulary"], card["tokenizer"])
    with tempfile.TemporaryDirectory(prefix="nemo_ptq_prepare_") as scratch:
        listed = []
        for spec, role in roles:
            scratch_dir = Path(scratch) / spec.name
            scratch_dir.mkdir()
            listed.append((spec, role, collect(spec, scratch_dir)))
        warning = vocabulary_warning((utt.text for _, _, utterances in listed for utt in utterances), characters)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        fingerprints = {spec.name: _source_fingerprint(spec, role, utterances, characters)
                        for spec, role, utterances in listed}
        check(fingerprints)

        extractor = model_feature_extractor(model_path)  # only after the cheap checks: may import NeMo
        sets = [
            _write_set(spec, role, utterances, extractor, max_duration_s, out_dir / spec.name,
                       fingerprints[spec.name], characters)
            for spec, role, utterances in listed
        ]
        check(fingerprints)  # now with the prepared audio's hashes

    summary = {"sample_rate": extractor.sample_rate, "feature_dim": extractor.feature_dim,
               "features_from": extractor.source, "sets": sets}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _source_fingerprint(spec: SetSpec, role: str, utterances: list[SourceUtterance], characters: frozenset[str]
                        ) -> SetFingerprint:
    fingerprint = SetFingerprint(name=spec.name, kind=spec.kind, role=role)
    for utt in utterances:
        text_norm = normalize_text(utt.text, characters)
        if not text_norm:
            raise DataError(f"{utt.origin}: the reference text {utt.text!r} has no word the model can write; "
                            "give the utterance's transcript (numbers as words) or remove it")
        if not utt.audio_path.is_file():
            raise DataError(f"{utt.origin}: audio file {utt.audio_path} not found")
        fingerprint.add(utt.id, source_sha256=sha256_file(utt.audio_path), text_norm=text_norm)
    return fingerprint


def _prepared_fingerprint(prepared_set: PreparedSet) -> SetFingerprint:
    """What a prepared set holds: its WAVs' hashes and normalized references (its sources are gone)."""
    fingerprint = SetFingerprint(name=prepared_set.name, kind=prepared_set.kind, role=prepared_set.role)
    for utt in prepared_set.utterances():
        fingerprint.add(utt.id, prepared_sha256=sha256_file(utt.audio_path), text_norm=utt.text_norm)
    return fingerprint


def _write_set(spec: SetSpec, role: str, utterances: list[SourceUtterance], extractor: FeatureExtractor,
               max_duration_s: float, folder: Path, fingerprint: SetFingerprint, characters: frozenset[str]) -> dict:
    (folder / "audio").mkdir(parents=True)
    (folder / "features").mkdir()
    rate = extractor.sample_rate
    rows = []
    for utt in tqdm(utterances, desc=f"prepare {spec.name}", unit="utt"):
        try:
            pcm = to_pcm16(load_audio(utt.audio_path, sample_rate=rate, max_duration_s=max_duration_s,
                                      downmix=spec.downmix))
            # Features come from the 16-bit samples that are stored, so audio and features agree.
            features = extractor(pcm16_to_float(pcm))
        except DataError as err:
            raise DataError(f"{utt.origin}: {err}") from None
        wav = folder / "audio" / f"{utt.id}.wav"
        write_wav(wav, pcm, rate)
        np.save(folder / "features" / f"{utt.id}.npy", features)
        fingerprint.add(utt.id, prepared_sha256=sha256_file(wav))
        rows.append({
            "id": utt.id,
            "audio_filepath": f"audio/{utt.id}.wav",
            "duration": round(len(pcm) / rate, 6),
            "text": utt.text,
            "text_norm": normalize_text(utt.text, characters),
            "source": utt.source,
        })
    with (folder / MANIFEST).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    seconds = sum(row["duration"] for row in rows)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "role": role,
        "utterances": len(rows),
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600, 4),
        "source": spec.source,
    }
