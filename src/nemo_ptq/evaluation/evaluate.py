"""One evaluation run: transcribe every eval set, score it, time it, and assemble the metrics.

`variant == "fp32"` evaluates NeMo's own FP32 eager model; any other name loads that variant's
quantized artifact through its backend. Either way NeMo's FP32 model is loaded too: it provides
the preprocessor for the latency input and the same-process latency reference for the speedup.

Metrics (metrics/<variant>.json), headline numbers at the top level:
    wer, cer            pooled over every eval set (edits / reference words or characters)
    wer_vs_fp32         WER against the FP32 model's own hypotheses (variants only)
    latency_ms_median, latency_ms_p90, rtf
                        batch 1, features [1, F, T] of `latency_audio_s` seconds of a fixed
                        speech-like signal -> log-probs; feature extraction is not timed
    speedup_vs_fp32     NeMo FP32 eager median / this median, both timed in this process
    size_mb, size_ratio_vs_fp32
                        deployable bytes (backend's describe(); FP32: the .nemo) / the .nemo
    int8_weight_layer_fraction, int8_weight_mac_fraction
                        share of the weight layers (conv, linear: the FP32 model's modules), by
                        count and by multiply-accumulates, that really run in INT8
    rtfx_batch<b>, rtfx_streams<n>
                        server throughput (audio s / compute s) on the eval utterances at each
                        batch size and number of concurrent streams of `evaluate.throughput`;
                        details, with each batch size's agreement with batch 1, under `throughput`
                        (see nemo_ptq.evaluation.throughput)
    batch_agreement, rtfx_best, rtfx_best_setting
                        share of transcripts equal to batch 1's at the largest batch size; the
                        highest RTFx of a setting that keeps them (>= 99 %, or streams), and which
    float_mac_fraction, speed_vs_full_int8
                        an accuracy search's artifact only (row <variant>_budget): the share of MACs it
                        keeps float, and its speed against the variant's full INT8 (timed by the
                        search); details, with the budget and the dev score, under `accuracy_search`
    waveform_agreement  share of eval utterances whose transcript from the artifact's audio-input
                        model (the prepared WAV in, the model's preprocessor inside) equals the
                        feature path's; details under `deployment.waveform` (artifacts with one)
then `sets` and `kinds` (real / synthetic) with the accuracy numbers per group, and details.
A variant that would mislead on this CPU (the backend's `skip_reason`, e.g. bf16 where the CPU
emulates it) is not run: its metrics hold `skipped` (the reason, one line) and no figures.
`model` (source, sha256 of the .nemo) and `eval_sets` (name, kind, sha256 of each prepared set)
say what was measured; the report shows only files that match the current model and sets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nemo_ptq import cpu, provenance
from nemo_ptq.backends import get_backend
from nemo_ptq.backends.base import ArtifactInfo, Backend, Runner
from nemo_ptq.data.prepared import PreparedData, PreparedSet
from nemo_ptq.errors import ConfigError, DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.fp32 import MODEL_FILE, NemoEagerRunner, latency_features, load_fp32, state_dict_bytes
from nemo_ptq.evaluation.latency import latency_stats, time_in_blocks
from nemo_ptq.evaluation.parity import waveform_parity
from nemo_ptq.evaluation.scoring import score_sets
from nemo_ptq.evaluation.sysinfo import system_info
from nemo_ptq.evaluation.throughput import RunnerSpec, measure_throughput
from nemo_ptq.evaluation.throughput import headline as throughput_headline
from nemo_ptq.evaluation.transcripts import Transcript, read_hypotheses
from nemo_ptq.models.card import read_card
from nemo_ptq.params import EvaluateParams

FP32 = "fp32"  # the reserved variant name of the baseline
FP32_BACKEND = "nemo-eager"
MB = 1e6


@dataclass(frozen=True)
class Evaluation:
    metrics: dict
    transcripts: dict[str, list[Transcript]]


def variant_entry(variants: Mapping[str, Any] | None, variant: str) -> dict | None:
    """The params entry of a variant (None for the FP32 baseline), with errors that list the choices."""
    variants = dict(variants or {})
    if FP32 in variants:
        raise ConfigError(f"variants.{FP32}: '{FP32}' is reserved for NeMo's FP32 baseline; rename that variant")
    if variant == FP32:
        return None
    if variant not in variants:
        raise ConfigError(f"unknown variant {variant!r}; choose one of: {', '.join([FP32, *variants])}")
    if not isinstance(variants[variant], Mapping):
        raise ConfigError(f"variants.{variant} must be a mapping with at least a 'backend' key")
    return dict(variants[variant])


def searched_entry(variants: Mapping[str, Any] | None, base: str, row: str, artifact_dir: Path | None) -> dict:
    """The params entry of an accuracy search's artifact: its base variant's, with the float layers
    that the search chose (read from the artifact's variant.json)."""
    from nemo_ptq.accuracy.config import budget_row
    from nemo_ptq.backends.base import CONFIG_FILE

    if row != budget_row(base):
        raise ConfigError(f"--budget-of {base}: the row is named {budget_row(base)}, not {row}")
    entry = variant_entry(variants, base)
    if entry is None:
        raise ConfigError("--budget-of fp32: the FP32 baseline has no accuracy search")
    saved = None if artifact_dir is None else Path(artifact_dir) / CONFIG_FILE
    if saved is None or not saved.is_file():
        raise DataError(f"{saved or '--artifact'} is missing: run dvc repro search@{base} first")
    return {**entry, "float_layers": list(json.loads(saved.read_text()).get("float_layers", []))}


def load_variant(variant: str, backend: Backend, artifact_dir: Path, threads: int) -> tuple[Runner, ArtifactInfo]:
    if not Path(artifact_dir).is_dir():
        raise DataError(f"{artifact_dir} is missing: run dvc repro quantize@{variant} first")
    return backend.load(Path(artifact_dir), threads), backend.describe(Path(artifact_dir))


def measured_model(card: Mapping[str, Any], model_sha256: str) -> dict:
    """Which model the figures are of: what the report checks each row against."""
    return {"source": card.get("source"), "trained": card.get("trained"), "nemo_sha256": model_sha256}


def skipped_metrics(variant: str, entry: Mapping[str, Any], reason: str, card: Mapping[str, Any], model_dir: Path,
                    prepared: PreparedData) -> dict:
    """A metrics file that says why there are no figures; the report shows the reason in its row."""
    return {
        "variant": variant,
        "backend": str(entry["backend"]),
        "skipped": reason,
        "model": measured_model(card, provenance.model_sha256(Path(model_dir) / MODEL_FILE)),
        "eval_sets": provenance.eval_sets(prepared),
        "system": system_info(),
    }


def transcribe(runner: Runner, vocabulary: CtcVocabulary, sets: Sequence[PreparedSet], feature_dim: int,
               progress: bool = True) -> dict[str, list[Transcript]]:
    work = [(prepared_set, utt) for prepared_set in sets for utt in prepared_set.utterances()]
    transcripts: dict[str, list[Transcript]] = {prepared_set.name: [] for prepared_set in sets}
    for prepared_set, utt in tqdm(work, desc="transcribing", unit="utt", disable=not progress, file=sys.stderr):
        if not utt.features_path.is_file():
            raise DataError(f"{utt.features_path} is missing: rerun the prepare stage (dvc repro prepare)")
        features = utt.features()
        if features.ndim != 2 or features.shape[0] != feature_dim:
            raise DataError(
                f"{utt.features_path} has shape {features.shape}, expected [{feature_dim}, frames]: "
                "the prepared data was made for another model, rerun dvc repro prepare"
            )
        hypothesis = vocabulary.transcript(runner(features[None].astype("float32")))
        transcripts[prepared_set.name].append(Transcript(utt.id, utt.text_norm, hypothesis, utt.duration))
    return transcripts


def evaluate(
    *,
    variant: str,
    entry: Mapping[str, Any] | None,
    model_dir: Path,
    prepared_dir: Path,
    params: EvaluateParams,
    artifact_dir: Path | None = None,
    fp32_transcripts: Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """`entry` is the variant's params entry, or None for the FP32 baseline."""
    if entry is not None and (artifact_dir is None or fp32_transcripts is None):
        raise ConfigError(
            f"variant '{variant}' needs --artifact (its quantize output) and --fp32-transcripts (evaluate-fp32 output)"
        )
    if fp32_transcripts is not None and not Path(fp32_transcripts).is_dir():
        raise DataError(f"{fp32_transcripts} is missing: run the FP32 baseline first (dvc repro evaluate-fp32)")
    card = read_card(model_dir)
    vocabulary = CtcVocabulary.from_card(card)
    prepared = PreparedData.load(prepared_dir)
    if not prepared.eval_sets:
        raise DataError(f"{prepared.root} has no eval sets: add some under data.eval_sets in params.yaml")
    if prepared.feature_dim != int(card["feature_dim"]):
        raise DataError(
            f"{prepared.root} has {prepared.feature_dim}-dim features but the model expects {card['feature_dim']}: "
            "rerun dvc repro prepare"
        )
    backend = None if entry is None else get_backend(variant, entry, card, Path(model_dir))
    reason = None if backend is None else backend.skip_reason(cpu.detect())
    if reason:
        print(f"skipped {variant}: {reason}", file=sys.stderr)
        return Evaluation(skipped_metrics(variant, entry, reason, card, model_dir, prepared), {})
    model = load_fp32(model_dir)
    fp32_runner = NemoEagerRunner(model)
    if backend is None:
        runner, info = fp32_runner, None
    else:
        runner, info = load_variant(variant, backend, artifact_dir, params.threads)

    transcripts = transcribe(runner, vocabulary, prepared.eval_sets, prepared.feature_dim, progress)
    fp32_hypotheses = None if fp32_transcripts is None else read_hypotheses(fp32_transcripts, transcripts)
    kinds = {prepared_set.name: prepared_set.kind for prepared_set in prepared.eval_sets}
    scores = score_sets(transcripts, kinds, fp32_hypotheses)

    waveform_runner = None if backend is None else backend.load_waveform(Path(artifact_dir), params.threads)
    deployment = {} if waveform_runner is None else {
        "waveform": waveform_parity(waveform_runner, runner, vocabulary, prepared.eval_sets, transcripts, progress)}

    spec = RunnerSpec(variant, entry, Path(model_dir), None if artifact_dir is None else Path(artifact_dir))
    run_batch = fp32_runner.batch if backend is None else backend.load_batch(Path(artifact_dir), params.threads)
    throughput = measure_throughput(spec, runner, run_batch, prepared.eval_sets, vocabulary, params.throughput,
                                    params.threads, progress, None if backend is None else backend.batch_limit())

    features = latency_features(model, params.latency_audio_s, int(card["sample_rate"]))
    calls = {FP32: lambda: fp32_runner(features)}
    if runner is not fp32_runner:
        calls[variant] = lambda: runner(features)
    timings = time_in_blocks(calls, params.warmup_runs, params.timed_runs, params.timed_rounds)

    nemo_bytes = (Path(model_dir) / MODEL_FILE).stat().st_size
    metrics = build_metrics(
        variant=variant,
        backend=FP32_BACKEND if entry is None else str(entry["backend"]),
        scores=scores,
        timings=timings,
        params=params,
        size_bytes=nemo_bytes if info is None else info.size_bytes,
        fp32_sizes={"fp32_nemo_bytes": nemo_bytes, "fp32_state_dict_bytes": state_dict_bytes(model)},
        info=info,
        card=card,
        model_sha256=provenance.model_sha256(Path(model_dir) / MODEL_FILE),
        eval_sets=provenance.eval_sets(prepared),
        deployment=deployment,
        throughput=throughput,
    )
    if artifact_dir is not None:
        metrics.update(accuracy_search(Path(artifact_dir)))
    return Evaluation(metrics, transcripts)


def accuracy_search(artifact_dir: Path) -> dict:
    """What an accuracy search recorded in its artifact (none for other artifacts): the float layers,
    their MAC share, the dev score and the speed against full INT8, timed by the search."""
    from nemo_ptq.accuracy.config import ACCURACY_FILE

    path = Path(artifact_dir) / ACCURACY_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {"float_mac_fraction": record["float_mac_fraction"],
            "speed_vs_full_int8": record["speed"]["speed_vs_full_int8"],
            "accuracy_search": {key: record[key] for key in ("searched_from", "budget", "dev_utterances", "rank_by",
                                                             "float_layers", "float_groups", "dev_score", "speed")}}


def build_metrics(*, variant: str, backend: str, scores: dict, timings: dict[str, list[float]],
                  params: EvaluateParams, size_bytes: int, fp32_sizes: dict, info: ArtifactInfo | None,
                  card: Mapping[str, Any], model_sha256: str, eval_sets: list[dict],
                  deployment: Mapping[str, dict] | None = None, throughput: Mapping[str, Any] | None = None) -> dict:
    """Headline numbers at the top level (what `dvc metrics show/diff` compares), details below.

    `dvc metrics show` turns every nested number and string into a column but skips lists, so
    bulky details (per-layer precisions, raw timings, ISA flags, versions) are lists: in the file,
    out of the table.
    """
    latency = latency_stats(timings[variant], params.latency_audio_s)
    fp32_latency = latency_stats(timings[FP32], params.latency_audio_s)
    overall = scores["overall"]
    headline = {
        "variant": variant,
        "backend": backend,
        "wer": overall["wer"],
        "cer": overall["cer"],
        **({"wer_vs_fp32": overall["wer_vs_fp32"]} if "wer_vs_fp32" in overall else {}),
        "utterances": overall["utterances"],
        "hours": overall["hours"],
        "latency_ms_median": latency.median_ms,
        "latency_ms_p90": latency.p90_ms,
        "rtf": latency.rtf,
        "speedup_vs_fp32": fp32_latency.median_ms / latency.median_ms,
        "fp32_latency_ms_median": fp32_latency.median_ms,
        "size_mb": size_bytes / MB,
        "size_ratio_vs_fp32": size_bytes / fp32_sizes["fp32_nemo_bytes"],
        "int8_weight_layer_fraction": 0.0 if info is None else info.int8_weight_layer_fraction,
        "int8_weight_mac_fraction": 0.0 if info is None else info.int8_weight_mac_fraction,
    }
    deployment = dict(deployment or {})
    if "waveform" in deployment:
        headline["waveform_agreement"] = deployment["waveform"]["agreement"]
    if throughput is not None:
        headline.update(throughput_headline(throughput))
    return {
        **_rounded(headline),
        "sets": _rounded(scores["sets"]),
        "kinds": _rounded(scores["kinds"]),
        "latency": {
            "audio_s": params.latency_audio_s,
            "threads": params.threads,
            "warmup_runs": params.warmup_runs,
            "timed_rounds": params.timed_rounds,
            "runs_ms": [round(1000 * t, 3) for t in timings[variant]],
            "fp32_runs_ms": [round(1000 * t, 3) for t in timings[FP32]],
        },
        "size": {"bytes": size_bytes, **fp32_sizes},
        "deployment": _rounded(deployment),
        "throughput": _rounded(dict(throughput or {})),
        "layers": [] if info is None else info.layers,  # by FP32 module path, with the backend's names
        "artifact_notes": "" if info is None else info.notes,
        "model": measured_model(card, model_sha256),
        "eval_sets": eval_sets,
        "system": system_info(params.threads),
    }


def _rounded(value: Any) -> Any:
    """Six significant digits: enough for any metric here, and diffs stay readable."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def write_metrics(path: Path, metrics: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
