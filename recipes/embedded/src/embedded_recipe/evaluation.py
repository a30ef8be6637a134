"""WER / CER of a model on a manifest, with the same text normalization as the training targets."""

from __future__ import annotations

import time
from pathlib import Path

import jiwer

from embedded_recipe.manifests import read_manifest
from embedded_recipe.text import normalize_text


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus-level WER and CER (lowercase, punctuation stripped, apostrophes kept)."""
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return {"wer": round(jiwer.wer(refs, hyps), 4), "cer": round(jiwer.cer(refs, hyps), 4),
            "utterances": len(refs), "words": sum(len(r.split()) for r in refs)}


def transcribe(model, audio_files: list[str], batch_size: int) -> list[str]:
    results = model.transcribe(audio_files, batch_size=batch_size, verbose=False)
    if isinstance(results, tuple):  # some NeMo versions return (best, all) hypotheses
        results = results[0]
    return [r.text if hasattr(r, "text") else str(r) for r in results]


def evaluate_manifest(model, manifest: Path, batch_size: int, examples: int = 3) -> dict:
    rows = read_manifest(manifest)
    started = time.monotonic()
    hypotheses = transcribe(model, [row["audio_filepath"] for row in rows], batch_size)
    result = error_rates([row["text"] for row in rows], hypotheses)
    result["hours"] = round(sum(row["duration"] for row in rows) / 3600, 3)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["examples"] = [{"ref": normalize_text(row["text"]), "hyp": normalize_text(hyp)}
                          for row, hyp in list(zip(rows, hypotheses))[:examples]]
    return result
