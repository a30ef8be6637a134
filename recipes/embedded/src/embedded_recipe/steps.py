"""The recipe's steps (recipes/embedded/run.py): each reads params, does I/O, calls the library."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nemo_ptq.errors import DataError

from embedded_recipe import espeak, kokoro, plans
from embedded_recipe.assemble import perturbed_copies, split_validation, within_duration
from embedded_recipe.heldout import HeldOut, assert_no_leaks, without_held_out
from embedded_recipe.manifests import normalized, read_manifest, total_hours, write_manifest
from embedded_recipe.params import ManifestSource, RecipeParams
from embedded_recipe.synthesis import Utterance, synthesize_all
from embedded_recipe.text import normalize_text, read_librispeech_transcripts, read_sentence_file


@dataclass(frozen=True)
class WorkPaths:
    """Where each step keeps its outputs under params.work_dir."""

    root: Path

    @property
    def kokoro_assets(self) -> Path:
        return self.root / "kokoro"

    def synthesized_audio(self, name: str) -> Path:
        return self.root / "audio" / name

    @property
    def perturbed_audio(self) -> Path:
        return self.root / "audio" / "real_perturbed"

    def synthesized(self, name: str) -> Path:
        """Manifests that synthesis appends to as clips finish."""
        return self.root / "synthesized" / f"{name}.jsonl"

    def manifest(self, name: str) -> Path:
        """Final manifests: train, val, test_other, kokoro_heldout."""
        return self.root / "manifests" / f"{name}.jsonl"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def load_source(source: ManifestSource) -> list[dict]:
    rows = read_manifest(Path(source.manifest).expanduser(), source.include_prefix)
    if not rows:
        raise DataError(f"{source.name}: no rows in {source.manifest} under {source.include_prefix!r}")
    return rows


def real_training_rows(params: RecipeParams) -> list[dict]:
    return [{**row, "source": s.name} for s in params.real.sets for row in load_source(s)]


def _plan_exclusions(params: RecipeParams) -> set[str]:
    """Texts no synthesized clip may read: the real test set and the real training set."""
    rows = load_source(params.heldout.test_other) + real_training_rows(params)
    return {normalize_text(row["text"]) for row in rows}


def synthesis_plans(params: RecipeParams, voices_dir: Path) -> dict[str, list[Utterance]]:
    """{synthesized set name: plan}; the held-out Kokoro set first, so its texts can be excluded."""
    transcripts = list(read_librispeech_transcripts(Path(params.kokoro.sentences).expanduser()).values())
    exclude = _plan_exclusions(params)
    heldout = plans.heldout_plan(transcripts, params.kokoro, params.heldout, exclude)
    exclude |= {u.text for u in heldout}
    voices = kokoro.english_voices(voices_dir)
    unknown = set(params.heldout.kokoro_voices) - set(voices)
    if unknown:
        raise DataError(f"held-out Kokoro voices {sorted(unknown)} do not exist; choose from {sorted(voices)}")
    training_voices = sorted(set(voices) - set(params.heldout.kokoro_voices))
    kokoro_train = plans.kokoro_training_plan(transcripts, params.kokoro, training_voices, exclude)
    # Independent of kokoro.train_clips, so that raising it later keeps the espeak-ng clips valid.
    espeak_train = plans.espeak_training_plan(transcripts, params.espeak, params.kokoro.sentence_words, exclude)
    return {"kokoro_heldout": heldout, "kokoro_train": kokoro_train, "espeak_train": espeak_train}


def synthesize(params: RecipeParams) -> None:
    paths = WorkPaths(params.work_path)
    model_path, voices_dir = kokoro.fetch_assets(paths.kokoro_assets)
    all_plans = synthesis_plans(params, voices_dir)
    if all_plans["espeak_train"] and not espeak.espeak_available():
        raise DataError("espeak-ng is not installed (apt-get install espeak-ng), or set espeak.train_clips: 0")
    kokoro_synthesizer = kokoro.KokoroSynthesizer(model_path, voices_dir)
    engines = {"kokoro_heldout": kokoro_synthesizer.synthesize, "kokoro_train": kokoro_synthesizer.synthesize,
               "espeak_train": espeak.synthesize}
    for name, plan in all_plans.items():
        made = synthesize_all(plan, engines[name], paths.synthesized_audio(name), paths.synthesized(name),
                              source=name, desc=name)
        print(f"{name}: {made} clips synthesized now, {len(plan)} planned", flush=True)


def collect_held_out(params: RecipeParams, paths: WorkPaths) -> HeldOut:
    """Every voice, text and recording that training must not see."""
    sentence_lists = [read_sentence_file(Path(f)) for f in params.heldout.sentence_files]
    pipeline_eval = HeldOut(voices=frozenset(params.heldout.kokoro_voices + params.heldout.espeak_voices),
                            texts=frozenset().union(*sentence_lists))
    test_other = HeldOut.from_rows(load_source(params.heldout.test_other))
    kokoro_heldout = HeldOut.from_rows(read_manifest(paths.synthesized("kokoro_heldout")))
    return pipeline_eval.merged(test_other).merged(kokoro_heldout)


def build_manifests(params: RecipeParams) -> None:
    """train / val / test_other / kokoro_heldout manifests, checked against every held-out group."""
    paths = WorkPaths(params.work_path)
    held_out = collect_held_out(params, paths)
    synthesized = [row for name in ("kokoro_train", "espeak_train") if paths.synthesized(name).is_file()
                   for row in read_manifest(paths.synthesized(name))]
    candidates = normalized(real_training_rows(params)) + synthesized
    kept = within_duration(without_held_out(candidates, held_out), params.train.max_duration_s)
    print(f"{len(candidates) - len(kept)} of {len(candidates)} candidate clips dropped (held out or too long)")
    train_rows, val_rows = split_validation(kept, params.train.val_clips_per_source, params.train.seed)
    real_names = {s.name for s in params.real.sets if not s.synthetic}
    real_train = [row for row in train_rows if row["source"] in real_names]
    perturbed = perturbed_copies(real_train, params.real.speed_perturb, paths.perturbed_audio)
    train_rows += within_duration(perturbed, params.train.max_duration_s)
    assert_no_leaks(train_rows + val_rows, held_out)
    evaluation = {"test_other": normalized(load_source(params.heldout.test_other)),
                  "kokoro_heldout": read_manifest(paths.synthesized("kokoro_heldout"))}
    for name, rows in {"train": train_rows, "val": val_rows, **evaluation}.items():
        write_manifest(paths.manifest(name), rows)
    summary = data_summary({"train": train_rows, "val": val_rows, **evaluation}, real_names)
    write_json(paths.reports / "data.json", summary)
    print(json.dumps(summary, indent=1))


def data_summary(sets: dict[str, list[dict]], real_names: set[str]) -> dict:
    """Clips and hours per set and per source, and real vs synthetic hours of the training set."""
    summary = {}
    for name, rows in sets.items():
        sources: dict[str, list[dict]] = {}
        for row in rows:
            key = row.get("source", name) + (f"_sp{row['speed']:g}" if "source_audio" in row else "")
            sources.setdefault(key, []).append(row)
        summary[name] = {"clips": len(rows), "hours": round(total_hours(rows), 3),
                         "by_source": {k: {"clips": len(v), "hours": round(total_hours(v), 3)}
                                       for k, v in sorted(sources.items())}}
    train = sets["train"]
    summary["train"]["real_hours"] = round(total_hours(r for r in train if r.get("source") in real_names), 3)
    summary["train"]["real_hours_without_copies"] = round(
        total_hours(r for r in train if r.get("source") in real_names and "source_audio" not in r), 3)
    summary["train"]["synthetic_hours"] = round(summary["train"]["hours"] - summary["train"]["real_hours"], 3)
    return summary


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


EVAL_SETS = ("test_other", "kokoro_heldout", "val")


def feature_sets(params: RecipeParams, names: tuple[str, ...] = ("train", "val")) -> dict:
    """Cached log-mel features of the named manifests (computed on first use, redone when a manifest changes)."""
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    from nemo_ptq.models.architectures import preprocessor_config

    from embedded_recipe.features import load_or_compute

    paths = WorkPaths(params.work_path)
    cfg = {k: v for k, v in preprocessor_config().items() if k != "_target_"}
    preprocessor = AudioToMelSpectrogramPreprocessor(**cfg)
    return {name: load_or_compute(read_manifest(paths.manifest(name)), preprocessor, cfg,
                                  paths.root / "features" / f"{name}.pt", desc=f"features {name}")
            for name in names}


def train(params: RecipeParams, minutes: float | None = None) -> None:
    from embedded_recipe import train as training

    sets = feature_sets(params)
    init_from = Path(params.train.init_from) if params.train.init_from else None
    progress = training.train(params.train, sets["train"], sets["val"], Path(params.train.checkpoint_dir),
                              init_from, minutes=minutes)
    summary = write_train_report(params, progress, sets["train"])
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "curve")}, indent=1))


def write_train_report(params: RecipeParams, progress: dict, train_set) -> dict:
    """reports/train.json and the checkpoint folder's PROGRESS.md, from a campaign's progress."""
    from embedded_recipe import train as training
    from embedded_recipe.export import write_progress

    checkpoint_dir = Path(params.train.checkpoint_dir)
    best = checkpoint_dir / training.BEST_CHECKPOINT
    summary = {key: progress.get(key) for key in ("step", "epoch", "minutes", "best_val_wer", "best_step")}
    summary["best_checkpoint"] = str(best if best.is_file() else checkpoint_dir / training.LAST_CHECKPOINT)
    summary["steps_per_epoch"] = len(training.DurationBatchSampler(
        [f / training.FRAMES_PER_SECOND for f in train_set.frames], params.train.batch_seconds,
        seed=params.train.seed))
    summary |= {"runs": progress["runs"], "curve": progress["curve"], "init_from": progress.get("init_from")}
    write_json(WorkPaths(params.work_path).reports / "train.json", summary)
    write_progress(progress, vars(params.train), checkpoint_dir / "PROGRESS.md")
    return summary


def train_report(params: RecipeParams) -> dict:
    """The train step's report; on a machine that has not trained (a fresh clone), rebuilt from the
    committed last.ckpt, which holds the campaign's progress."""
    import torch

    from embedded_recipe import train as training

    report = WorkPaths(params.work_path).reports / "train.json"
    if report.is_file():
        return json.loads(report.read_text())
    last = Path(params.train.checkpoint_dir) / training.LAST_CHECKPOINT
    if not last.is_file():
        raise DataError(f"no training to evaluate: neither {report} nor {last} exists; "
                        "run `python recipes/embedded/run.py --steps train` first")
    progress = torch.load(last, map_location="cpu", weights_only=False)["progress"]
    return write_train_report(params, progress, feature_sets(params, names=("train",))["train"])


