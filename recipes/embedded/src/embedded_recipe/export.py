"""The embedded model's artifact: an inference-only .nemo plus a model card (JSON and Markdown)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from omegaconf import open_dict

# Timed in a fresh interpreter with NeMo already imported, as a pipeline stage would load it.
_RESTORE_PROBE = """
import sys, time, warnings
warnings.filterwarnings("ignore")
from nemo.collections.asr.models import EncDecCTCModel
started = time.perf_counter()
EncDecCTCModel.restore_from(sys.argv[1], map_location="cpu")
print(time.perf_counter() - started)
"""


def export_model(model, path: Path) -> None:
    """Save without SpecAugment and datasets: the artifact is for inference and quantization."""
    from nemo.collections.asr.models import EncDecCTCModel

    cfg = model.cfg.copy()
    with open_dict(cfg):
        cfg.spec_augment = None
        cfg.train_ds = cfg.validation_ds = cfg.test_ds = None
    inference_model = EncDecCTCModel(cfg=cfg)
    inference_model.load_state_dict(model.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    inference_model.eval().save_to(str(path))


def restore_seconds(path: Path, runs: int = 3) -> float:
    """Median wall time of `EncDecCTCModel.restore_from` (NeMo import excluded)."""
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _RESTORE_PROBE, str(path)], capture_output=True, text=True,
                             check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return round(statistics.median(times), 2)


def parameter_count(path: Path) -> int:
    from nemo.collections.asr.models import EncDecCTCModel

    model = EncDecCTCModel.restore_from(str(path), map_location="cpu")
    return sum(p.numel() for p in model.parameters())


def model_card(params, reports: dict, model_path: Path, load_seconds: float) -> dict:
    data, train, evaluation = reports["data"], reports["train"], reports["eval"]
    return {
        "model": str(model_path),
        "architecture": params.train.architecture,
        "family": "QuartzNet (NeMo EncDecCTCModel: ConvASREncoder separable JasperBlocks + ConvASRDecoder)",
        "parameters": parameter_count(model_path),
        "size_mb": round(model_path.stat().st_size / 1e6, 2),
        "features": "16 kHz, 64 log-mel, 20 ms window, 10 ms stride, per_feature normalization",
        "vocabulary": "space, a-z, apostrophe (+ CTC blank)",
        "training_data": data["train"],
        "validation_data": data["val"],
        "lossy_sources": {s.name: s.coding for s in params.real.sets if s.coding},
        "espeak_train_voices": len(params.espeak.voices),
        "training": {key: train.get(key) for key in ("step", "epoch", "minutes", "steps_per_epoch", "best_step",
                                                     "best_val_wer", "init_from", "runs", "curve")}
        | {"params": vars(params.train), "before_this_recipe": PREVIOUS_TRAINING},
        "evaluation": {name: {k: v for k, v in result.items() if k != "examples"}
                       for name, result in evaluation.items() if isinstance(result, dict)},
        "evaluation_examples": {name: result["examples"] for name, result in evaluation.items()
                                if isinstance(result, dict)},
        "restore_seconds": load_seconds,
        "held_out": {"espeak_voices": list(params.heldout.espeak_voices),
                     "sentence_files": list(params.heldout.sentence_files)},
    }


# How the weights that this recipe's current campaign started from were made.
PREVIOUS_TRAINING = ("QuartzNet 5x5 at half width (1.85 M parameters) from this recipe's first campaign "
                     "(`recipes/embedded/checkpoint/`, 24,000 steps in stops 15-20, best validation WER 0.852, flat "
                     "from step 12,000), widened to full width with the same function (`embedded_recipe.widen`); that "
                     "campaign started from the model of the project's earlier lightning recipe (commit 35a5961: "
                     "174.7 min on 4.8 h of speech; test-other WER 96.6 %, held-out Kokoro voices 90.4 %)")
# Goals from the project's issue #9; the card reports honest numbers against them.
TARGETS = {"kokoro_heldout": 0.20, "test_other": 0.60}
EVAL_LABELS = {
    "test_other": "LibriSpeech test-other, 100 utterances (real, held out)",
    "kokoro_heldout": "Kokoro held-out voices, 60 clips (synthetic, held-out voices and texts)",
    "val": "validation split of the training sources (used to pick the checkpoint)",
}


def _status(evaluation: dict) -> str:
    """A plain warning when the model mostly fails, so nobody mistakes it for a usable recognizer."""
    worst = max(result["wer"] for result in evaluation.values())
    if worst <= 0.8:
        return ""
    cers = ", ".join(f"{result['cer']:.0%} on {name}" for name, result in evaluation.items())
    return (f"\n**Undertrained.** Greedy WER is above 80 % on some held-out sets, so most words are wrong there;\n"
            f"the model does map audio to characters (CER {cers}), which is enough to compare FP32 with INT8\n"
            f"(log-probability agreement, CER, WER deltas) but not to judge recognition quality.")


def _run_lines(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        precision = "bf16 autocast" if run["bf16"] else "fp32"
        rate = run["audio_hours"] * 3600 / (run["minutes"] * 60) if run["minutes"] else 0.0
        data = "-"  # recorded from stop 22 on
        if "train_set" in run:
            data = f"{run['train_set']['clips']} clips, {run['train_set']['hours']:.1f} h; val {run['val_set']['clips']}"
        lines.append(f"| {run['start_step']} | {run['minutes']:.1f} | {run['audio_hours']:.1f} | {rate:.0f} | "
                     f"{run['cpu']}, {run['threads']} threads, {precision} | {data} |")
    return lines


def _curve_lines(curve: list[dict]) -> list[str]:
    return [f"| {p['step']} | {p['epoch']:.2f} | {p['minutes']:.0f} | {p['train_loss']:.1f} | {p['val_wer']:.3f} |"
            for p in curve]


def render_markdown(card: dict) -> str:
    data, training = card["training_data"], card["training"]
    sources = "\n".join(f"| {name} | {v['clips']} | {v['hours']:.2f} | {card['lossy_sources'].get(name.split('_sp')[0], '')} |"
                        for name, v in data["by_source"].items())
    results = []
    for name, result in card["evaluation"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"≤ {target:.0%}: {'met' if result['wer'] <= target else 'not met'}"
        results.append(f"| {EVAL_LABELS.get(name, name)} | {result['wer']:.1%} | {result['cer']:.1%} | {verdict} |")
    examples = "\n".join(f"- {name}: ref `{ex['ref']}`  \n  hyp `{ex['hyp']}`"
                         for name, exs in card["evaluation_examples"].items() for ex in exs[:2])
    init = training["init_from"] or {"path": "random initialization", "sha256": "-"}
    return _MARKDOWN.format(card=card, data=data, training=training, sources=sources,
                            status=_status(card["evaluation"]), init=init,
                            runs="\n".join(_run_lines(training["runs"])),
                            curve="\n".join(_curve_lines(training["curve"])),
                            results="\n".join(results), examples=examples,
                            params=json.dumps(training["params"]),
                            heldout_voices=", ".join(card["held_out"]["espeak_voices"]),
                            heldout_sentences=", ".join(f"`{f}`" for f in card["held_out"]["sentence_files"]))


def write_progress(progress: dict, params: dict, path: Path) -> None:
    """The campaign so far, next to its checkpoint: every run and the learning curve (committed each session)."""
    init = progress.get("init_from") or {"path": "random initialization", "sha256": "-"}
    best = progress.get("best_val_wer")
    lines = [
        "# Training progress of the embedded model (written by the recipe's train step)", "",
        f"Step {progress['step']} of {params['max_steps']}, epoch {progress['epoch']}, {progress['minutes']:.0f} min "
        f"of training; best validation WER {'-' if best is None else f'{best:.3f}'} at step "
        f"{progress.get('best_step', '-')} (`best.ckpt`). Started from `{init['path']}` (sha256 `{init['sha256']}`).",
        "", "| from step | minutes | audio hours | audio s/s | machine | training set |", "|---|---|---|---|---|---|",
        *_run_lines(progress["runs"]), "",
        "| step | epoch | minutes | train loss | val WER |", "|---|---|---|---|---|", *_curve_lines(progress["curve"]),
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def write_model_card(params, reports: dict, model_path: Path, load_seconds: float, json_path: Path,
                     markdown_path: Path) -> dict:
    card = model_card(params, reports, model_path, load_seconds)
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    markdown_path.write_text(render_markdown(card))
    return card


_MARKDOWN = """# Embedded model: `{card[model]}`

