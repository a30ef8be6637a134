"""Per-group sensitivity: the full-INT8 model, then one trial per layer group kept float.

A group's gain is what keeping it float recovers against full INT8 on the dev set: SQNR gain in dB
of the log-probs and WER-vs-FP32 gain in words. The table lists groups by SQNR gain (ties: WER gain,
then forward order); the search ranks them again by its budget's `rank_by`
(`nemo_ptq.accuracy.search.rank_groups`), so a ranking is chosen without rerunning the trials.
A group the backend cannot keep float (onnxruntime's optimizer re-quantizes some lone layers) is
listed under `not_floatable` with the reason, and is never chosen.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from nemo_ptq.accuracy.groups import LayerGroup
from nemo_ptq.accuracy.trials import TrialResult, Trials
from nemo_ptq.errors import FloatLayerError


def measure(trials: Trials, full: TrialResult, groups: Sequence[LayerGroup], progress: bool = True) -> dict:
    """`full` is the full-INT8 trial (`trials.run([])`), `groups` its INT8 layers in groups."""
    rows, refused = [], []
    for index, group in enumerate(tqdm(groups, desc="sensitivity", unit="group", disable=not progress,
                                       file=sys.stderr)):
        try:
            result = trials.run(group.layers)
        except FloatLayerError as err:
            refused.append({"group": group.name, "layers": list(group.layers), "reason": str(err)})
            continue
        rows.append({
            "group": group.name, "layers": list(group.layers), "macs": group.macs, "forward_index": index,
            "sqnr_gain_db": result.score["sqnr_db"] - full.score["sqnr_db"],
            "wer_vs_fp32_gain": full.score["wer_vs_fp32"] - result.score["wer_vs_fp32"],
            "score": result.score,
        })
    ranked = sorted(rows, key=lambda row: (-row["sqnr_gain_db"], -row["wer_vs_fp32_gain"], row["forward_index"]))
    return {
        "dev_utterances": len(trials.scorer),
        "full_int8": {"score": full.score, "int8_weight_mac_fraction": full.info.int8_weight_mac_fraction,
                      "float_layers": [p for p, prec in full.info.layer_precisions.items() if prec != "int8"]},
        "groups": ranked,
        "not_floatable": refused,
    }


def plot(table: dict, path: Path, title: str) -> None:
    """SQNR and WER-vs-FP32 gain of each group kept float, in forward order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(table["groups"], key=lambda row: row["forward_index"])
    names = [row["group"].removesuffix(".conv") for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.22 * len(rows)), 6.5), sharex=True)
    top.bar(range(len(rows)), [row["sqnr_gain_db"] for row in rows], color="tab:blue")
    top.set_ylabel("logit SQNR gain (dB)")
    bottom.bar(range(len(rows)), [100 * row["wer_vs_fp32_gain"] for row in rows], color="tab:orange")
    bottom.set_ylabel("WER vs FP32 gain (points)")
    bottom.set_xticks(range(len(rows)), names, rotation=90, fontsize=7)
    full = table["full_int8"]["score"]
    top.set_title(f"{title}: each layer group kept float vs full INT8 "
                  f"(full INT8 on the dev set: {full['sqnr_db']:.1f} dB, {100 * full['wer_vs_fp32']:.1f} % vs FP32)",
                  fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
