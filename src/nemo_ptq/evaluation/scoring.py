"""Accuracy per eval set, per kind of speech (real / synthetic) and over everything.

Every group gets WER and CER against the references and, for quantized variants, WER against
the FP32 model's own hypotheses ("fidelity": how much the quantization alone changed the output).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from nemo_ptq.evaluation.transcripts import Transcript
from nemo_ptq.evaluation.wer import cer, wer


def score_group(rows: list[Transcript], fp32: Mapping[str, str] | None = None) -> dict:
    references = [row.reference for row in rows]
    hypotheses = [row.hypothesis for row in rows]
    scores = {
        "wer": wer(references, hypotheses),
        "cer": cer(references, hypotheses),
        "utterances": len(rows),
        "hours": sum(row.duration for row in rows) / 3600.0,
    }
    if fp32 is not None:
        scores["wer_vs_fp32"] = wer([fp32[row.id] for row in rows], hypotheses)
    return scores


def score_sets(
    transcripts: Mapping[str, list[Transcript]],
    kinds: Mapping[str, str],
    fp32: Mapping[str, Mapping[str, str]] | None = None,
) -> dict:
    """{"overall": {...}, "sets": {name: {"kind", ...}}, "kinds": {kind: {...}}}"""

    def pooled(names: Iterable[str]) -> dict:
        # Ids are unique within a set only, so pooled rows are keyed "set/id".
        names = list(names)
        rows = [replace(row, id=f"{name}/{row.id}") for name in names for row in transcripts[name]]
        reference = None if fp32 is None else {f"{n}/{i}": h for n in names for i, h in fp32[n].items()}
        return score_group(rows, reference)

    sets = {
        name: {"kind": kinds[name], **score_group(rows, None if fp32 is None else fp32[name])}
        for name, rows in transcripts.items()
    }
    by_kind = {
        kind: pooled(name for name in transcripts if kinds[name] == kind)
        for kind in sorted(set(kinds[name] for name in transcripts))
    }
    return {"overall": pooled(transcripts), "sets": sets, "kinds": by_kind}