The project's own small QuartzNet-family CTC model, trained offline on CPU so that the quantization
pipeline has a *trained* FP32 model to start from (no pretrained checkpoint can be downloaded here).
It is a test subject for quantization, not a production recognizer: judge INT8 against this FP32
model, not against published QuartzNet numbers. Generated by the recipe in `recipes/embedded/`
(see its README; step `export`); the same numbers are in `model_card.json`.
{status}

## Model
- Architecture: `{card[architecture]}`, {card[family]}
- Parameters: {card[parameters]:,}; file size {card[size_mb]} MB
- Features: {card[features]}; vocabulary: {card[vocabulary]}
- `EncDecCTCModel.restore_from` load time: {card[restore_seconds]} s (median of 3, NeMo already imported)
- Why this size: the model is trained on a 2-core CPU over several sessions. The first campaign
  trained QuartzNet 5x5 at half width (1.85 M parameters, 2.6x the audio per minute of full width)
  until its validation WER stayed flat for 12,000 steps; full-width 5x5 (6.7 M) then went on from
  its weights. Both keep every structural feature the quantization pipeline must handle (separable
  JasperBlocks, residuals, masked convs, BatchNorm, dilation, the 1x1 epilogue and decoder).

## Training data: {data[hours]:.2f} h
{data[real_hours]:.2f} h real ({data[real_hours_without_copies]:.2f} h of distinct recordings, the rest
speed-perturbed copies at 0.9 and 1.1) and {data[synthetic_hours]:.2f} h synthetic.

