"""Training an EncDecCTCModel with NeMo's own training step and a lightning Trainer on CPU."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY, quartznet_config
from nemo_ptq.training.batching import DurationBatchSampler
from nemo_ptq.training.params import TrainParams
from nemo_ptq.training.schedule import WallClockCosineLR

LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"


def dataset_config(manifest: Path, *, shuffle: bool, batch_size: int, max_duration_s: float) -> dict:
    return {
        "manifest_filepath": str(manifest),
        "labels": list(QUARTZNET_VOCABULARY),
        "sample_rate": 16000,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "max_duration": max_duration_s,
        "min_duration": 0.1,
        "trim_silence": False,
        # Decoding audio is cheap next to the model; a worker process would only compete for 2 cores.
        "num_workers": 0,
        "pin_memory": False,
    }


def training_config(params: TrainParams, train_manifest: Path, val_manifest: Path) -> DictConfig:
    """QuartzNet config plus datasets, SpecAugment and the optimizer (the LR schedule is a callback)."""
    cfg = quartznet_config(params.architecture, dropout=params.dropout, spec_augment=params.spec_augment)
    with open_dict(cfg):
        cfg.train_ds = dataset_config(train_manifest, shuffle=True, batch_size=params.batch_size,
                                      max_duration_s=params.max_duration_s)
        cfg.validation_ds = dataset_config(val_manifest, shuffle=False, batch_size=params.batch_size,
                                           max_duration_s=params.max_duration_s)
        cfg.optim = {
            "name": params.optimizer,
            "lr": params.lr,
            "betas": list(params.betas),
            "weight_decay": params.weight_decay,
        }
    return cfg


def use_duration_batches(model, params: TrainParams) -> int:
    """Replace NeMo's shuffled loader by duration-bucketed batches; returns batches per epoch."""
    dataset = model._train_dl.dataset
    durations = [item.duration for item in dataset.manifest_processor.collection]
    sampler = DurationBatchSampler(durations, params.batch_seconds, seed=params.seed)
    model._train_dl = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate_fn,
                                                  num_workers=0)
    return len(sampler)


def build_trainer(params: TrainParams, checkpoint_dir: Path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    periodic = ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                               train_time_interval=timedelta(minutes=params.checkpoint_minutes))
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_wer", mode="min", save_top_k=1,
                           enable_version_counter=False)
    schedule = WallClockCosineLR(params.lr, params.warmup_steps)
    return Trainer(
        accelerator="cpu", devices=1, max_epochs=params.max_epochs,
        # The Timer's elapsed time is saved in checkpoints, so the budget holds across resumes.
        max_time=timedelta(minutes=params.max_minutes),
        val_check_interval=params.val_every_steps, check_val_every_n_epoch=None,
        gradient_clip_val=params.gradient_clip or None,
        callbacks=[schedule, periodic, best], logger=CSVLogger(checkpoint_dir, name="log"), log_every_n_steps=20,
        enable_model_summary=False, num_sanity_val_steps=0,
    )


def train(params: TrainParams, train_manifest: Path, val_manifest: Path, checkpoint_dir: Path,
          init_from: Path | None = None) -> dict:
    """Train (or resume from `last.ckpt`); returns a summary with the checkpoint to export.

    `init_from` starts a new run from another run's weights (not its optimizer or schedule).
    """
    from lightning.pytorch import seed_everything
    from nemo.collections.asr.models import EncDecCTCModel

    torch.set_num_threads(params.threads)
    seed_everything(params.seed, workers=True)
    checkpoint_dir = Path(checkpoint_dir)
    model = EncDecCTCModel(cfg=training_config(params, train_manifest, val_manifest))
    steps_per_epoch = use_duration_batches(model, params)
    trainer = build_trainer(params, checkpoint_dir)
    model.set_trainer(trainer)
    last = checkpoint_dir / LAST_CHECKPOINT
    if init_from is not None and not last.is_file():
        state = torch.load(init_from, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
    started = time.monotonic()
    trainer.fit(model, ckpt_path=str(last) if last.is_file() else None)
    best = checkpoint_dir / BEST_CHECKPOINT
    return {
        "steps_per_epoch": steps_per_epoch,
        "epochs": round(trainer.global_step / steps_per_epoch, 2),
        "global_step": trainer.global_step,
        "wall_minutes_this_run": round((time.monotonic() - started) / 60, 1),
        "best_checkpoint": str(best if best.is_file() else last),
        "best_val_wer": _best_score(trainer),
    }


def _best_score(trainer) -> float | None:
    best = next(cb for cb in trainer.checkpoint_callbacks if cb.monitor == "val_wer")
    return None if best.best_model_score is None else float(best.best_model_score)


def load_checkpoint(checkpoint: Path):
    """The EncDecCTCModel stored in a lightning checkpoint, in eval mode, with no data attached."""
    from nemo.collections.asr.models import EncDecCTCModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = OmegaConf.create(state["hyper_parameters"]["cfg"])
    with open_dict(cfg):
        cfg.train_ds = cfg.validation_ds = cfg.test_ds = None
    model = EncDecCTCModel(cfg=cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval()
