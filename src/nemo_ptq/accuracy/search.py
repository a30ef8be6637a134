"""The greedy budget search: rank the groups of a sensitivity table by the budget's `rank_by`,
keep the k top-ranked groups float, for k = 0, 1, 2, ..., and stop at the first k whose dev score
keeps the budget.

Deterministic: the ranking comes from a saved table and each trial is a deterministic quantize and a
pass over fixed dev utterances. It gives up with a `BudgetError` once the next k would keep more
than `max_float_mac_fraction` of the MACs float, or the ranking runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nemo_ptq.accuracy.config import AccuracyBudget
from nemo_ptq.accuracy.groups import LayerGroup
from nemo_ptq.errors import BudgetError


# per rank_by: the row's primary and tie-breaking keys, larger first
_RANK_KEYS = {
    "sqnr_per_mac": ("sqnr_gain_db", "wer_vs_fp32_gain", True),
    "sqnr": ("sqnr_gain_db", "wer_vs_fp32_gain", False),
    "wer_vs_fp32": ("wer_vs_fp32_gain", "sqnr_gain_db", False),
}


def rank_groups(rows: Sequence[Mapping], rank_by: str) -> list[LayerGroup]:
    """A sensitivity table's groups, most worth keeping float first (ties: forward order).
    `sqnr_per_mac` divides the SQNR gain by the group's MACs, the cost of running it in float, so a
    cheap group that helps comes before a costly one that helps a little more."""
    primary, secondary, per_mac = _RANK_KEYS[rank_by]

    def key(row: Mapping) -> tuple:
        value = row[primary] / max(1, int(row["macs"])) if per_mac else row[primary]
        return -value, -row[secondary], row["forward_index"]

    return [LayerGroup(row["group"], tuple(row["layers"]), int(row["macs"])) for row in sorted(rows, key=key)]


@dataclass(frozen=True)
class SearchResult:
    float_layers: tuple[str, ...]
    float_groups: tuple[str, ...]
    float_mac_fraction: float  # of all weight-layer MACs, the chosen groups' share
    score: dict[str, float]
    steps: tuple[dict, ...]  # every trial: k, groups, MAC share, score, within budget


def greedy_search(ranked: Sequence[LayerGroup], total_macs: int, budget: AccuracyBudget,
                  trial: Callable[[list[str]], dict[str, float]], where: str = "the search",
                  log: Callable[[str], None] | None = None) -> SearchResult:
    """`trial(float_layers)` returns a dev score (`DevScore.as_dict()`); `log` gets one line per trial."""
    steps: list[dict] = []
    for k in range(len(ranked) + 1):
        chosen = list(ranked[:k])
        fraction = sum(group.macs for group in chosen) / max(1, total_macs)
        if fraction > budget.max_float_mac_fraction + 1e-12:
            break
        layers = [layer for group in chosen for layer in group.layers]
        score = trial(layers)
        holds = budget.holds(score)
        if log is not None:
            log(f"{k} groups float ({fraction:.1%} of MACs): {budget.metric} {budget.used(score):.4f}, "
                f"budget {budget.max_wer_increase:g}{', holds' if holds else ''}")
        steps.append({"k": k, "groups": [g.name for g in chosen], "float_mac_fraction": fraction, "score": score,
                      "within_budget": holds})
        if holds:
            return SearchResult(tuple(layers), tuple(g.name for g in chosen), fraction, score, tuple(steps))
    best = min(steps, key=lambda step: budget.excess(step["score"]))
    raise BudgetError(
        f"{where}: no set of float layers within max_float_mac_fraction {budget.max_float_mac_fraction:g} keeps "
        f"{budget.metric} within +{budget.max_wer_increase:g} on the dev set (tried {len(steps)}; the closest, "
        f"{len(best['groups'])} groups float, is {budget.excess(best['score']):+.3f} over): raise max_wer_increase "
        "or max_float_mac_fraction, or calibrate differently")
