"""A learning-rate schedule that spans a wall-clock budget instead of a number of steps.

The CPU that trains the embedded model is shared, so steps per minute vary several-fold from one
run to the next. A cosine over *time* still anneals to its minimum exactly when lightning's
`max_time` stops training, however many steps fit. The Timer's elapsed time survives resumes.
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Timer


def wall_clock_cosine(step: int, elapsed_s: float, *, budget_s: float, warmup_steps: int,
                      min_ratio: float) -> float:
    """LR multiplier: linear warmup over steps, then cosine from 1 to min_ratio over the time budget."""
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    progress = min(1.0, elapsed_s / budget_s)
    return warmup * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class WallClockCosineLR(Callback):
    def __init__(self, base_lr: float, warmup_steps: int, min_ratio: float = 0.01):
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
        elapsed = timer.time_elapsed("train")
        factor = wall_clock_cosine(trainer.global_step, elapsed, budget_s=elapsed + timer.time_remaining("train"),
                                   warmup_steps=self.warmup_steps,
                                   min_ratio=self.min_ratio)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.base_lr * factor