| source | clips | hours | coding of the audio |
|---|---|---|---|
{sources}

- Real: VCTK p239 (1 speaker), 251 LibriSpeech train-clean-100 clips (251 speakers), LibriSpeech
  dev-clean (18 speakers), Rhasspy "Kathleen" (1 speaker, CMU ARCTIC prompts), speechocean762 (230
  non-native speakers, children and adults), from `../shared/data` (not in this repository).
- Synthetic: Kokoro-82M reading LibriSpeech train-clean-100 sentences with 24 training voices
  (`kokoro_librispeech`), and espeak-ng with {card[espeak_train_voices]} voices (`espeak_train`).
- Never trained on (checked by the recipe, which fails on any overlap): the 100 LibriSpeech test-other
  utterances; the Kokoro voices af_heart, am_michael, bm_george and the sentences they read; the
  espeak-ng voices the pipeline evaluates, calibrates and tunes on ({heldout_voices}; no klatt
  variant is used at all) and every sentence of {heldout_sentences}.

## Training
- Started from `{init[path]}` (sha256 `{init[sha256]}`): {training[before_this_recipe]}.
- Then this recipe: NeMo 3.0 `EncDecCTCModel` modules (encoder, decoder, SpecAugment, CTC loss) in a
  plain resumable loop over cached log-mel features, AdamW, linear warmup and a cosine to
  `max_steps` (started again at each of `lr_restarts`: {training[params][lr_restarts]}), batches of
  similar duration, bf16 autocast where the CPU has native bf16.
- At export: step {training[step]} of {training[params][max_steps]}, epoch {training[epoch]}, {training[minutes]:.0f} min;
  best validation WER {training[best_val_wer]:.3f} at step {training[best_step]} (the exported checkpoint).

Runs (one per session or resume):

| from step | minutes | audio hours | audio s/s | machine | training set |
|---|---|---|---|---|---|
{runs}

Learning curve (validation WER of greedy decoding; train loss averaged since the previous point):

| step | epoch | minutes | train loss | val WER |
|---|---|---|---|---|
{curve}

## Evaluation (greedy CTC, jiwer; lowercase, punctuation stripped, apostrophes kept)
| set | WER | CER | goal |
|---|---|---|---|
{results}

Examples:
{examples}

## Limitations
- About 10 h of distinct real speech, half of it non-native read speech by children and adults:
  not enough for a general English recognizer, and a model of this size trained on a CPU stays far
  from published QuartzNet accuracy.
- Character-level greedy decoding, no language model.

## Licenses of the training data
LibriSpeech (CC BY 4.0, V. Panayotov et al., ICASSP 2015); CSTR VCTK Corpus 0.80 (see its COPYING);
Rhasspy "Kathleen" (CC0 1.0); speechocean762 (J. Zhang et al., Interspeech 2021; Apache-2.0 release);
Kokoro-82M weights (Apache-2.0) via kokoro-onnx (MIT); espeak-ng (GPL-3.0, used as a tool only).
No audio or text from these sets is part of this repository.

Training parameters: `{params}`
"""
