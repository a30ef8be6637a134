"""Training an EncDecCTCModel on CPU from cached features: a plain loop, resumable step by step.

NeMo's modules do the work (encoder, decoder, SpectrogramAugmentation, CTC loss); what lightning
did for the old recipe (loop, checkpoints, validation) is a few lines here, measured faster
(benchmarks/training_step.py, README). Checkpoints hold everything a resume needs: weights,
optimizer, step, data position, RNG states, the learning curve and every run's hardware, so a
later session continues on another machine exactly where this one stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import signal
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from nemo_ptq import cpu as cpus
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY, quartznet_config

from embedded_recipe.batching import DurationBatchSampler
from embedded_recipe.features import FeatureSet, collate
from embedded_recipe.params import TrainParams

LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
FRAMES_PER_SECOND = 100  # 10 ms feature stride
# Relative noise on widened conv weights: breaks the symmetry of the copies, keeps the function close.
WIDENING_NOISE = 0.01


def use_bf16(precision: str) -> bool:
    """`auto` takes bf16 autocast only where the CPU computes bf16 natively (emulated bf16 is slower)."""
    return precision == "bf16" or (precision == "auto" and cpus.detect().native_bf16)


def lr_factor(step: int, *, max_steps: int, warmup_steps: int, min_ratio: float,
              restarts: tuple[int, ...] = ()) -> float:
    """Linear warmup, then a cosine from 1 down to `min_ratio`, in cycles: the first from step 0, one
    more from each step in `restarts`, the last ending at `max_steps` (warm restarts, SGDR)."""
    start = max((r for r in restarts if r <= step), default=0)
    end = min((r for r in restarts if r > step), default=max_steps)
    step, length = step - start, end - start
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    progress = min(1.0, step / max(1, length))
    return warmup * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(params: TrainParams):
    from nemo.collections.asr.models import EncDecCTCModel

    cfg = quartznet_config(params.architecture, dropout=params.dropout, spec_augment=params.spec_augment)
    torch.manual_seed(params.seed)
    return EncDecCTCModel(cfg=cfg)


def augmentation_rngs(model) -> list[random.Random]:
    """NeMo's SpecAugment draws its masks from its own `random.Random`, seeded from the OS: these
    are seeded here and saved in checkpoints, so a resumed run draws what an unbroken one would."""
    if model.spec_augmentation is None:
        return []
    return [m._rng for m in model.spec_augmentation.modules() if isinstance(getattr(m, "_rng", None), random.Random)]


def initial_weights(path: Path) -> dict:
    """A state dict from a `.nemo` or from a checkpoint of this loop."""
    if path.suffix == ".nemo":
        from nemo.collections.asr.models import EncDecCTCModel

        return EncDecCTCModel.restore_from(str(path), map_location="cpu").state_dict()
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def starting_weights(source: dict, target: dict, seed: int) -> dict:
    """`source` as it is, or widened (Net2WiderNet) when `target` is the same model with more channels."""
    if all(source[k].shape == v.shape for k, v in target.items() if k in source):
        return source
    from embedded_recipe.widen import widened_state_dict

    def count(state: dict) -> int:
        return sum(v.numel() for k, v in state.items() if "running" not in k and v.is_floating_point())

    weights = widened_state_dict(source, target, noise=WIDENING_NOISE, seed=seed)
    print(f"widening init_from: {count(source) / 1e6:.2f} M -> {count(weights) / 1e6:.2f} M parameters "
          "(each channel repeated; the wide model starts from the narrow one's function)", flush=True)
    return weights


def _file_identity(path: Path | None) -> dict | None:
    if path is None:
        return None
    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def build_optimizer(params: TrainParams, model) -> torch.optim.Optimizer:
    if params.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=params.lr, betas=tuple(params.betas),
                                 weight_decay=params.weight_decay)
    from nemo.core.optim import Novograd

    return Novograd(model.parameters(), lr=params.lr, betas=tuple(params.betas), weight_decay=params.weight_decay)


def ctc_loss(model, features, lengths, targets, target_lengths, bf16: bool, augment: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if augment and model.spec_augmentation is not None:
            features = model.spec_augmentation(input_spec=features, length=lengths)
        encoded, encoded_lengths = model.encoder(audio_signal=features, length=lengths)
        log_probs = model.decoder(encoder_output=encoded)
    return model.loss(log_probs=log_probs.float(), targets=targets, input_lengths=encoded_lengths,
                      target_lengths=target_lengths)


@torch.inference_mode()
def greedy_transcripts(model, feature_set: FeatureSet, batch_size: int, bf16: bool = False) -> list[str]:
    """Greedy CTC decoding of every clip (the evaluate stage's decoder), in the set's own order."""
    from nemo_ptq.evaluation.decoding import CtcVocabulary

    model.eval()
    vocabulary = CtcVocabulary(QUARTZNET_VOCABULARY, len(QUARTZNET_VOCABULARY), "char")
    order = sorted(range(len(feature_set)), key=lambda i: feature_set.features[i].shape[1])
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        features, lengths, _, _ = collate(feature_set, indices)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            encoded, encoded_lengths = model.encoder(audio_signal=features, length=lengths)
            best = model.decoder(encoder_output=encoded).argmax(-1)
        for row, index in enumerate(indices):
            texts[index] = vocabulary.decode_ids(best[row, : int(encoded_lengths[row])].numpy())
    return [" ".join(texts[i].split()) for i in range(len(feature_set))]


def validation_wer(model, feature_set: FeatureSet, batch_size: int, bf16: bool) -> float:
    from embedded_recipe.evaluation import error_rates

    return error_rates(feature_set.texts, greedy_transcripts(model, feature_set, batch_size, bf16))["wer"]


class StopRequest:
    """SIGINT/SIGTERM end the run at the next step boundary, after a checkpoint (not mid-write)."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.requested = True


class ActiveClock:
    """Minutes of training, without the time the process spent stopped (SIGSTOP while a benchmark ran).

    Between two ticks, a gap longer than both 30 s and 10 medians of the recent gaps is a pause: it
    counts as one median gap, and the rest goes to `paused_minutes`.
    """

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.gaps: list[float] = []
        self.active_s = 0.0
        self.paused_s = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        gap, self.last = now - self.last, now
        typical = sorted(self.gaps)[len(self.gaps) // 2] if self.gaps else gap
        if self.gaps and gap > max(30.0, 10 * typical):
            self.paused_s += gap - typical
            gap = typical
        self.gaps = (self.gaps + [gap])[-50:]
        self.active_s += gap

    @property
    def minutes(self) -> float:
        return self.active_s / 60

    @property
    def paused_minutes(self) -> float:
        return self.paused_s / 60


def save_atomically(state: dict, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def run_description(params: TrainParams, bf16: bool) -> dict:
    cpu = cpus.detect()
    return {"cpu": cpu.model, "isa": cpu.isa, "threads": params.threads, "bf16": bf16,
            "torch": torch.__version__}


def set_identity(feature_set: FeatureSet) -> dict:
    """Clips, hours and a digest (texts and lengths) of a training or validation set."""
    digest = hashlib.sha256(json.dumps([feature_set.texts, feature_set.frames]).encode()).hexdigest()
    return {"clips": len(feature_set), "hours": round(sum(feature_set.frames) / FRAMES_PER_SECOND / 3600, 2),
            "digest": digest[:16]}


def adapt_to_changed_sets(progress: dict, train_set: dict, val_set: dict) -> None:
    """A resumed run on other sets (clips added to the recipe's sources). Another training set
    begins a new epoch: the old epoch's batch order indexes clips of the old set. Another
    validation set restarts the best validation WER: WERs on two sets do not rank checkpoints.
    Runs recorded before the sets were (stop 22) count as other sets."""
    if not progress["runs"]:
        return
    unknown = {"clips": "?", "hours": "?", "digest": None}
    previous = progress["runs"][-1]
    before_train, before_val = previous.get("train_set", unknown), previous.get("val_set", unknown)
    if before_train["digest"] != train_set["digest"] and progress["batch_in_epoch"]:
        print(f"training set changed ({before_train['clips']} clips, {before_train['hours']} h -> "
              f"{train_set['clips']} clips, {train_set['hours']} h): epoch {progress['epoch']} ends here", flush=True)
        progress["epoch"] += 1
        progress["batch_in_epoch"] = 0
    if before_val["digest"] != val_set["digest"] and progress["best_val_wer"] is not None:
        print(f"validation set changed ({before_val['clips']} -> {val_set['clips']} clips): the best "
              f"validation WER so far ({progress['best_val_wer']:.3f}) no longer ranks best.ckpt", flush=True)
        progress["best_val_wer"] = None


def train(params: TrainParams, train_set: FeatureSet, val_set: FeatureSet, checkpoint_dir: Path,
          init_from: Path | None = None, minutes: float | None = None) -> dict:  # noqa: C901
    """Train to `params.max_steps` (or for `minutes` of this run, or until SIGINT/SIGTERM).

    Resumes from `checkpoint_dir/last.ckpt` when it exists; otherwise starts from `init_from`'s
    weights (a `.nemo` or checkpoint) or from random ones. Returns the checkpoint's history.
    """
    torch.set_num_threads(params.threads)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    bf16 = use_bf16(params.precision)
    model = build_model(params)
    optimizer = build_optimizer(params, model)
    sampler = DurationBatchSampler([f / FRAMES_PER_SECOND for f in train_set.frames], params.batch_seconds,
                                   seed=params.seed)
    last = checkpoint_dir / LAST_CHECKPOINT
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        for rng, saved in zip(augmentation_rngs(model), state["rng"]["augment"], strict=True):
            rng.setstate(saved)
        progress = state["progress"]
        print(f"resuming at step {progress['step']} (epoch {progress['epoch']}, "
              f"{progress['minutes']:.1f} min trained so far)", flush=True)
    else:
        if init_from is not None:
            model.load_state_dict(starting_weights(initial_weights(init_from), model.state_dict(), params.seed))
        for index, rng in enumerate(augmentation_rngs(model)):
            rng.seed(params.seed * 1000 + index)
        progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "minutes": 0.0, "best_val_wer": None,
                    "curve": [], "runs": [], "init_from": _file_identity(init_from)}
    sets = {"train_set": set_identity(train_set), "val_set": set_identity(val_set)}
    adapt_to_changed_sets(progress, **sets)
    run = run_description(params, bf16) | {"start_step": progress["step"], "minutes": 0.0, "audio_hours": 0.0} | sets
    progress["runs"].append(run)
    stop = StopRequest()
    minutes_before = progress["minutes"]
    clock = ActiveClock()
    last_saved = time.monotonic()
    losses: list[float] = []

    def checkpoint(path: Path, resumable: bool = True) -> None:
        # best.ckpt is for export and as a starting point: without the optimizer state it is a third of the size.
        save_atomically({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict() if resumable else None,
                         "hyper_parameters": {"cfg": OmegaConf.to_container(model.cfg)},
                         "rng": {"torch": torch.get_rng_state(),
                                 "augment": [rng.getstate() for rng in augmentation_rngs(model)]},
                         "params": vars(params), "progress": progress}, path)

    bar = tqdm(total=params.max_steps, initial=progress["step"], unit="step", mininterval=30, desc="train")
    with stop.installed():
        while progress["step"] < params.max_steps and not stop.requested:
            batches = sampler.batches(progress["epoch"])
            for indices in batches[progress["batch_in_epoch"]:]:
                model.train()
                for group in optimizer.param_groups:
                    group["lr"] = params.lr * lr_factor(progress["step"], max_steps=params.max_steps,
                                                        warmup_steps=params.warmup_steps,
                                                        min_ratio=params.min_lr_ratio,
                                                        restarts=tuple(params.lr_restarts))
                features, lengths, targets, target_lengths = collate(train_set, indices)
                loss = ctc_loss(model, features, lengths, targets, target_lengths, bf16, params.spec_augment)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if params.gradient_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), params.gradient_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                progress["step"] += 1
                progress["batch_in_epoch"] += 1
                run["audio_hours"] += float(lengths.sum()) / FRAMES_PER_SECOND / 3600
                bar.update(1)
                clock.tick()
                now_minutes = clock.minutes
                run["minutes"], run["paused_minutes"] = round(now_minutes, 2), round(clock.paused_minutes, 1)
                if progress["step"] % params.val_every_steps == 0 or progress["step"] == params.max_steps:
                    wer = validation_wer(model, val_set, params.batch_size, bf16)
                    point = {"step": progress["step"], "epoch": round(progress["epoch"] + progress["batch_in_epoch"]
                                                                      / len(batches), 3),
                             "minutes": round(minutes_before + now_minutes, 1),
                             "train_loss": round(sum(losses) / len(losses), 3), "val_wer": wer,
                             "lr": optimizer.param_groups[0]["lr"]}
                    losses.clear()
                    progress["curve"].append(point)
                    bar.write(f"step {point['step']}  epoch {point['epoch']:.2f}  loss {point['train_loss']:.1f}  "
                              f"val WER {wer:.3f}")
                    if progress["best_val_wer"] is None or wer < progress["best_val_wer"]:
                        progress["best_val_wer"] = wer
                        progress["best_step"] = progress["step"]
                        checkpoint(checkpoint_dir / BEST_CHECKPOINT, resumable=False)
                out_of_time = minutes is not None and now_minutes >= minutes
                if (stop.requested or out_of_time or progress["step"] >= params.max_steps
                        or time.monotonic() - last_saved >= 60 * params.checkpoint_minutes):
                    break
            if progress["batch_in_epoch"] >= len(batches):
                progress["epoch"] += 1
                progress["batch_in_epoch"] = 0
            progress["minutes"] = round(minutes_before + clock.minutes, 2)
            checkpoint(last)
            last_saved = time.monotonic()
            if minutes is not None and clock.minutes >= minutes:
                break
    bar.close()
    return progress


def load_checkpoint(checkpoint: Path):
    """The EncDecCTCModel stored in a checkpoint of this loop, in eval mode, with no data attached."""
    from nemo.collections.asr.models import EncDecCTCModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = EncDecCTCModel(cfg=OmegaConf.create(state["hyper_parameters"]["cfg"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
