"""Accuracy-aware INT8 (issue 11): the budget's config, the layer groups, the greedy search on a
scripted scorer (deterministic, keeps the budget, one clear error when nothing does), and
sensitivity plus search on every backend with a real quantize and a real dev set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nemo_ptq.accuracy import sensitivity
from nemo_ptq.accuracy.config import RANKINGS, AccuracyBudget, SensitivityParams, parse_accuracy
from nemo_ptq.accuracy.dev import DevScorer, every_kth
from nemo_ptq.accuracy.groups import LayerGroup, is_depthwise, layer_groups
from nemo_ptq.accuracy.search import greedy_search, rank_groups
from nemo_ptq.accuracy.trials import Trials
from nemo_ptq.backends import get_backend
from nemo_ptq.backends.calibration import select_utterances
from nemo_ptq.config import parse_dataclass
from nemo_ptq.data.prepared import PreparedSet
from nemo_ptq.errors import BudgetError, ConfigError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY
from nemo_ptq.models.layers import weight_layers

CARD = {"vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY), "tokenizer": "char",
        "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2}
VARIANTS = {"ort_int8": {"backend": "ort", "calibration": {"num_utterances": 3}},
            "ort_fp32": {"backend": "ort", "precision": "fp32"}}


# ---- config ------------------------------------------------------------------------------------

def test_a_budget_names_a_calibrated_variant():
    assert parse_accuracy({"ort_int8": {"max_wer_increase": 0.05}}, VARIANTS)["ort_int8"].max_wer_increase == 0.05
    assert parse_accuracy(None, VARIANTS) == {}


@pytest.mark.parametrize(("section", "variants", "message"), [
    ({"nope": {}}, VARIANTS, "accuracy.nope: no such variant; choose one of: ort_int8, ort_fp32"),
    ({"ort_fp32": {}}, VARIANTS, "accuracy.ort_fp32: the variant has no calibration"),
    ({"ort_int8": {}}, {**VARIANTS, "ort_int8_budget": {"backend": "ort"}}, "is already a variant"),
    ({"ort_int8": {}}, {"ort_int8": {**VARIANTS["ort_int8"], "float_layers": ["decoder"]}},
     "the search chooses the float layers itself"),
    ({"ort_int8": {"metric": "cer"}}, VARIANTS, "unknown metric 'cer'; choose one of: wer_vs_fp32, wer"),
    ({"ort_int8": {"max_wer_increase": 3}}, VARIANTS, "max_wer_increase must be a number in [0, 1]"),
    ({"ort_int8": {"budget": 0.1}}, VARIANTS, "unknown key(s) budget"),
    (["ort_int8"], VARIANTS, "accuracy must map variant names to budgets"),
])
def test_bad_budgets_are_config_errors(section, variants, message):
    with pytest.raises(ConfigError) as err:
        parse_accuracy(section, variants)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sensitivity_params_are_validated():
    with pytest.raises(ConfigError, match="unknown rank_by 'snr'"):
        parse_accuracy({"ort_int8": {"rank_by": "snr"}}, VARIANTS)
    with pytest.raises(ConfigError, match="max_utterances must be an integer >= 1"):
        parse_dataclass(SensitivityParams, {"max_utterances": 0}, where="sensitivity")


def test_the_metric_decides_what_the_budget_counts():
    score = {"wer_vs_fp32": 0.10, "wer": 0.52, "fp32_wer": 0.50, "sqnr_db": 30.0}
    assert not AccuracyBudget(0.05, "wer_vs_fp32").holds(score)
    assert AccuracyBudget(0.05, "wer").holds(score)  # 0.02 more errors against the references
    assert AccuracyBudget(0.02, "wer").holds(score) and not AccuracyBudget(0.019, "wer").holds(score)


def test_every_kth_spreads_over_the_set():
    assert every_kth(list(range(10)), 4) == [0, 2, 5, 7]
    assert every_kth([1, 2], 5) == [1, 2]


# ---- groups --------------------------------------------------------------------------------------

def test_each_depthwise_conv_is_grouped_with_the_layer_after_it(tiny_fused, citrinet):
    for model, features in ((tiny_fused, 64), (citrinet[1], citrinet[2]["feature_dim"])):
        table = weight_layers(model, features)
        groups = layer_groups(model, table)
        assert [path for g in groups for path in g.layers] == list(table)  # every layer once, in order
        modules = dict(model.named_modules())
        for group in groups:
            depthwise = is_depthwise(modules[group.layers[0]])
            assert len(group.layers) == (2 if depthwise else 1) or group.layers[-1] == list(table)[-1]
            assert group.macs == sum(table[p].macs for p in group.layers)
        assert any(len(g.layers) == 2 for g in groups)
        assert all(g.name != "decoder" for g in layer_groups(model, table, skip=frozenset({"decoder"})))


# ---- the search, on a scripted scorer ----------------------------------------------------------

GROUPS = [LayerGroup(f"g{i}", (f"l{i}a", f"l{i}b"), macs) for i, macs in enumerate([10, 30, 20, 40])]
ERRORS = {"l0a": 0.04, "l1a": 0.02, "l2a": 0.01, "l3a": 0.005}  # what keeping each group float takes off


def scripted_trial(calls: list):
    def trial(layers):
        calls.append(list(layers))
        wer_vs_fp32 = 0.08 - sum(ERRORS.get(layer, 0.0) for layer in layers)
        return {"wer_vs_fp32": wer_vs_fp32, "wer": 0.5 + wer_vs_fp32 / 2, "fp32_wer": 0.5, "sqnr_db": 20.0}
    return trial


def test_the_search_stops_at_the_first_k_that_keeps_the_budget():
    calls = []
    result = greedy_search(GROUPS, 100, AccuracyBudget(0.03, "wer_vs_fp32", 1.0), scripted_trial(calls))
    assert result.float_groups == ("g0", "g1") and result.float_layers == ("l0a", "l0b", "l1a", "l1b")
    assert result.score["wer_vs_fp32"] == pytest.approx(0.02) and result.float_mac_fraction == pytest.approx(0.4)
    assert [len(c) for c in calls] == [0, 2, 4]  # full INT8, then one more group per trial
    assert [s["within_budget"] for s in result.steps] == [False, False, True]


def test_the_search_is_deterministic():
    first = greedy_search(GROUPS, 100, AccuracyBudget(0.01, "wer_vs_fp32", 1.0), scripted_trial([]))
    second = greedy_search(GROUPS, 100, AccuracyBudget(0.01, "wer_vs_fp32", 1.0), scripted_trial([]))
    assert first == second and first.float_groups == ("g0", "g1", "g2")


def test_no_subset_within_the_limits_is_one_clear_error():
    calls = []
    with pytest.raises(BudgetError) as err:  # g0 + g1 would keep the budget, but are 40 % of the MACs
        greedy_search(GROUPS, 100, AccuracyBudget(0.03, "wer_vs_fp32", 0.35), scripted_trial(calls),
                      where="accuracy.v")
    message = str(err.value)
    assert message.startswith("accuracy.v: no set of float layers within max_float_mac_fraction 0.35 keeps "
                              "wer_vs_fp32 within +0.03") and "\n" not in message
    assert "tried 2; the closest, 1 groups float, is +0.010 over" in message
    assert len(calls) == 2
    with pytest.raises(BudgetError, match="tried 5"):  # the ranking runs out
        greedy_search(GROUPS, 100, AccuracyBudget(0.0, "wer_vs_fp32", 1.0), scripted_trial([]))


def row(name: str, macs: int, sqnr: float, wer: float, index: int) -> dict:
    return {"group": name, "layers": [f"{name}.conv"], "macs": macs, "forward_index": index,
            "sqnr_gain_db": sqnr, "wer_vs_fp32_gain": wer}


def test_each_ranking_orders_the_sensitivity_rows():
    rows = [row("big", 1000, 3.0, 0.01, 0), row("cheap", 10, 1.0, 0.00, 1), row("tied", 1000, 3.0, 0.02, 2),
            row("mixed", 10, -0.5, 0.03, 3)]
    names = {rank_by: [g.name for g in rank_groups(rows, rank_by)] for rank_by in RANKINGS}
    assert names["sqnr"] == ["tied", "big", "cheap", "mixed"]  # WER gain breaks the 3.0 dB tie
    assert names["sqnr_per_mac"] == ["cheap", "tied", "big", "mixed"]  # 0.1 dB per MAC beats 0.003
    assert names["wer_vs_fp32"] == ["mixed", "tied", "big", "cheap"]
    ranked = rank_groups(rows, "sqnr_per_mac")
    assert ranked[0] == LayerGroup("cheap", ("cheap.conv",), 10)
    assert rank_groups(rows[::-1], "sqnr_per_mac") == ranked  # the table's order does not matter
    tie = [row("second", 10, 1.0, 0.0, 5), row("first", 10, 1.0, 0.0, 4)]
    assert [g.name for g in rank_groups(tie, "sqnr")] == ["first", "second"]  # then forward order


# ---- sensitivity and search on every backend ------------------------------------------------------

def dev_set(tmp_path, count=4, frames=240) -> PreparedSet:
    """A prepared dev set of random features; its references are the FP32 model's own transcripts
    in spirit only (the texts are fixed words), which is all WER needs."""
    folder = tmp_path / "dev"
    (folder / "features").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(count):
        np.save(folder / "features" / f"u{i}.npy", rng.standard_normal((64, frames)).astype(np.float32))
        rows.append({"id": f"u{i}", "audio_filepath": f"audio/u{i}.wav", "duration": frames / 100,
                     "text": "a quiet test", "text_norm": "a quiet test"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return PreparedSet("dev", "synthetic", "dev", folder)


def fp32_runner(model):
    def run(features):
        with torch.inference_mode():
            return model(torch.from_numpy(features)).numpy()
    return run


BACKENDS = {
    "ort": {},
    "ov": {},
    "eager": {"engine": "onednn"},
    "pt2e": {},
}


@pytest.mark.parametrize("backend_name", [pytest.param(b, marks=pytest.mark.slow) if b == "pt2e" else b
                                          for b in BACKENDS])
def test_sensitivity_and_search_on_a_real_backend(tmp_path, tiny_fused, backend_name):
    entry = {"backend": backend_name, "calibration": {"num_utterances": 3, "seed": 0}, **BACKENDS[backend_name]}
    backend = get_backend("v", entry, CARD)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((64, 200)).astype(np.float32) for _ in range(4)]
    backend.calibrate(tiny_fused, iter(select_utterances(pool, backend.calibration_sample())), tmp_path / "cal")
    scorer = DevScorer(dev_set(tmp_path), fp32_runner(tiny_fused), CtcVocabulary.from_card(CARD), 64, 3)
    assert len(scorer) == 3
    trials = Trials(backend, tiny_fused, tmp_path / "cal", scorer, threads=1)

    full = trials.run([])
    assert 0 <= full.score["wer_vs_fp32"] and np.isfinite(full.score["sqnr_db"])
    already_float = frozenset(p for p, prec in full.info.layer_precisions.items() if prec != "int8")
    groups = layer_groups(tiny_fused, weight_layers(tiny_fused, 64), skip=already_float)[:3]
    table = sensitivity.measure(trials, full, groups, progress=False)
    ranked = rank_groups(table["groups"], "sqnr")
    assert sorted(g.name for g in ranked) + sorted(r["group"] for r in table["not_floatable"]) == \
        sorted(g.name for g in groups)
    gains = [row["sqnr_gain_db"] for row in table["groups"]]
    assert gains == sorted(gains, reverse=True)
    for row in table["groups"]:  # a group kept float really runs in float
        assert row["sqnr_gain_db"] == pytest.approx(row["score"]["sqnr_db"] - full.score["sqnr_db"])

    # a budget that some k <= len(ranked) keeps: the best of the prefixes' scores
    prefixes = [trials.run([p for g in ranked[:k] for p in g.layers]).score["wer_vs_fp32"]
                for k in range(len(ranked) + 1)]
    budget = AccuracyBudget(min(prefixes), "wer_vs_fp32", 1.0)
    total = sum(layer.macs for layer in weight_layers(tiny_fused, 64).values())
    result = greedy_search(ranked, total, budget, lambda layers: trials.run(layers).score)
    assert result.score["wer_vs_fp32"] <= budget.max_wer_increase
    assert len(result.float_groups) == prefixes.index(min(prefixes))  # the first k that keeps it
    again = greedy_search(ranked, total, budget, lambda layers: trials.run(layers).score)
    assert again == result  # same quantize, same dev pass, same choice

    searched = trials.build(result.float_layers, tmp_path / "searched")
    precisions = searched.describe(tmp_path / "searched").layer_precisions
    assert {p for p in result.float_layers} <= {p for p, prec in precisions.items() if prec != "int8"}


def test_the_nncf_peer_writes_a_loadable_openvino_artifact(tmp_path, tiny_fused):
    """NNCF's accuracy control on the same calibration, dev set and budget (a loose one: its first
    INT8 model already keeps it); the artifact loads and is scored like ours."""
    from nemo_ptq.accuracy import nncf_peer

    backend = get_backend("v", {"backend": "ov", "calibration": {"num_utterances": 3, "seed": 0}}, CARD)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((64, 200)).astype(np.float32) for _ in range(4)]
    backend.calibrate(tiny_fused, iter(select_utterances(pool, backend.calibration_sample())), tmp_path / "cal")
    scorer = DevScorer(dev_set(tmp_path), fp32_runner(tiny_fused), CtcVocabulary.from_card(CARD), 64, 3)
    trials = Trials(backend, tiny_fused, tmp_path / "cal", scorer, threads=1)
    nncf_peer.quantize_with_accuracy_control(trials, AccuracyBudget(1.0, "wer_vs_fp32", 1.0), tmp_path / "peer")
    score = scorer.score(backend.load(tmp_path / "peer", threads=1))
    assert 0 <= score.wer_vs_fp32 <= 1.0
    assert backend.describe(tmp_path / "peer").int8_weight_mac_fraction > 0.5
    with pytest.raises(ConfigError, match="use metric wer_vs_fp32"):
        nncf_peer.quantize_with_accuracy_control(trials, AccuracyBudget(0.1, "wer", 1.0), tmp_path / "peer2")


@pytest.mark.parametrize("value, fast, disabled", [("fast", True, False), ("full", False, False),
                                                   ("none", True, True)])
def test_the_nncf_peer_uses_the_variants_bias_correction(tmp_path, tiny_fused, monkeypatch, value, fast, disabled):
    """What NNCF's accuracy control is asked for follows the variant's `bias_correction` (the call
    is intercepted: the loadable artifact is the test above's)."""
    import nncf

    from nemo_ptq.accuracy import nncf_peer

    class Called(Exception):
        pass

    def intercepted(*args, **kwargs):
        raise Called(kwargs)

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", intercepted)
    backend = get_backend("v", {"backend": "ov", "calibration": {"num_utterances": 2, "seed": 0},
                                "bias_correction": value}, CARD)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((64, 200)).astype(np.float32) for _ in range(2)]
    backend.calibrate(tiny_fused, iter(select_utterances(pool, backend.calibration_sample())), tmp_path / "cal")
    scorer = DevScorer(dev_set(tmp_path), fp32_runner(tiny_fused), CtcVocabulary.from_card(CARD), 64, 3)
    trials = Trials(backend, tiny_fused, tmp_path / "cal", scorer, threads=1)
    with pytest.raises(Called) as called:
        nncf_peer.quantize_with_accuracy_control(trials, AccuracyBudget(0.1, "wer_vs_fp32", 1.0), tmp_path / "peer")
    kwargs = called.value.args[0]
    assert kwargs["fast_bias_correction"] is fast
    assert kwargs["advanced_quantization_parameters"].disable_bias_correction is disabled