def evaluate(params: RecipeParams) -> None:
    from embedded_recipe.evaluation import evaluate_manifest
    from embedded_recipe.train import load_checkpoint

    paths = WorkPaths(params.work_path)
    checkpoint = Path(train_report(params)["best_checkpoint"])
    model = load_checkpoint(checkpoint)
    results = {"checkpoint": checkpoint.name}
    for name in EVAL_SETS:
        results[name] = evaluate_manifest(model, paths.manifest(name), params.train.batch_size)
        print(f"{name}: WER {results[name]['wer']:.3f}  CER {results[name]['cer']:.3f}", flush=True)
    write_json(paths.reports / "eval.json", results)


def export(params: RecipeParams) -> None:
    from embedded_recipe.export import export_model, restore_seconds, write_model_card
    from embedded_recipe.train import load_checkpoint

    paths = WorkPaths(params.work_path)
    reports = {name: json.loads((paths.reports / f"{name}.json").read_text()) for name in ("data", "eval")}
    reports["train"] = train_report(params)
    model_path = Path(params.export.model)
    export_model(load_checkpoint(Path(reports["train"]["best_checkpoint"])), model_path)
    card = write_model_card(params, reports, model_path, restore_seconds(model_path),
                            Path(params.export.card_json), Path(params.export.card_markdown))
    print(json.dumps({k: card[k] for k in ("parameters", "size_mb", "restore_seconds")}, indent=1))
