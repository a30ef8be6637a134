"""The params.yaml sections of accuracy-aware INT8: `sensitivity` (shared) and `accuracy` (per variant).

`accuracy` maps a variant of `variants` to its WER budget. Each entry adds three stages:
sensitivity@<variant> (measures every layer group; does not read the budget, so editing a budget,
its ranking included, does not rerun it), search@<variant> (ranks the groups and runs the greedy
search, writes the artifact `<variant>_budget`) and
evaluate-budget@<variant> (the normal evaluate of that artifact, as row `<variant>_budget`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nemo_ptq.config import check_choices, parse_dataclass
from nemo_ptq.errors import ConfigError

ACCURACY_FILE = "accuracy.json"  # the search's record, in the searched artifact's folder
BUDGET_SUFFIX = "_budget"  # the row and artifact name of a variant's searched model
METRICS = ("wer_vs_fp32", "wer")
RANKINGS = ("sqnr", "sqnr_per_mac", "wer_vs_fp32")


@dataclass(frozen=True)
class SensitivityParams:
    # dev utterances each trial transcribes (every k-th of the dev set, so lengths stay representative)
    max_utterances: int = 40
    threads: int = 2  # intra-op threads of each trial's runtime (and of the search's speed check)

    def __post_init__(self) -> None:
        for name in ("max_utterances", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class AccuracyBudget:
    # how far the searched model may fall behind FP32 on the dev set, as a fraction of words:
    # wer_vs_fp32 = its WER against the FP32 hypotheses; wer = its WER minus FP32's, both on the references
    max_wer_increase: float = 0.03
    metric: str = "wer_vs_fp32"
    # the search gives up (an error, no artifact) rather than keep more than this share of the MACs float
    max_float_mac_fraction: float = 0.5
    # the order in which the search makes groups float: logit SQNR gain (continuous, so it also
    # orders groups whose WER gain on a small dev set is zero), SQNR gain per float MAC (cheap
    # groups that help go first), or WER-vs-FP32 gain; the other gain breaks ties
    rank_by: str = "sqnr"

    def __post_init__(self) -> None:
        check_choices(self, {"metric": METRICS, "rank_by": RANKINGS})
        for name in ("max_wer_increase", "max_float_mac_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    def holds(self, score: Mapping[str, float]) -> bool:
        """Whether a dev score (`dev.DevScore.as_dict()`) is within the budget."""
        return self.excess(score) <= 1e-12

    def used(self, score: Mapping[str, float]) -> float:
        """The budgeted quantity of a dev score: WER vs FP32, or the WER increase over FP32."""
        return score["wer_vs_fp32"] if self.metric == "wer_vs_fp32" else score["wer"] - score["fp32_wer"]

    def excess(self, score: Mapping[str, float]) -> float:
        """How far over the budget a dev score is (<= 0: within it)."""
        return self.used(score) - self.max_wer_increase


def parse_accuracy(section: Mapping[str, Any] | None, variants: Mapping[str, Any]) -> dict[str, AccuracyBudget]:
    """`accuracy:` of params.yaml: each key a variant that quantizes with calibration, no row-name clash."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError("accuracy must map variant names to budgets, e.g. {ort_int8: {max_wer_increase: 0.03}}")
    budgets = {}
    for variant, entry in section.items():
        if variant not in variants:
            raise ConfigError(f"accuracy.{variant}: no such variant; choose one of: {', '.join(variants)}")
        if f"{variant}{BUDGET_SUFFIX}" in variants:
            raise ConfigError(f"accuracy.{variant}: its searched model is named {variant}{BUDGET_SUFFIX}, which "
                              "is already a variant; rename that variant")
        if not isinstance(variants[variant], Mapping) or "calibration" not in variants[variant]:
            raise ConfigError(f"accuracy.{variant}: the variant has no calibration (an FP32 or dynamic baseline "
                              "has no INT8 activations to keep in float); budget a calibrated INT8 variant")
        if variants[variant].get("float_layers"):
            raise ConfigError(f"accuracy.{variant}: the search chooses the float layers itself; remove "
                              f"variants.{variant}.float_layers")
        budgets[variant] = parse_dataclass(AccuracyBudget, entry, where=f"accuracy.{variant}")
    return budgets


def budget_row(variant: str) -> str:
    return f"{variant}{BUDGET_SUFFIX}"
