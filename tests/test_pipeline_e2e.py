"""`dvc repro` end to end in a temporary copy of the project, on a tiny model and a few clips.

Also checks DVC's caching promises: a second repro does nothing, and editing one variant's
calibration params marks only that variant's calibrate/quantize/evaluate stages (and the report,
which reads the variants) as changed.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT, SHARED_DATA, stage_env
from nemo_ptq.evaluation.wer import wer

pytestmark = pytest.mark.slow
COPIED = ["dvc.yaml", "params.yaml", "stages", "src", "data/text", "data/dev_text", "data/embedded"]


def dvc(*args, cwd, env):
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc_bin), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def small_params(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["source"] = "arch:quartznet_tiny"
    params["data"]["eval_sets"] = [
        {"name": "espeak_eval", "kind": "synthetic", "limit": 3,
         "tts": {"engine": "espeak-ng", "voices": ["en-us+f3"], "sentences": "data/text/eval_sentences.txt"}},
    ]
    test_other = SHARED_DATA / "librispeech_resemblyzer" / "manifest.jsonl"
    if test_other.is_file():  # real speech when ../shared is there (its first rows are test-other)
        params["data"]["eval_sets"].append(
            {"name": "test_other", "kind": "real", "limit": 2, "manifest": str(test_other)}
        )
    params["dev_set"]["limit"] = 3
    params["data"]["calibration_set"] = {
        "name": "espeak_cal", "kind": "synthetic", "limit": 4,
        "tts": {"engine": "espeak-ng", "voices": ["en-us+m2"], "sentences": "data/text/calibration_sentences.txt"},
    }
    params["evaluate"].update({"threads": 1, "latency_audio_s": 2.0, "warmup_runs": 1, "timed_runs": 2,
                               "throughput": {"batch_sizes": [1, 4], "streams": [1], "timed_passes": 1}})
    calibration = {"num_utterances": 3, "seed": 0, "observer": "minmax", "per_channel": True, "reduce_range": False}
    params["variants"] = {
        "onednn": {"backend": "eager", "engine": "onednn", "calibration": dict(calibration)},
        "qnnpack": {"backend": "eager", "engine": "qnnpack", "calibration": dict(calibration, per_channel=False)},
        "ort_fp32": {"backend": "ort", "precision": "fp32"},  # the audio-input artifact, end to end
    }
    params["sensitivity"].update({"max_utterances": 3, "threads": 1})
    # a budget every model keeps at once: the stages run end to end (the search itself: test_accuracy.py)
    params["accuracy"] = {"onednn": {"max_wer_increase": 1.0, "metric": "wer_vs_fp32", "max_float_mac_fraction": 1.0}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, project / name)
    (project / "data" / "embedded").mkdir(parents=True, exist_ok=True)
    small_params(project)
    env = stage_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env.pop("NEMO_PTQ_MLFLOW", None)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc("init", "-q", cwd=project, env=env)
    dvc("repro", cwd=project, env=env)
    return project, env


def test_repro_writes_metrics_plots_and_mlflow_runs(project):
    root, _ = project
    for variant in ("fp32", "onednn", "qnnpack"):
        metrics = json.loads((root / "metrics" / f"{variant}.json").read_text())
        # the pooled WER is the one the written transcripts give
        rows = [json.loads(line) for name in metrics["sets"]
                for line in (root / "data" / "evaluation" / variant / f"{name}.jsonl").read_text().splitlines()]
        assert metrics["wer"] == pytest.approx(wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows]),
                                               rel=1e-5)
        # runs_ms are kept to 1 us, so their median can differ from the exact one by up to 0.5 us
        assert metrics["latency_ms_median"] == pytest.approx(float(np.median(metrics["latency"]["runs_ms"])), abs=6e-4)
        assert "espeak_eval" in metrics["sets"]
    onednn = json.loads((root / "metrics" / "onednn.json").read_text())
    precisions = {layer["name"]: layer["precision"] for layer in onednn["layers"]}
    assert {name for name, precision in precisions.items() if precision != "int8"} == {"decoder"}  # float logits
    assert onednn["int8_weight_mac_fraction"] > 0.9
    assert onednn["speedup_vs_fp32"] == pytest.approx(onednn["fp32_latency_ms_median"] / onednn["latency_ms_median"],
                                                       rel=1e-4)
    assert 0 < onednn["size_ratio_vs_fp32"] < 1
    assert (root / "plots" / "pareto.png").stat().st_size > 0
    summary = json.loads((root / "reports" / "summary.json").read_text())
    # params.yaml's, fp32 first, then the accuracy searches' rows
    assert list(summary["variants"]) == ["fp32", "onednn", "qnnpack", "ort_fp32", "onednn_budget"]
    assert {row["model"].split()[0] for row in summary["variants"].values()} == {"arch:quartznet_tiny"}
    assert json.loads((root / "data" / "fused" / "equivalence.json").read_text())["max_abs_diff"] <= 1e-3
    # fetch-pretrained exported the preprocessor; the ORT artifact takes audio, and evaluate fed it
    # every prepared WAV: same frames, float-rounding log-probs, a share of identical transcripts
    assert json.loads((root / "data" / "model" / "card.json").read_text())["frontend"] == "frontend.onnx"
    assert (root / "data" / "quantized" / "ort_fp32" / "model_waveform.onnx").is_file()
    ort_fp32 = json.loads((root / "metrics" / "ort_fp32.json").read_text())
    waveform = ort_fp32["deployment"]["waveform"]
    assert waveform["utterances"] == ort_fp32["utterances"] and waveform["frame_count_mismatches"] == 0
    assert waveform["max_abs_logprob_diff"] < 1e-3
    assert ort_fp32["waveform_agreement"] == waveform["agreement"] == waveform["identical_transcripts"] / waveform[
        "utterances"]
    assert "waveform_agreement" not in onednn and onednn["deployment"] == {}  # eager artifacts take features
    # throughput: NeMo's FP32 masks padding, so batching changes no transcript; the eager INT8
    # graph has no lengths input, and the agreement says what its padding did
    fp32 = json.loads((root / "metrics" / "fp32.json").read_text())
    assert fp32["throughput"]["padding"] == "masked" and fp32["throughput"]["batch"]["4"]["agreement"] == 1.0
    assert onednn["throughput"]["padding"] == "not masked"
    for metrics in (fp32, onednn, ort_fp32):
        assert metrics["throughput"]["utterances"] == metrics["utterances"]
        assert {"rtfx_batch1", "rtfx_batch4", "rtfx_streams1"} <= set(metrics) and metrics["rtfx_batch4"] > 0
    assert {"rtfx_batch4", "rtfx_streams1", "rtfx_best"} <= set(summary["variants"]["onednn"])
    assert fp32["rtfx_best"] == max(fp32["rtfx_batch1"], fp32["rtfx_batch4"], fp32["rtfx_streams1"])

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    variants = set(runs["tags.variant"].dropna()) if "tags.variant" in runs else set()
    assert {"fp32", "onednn", "qnnpack", "ort_fp32"} <= variants


def test_second_repro_is_a_no_op(project):
    """Only the cpu stage runs again (always_changed); on the same machine its files do not change,
    so nothing downstream reruns."""
    root, env = project
    assert json.loads(dvc("status", "--json", cwd=root, env=env)) == {"cpu": ["always changed"]}
    output = dvc("repro", cwd=root, env=env)
    assert re.findall(r"Running stage '([^']+)'", output) == ["cpu"]


def test_another_cpu_reruns_only_what_depends_on_it(project):
    """A new ISA profile reruns calibrate and quantize (auto presets), a new machine.json evaluate
    (latency); fetch-pretrained, prepare and fuse stay cached."""
    root, env = project
    variants = list(yaml.safe_load((root / "params.yaml").read_text())["variants"])
    for name, marked in (("isa.json", {"calibrate", "quantize"}), ("machine.json", {"evaluate"})):
        path = root / "data" / "cpu" / name
        original = path.read_text()
        path.write_text(json.dumps({**json.loads(original), "profile": "another"}))
        try:
            changed = set(json.loads(dvc("status", "--json", cwd=root, env=env))) - {"cpu"}
        finally:
            path.write_text(original)
        expected = {f"{stage}@{v}" for stage in marked for v in variants}
        if name == "machine.json":
            expected |= {"evaluate-fp32", "evaluate-budget@onednn"}
        assert changed == expected, f"{name}: {sorted(changed ^ expected)}"
        assert not changed & {"fetch-pretrained", "prepare", "fuse"}


def test_editing_one_variant_marks_only_its_stages(project):
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    params["variants"]["onednn"]["calibration"]["num_utterances"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(dvc("status", "--json", cwd=root, env=env)))
    finally:
        (root / "params.yaml").write_text(original)
    # report reads the variants section (its rows), so it is marked too, and reruns after evaluate@onednn anyway
    assert changed == {"cpu", "calibrate@onednn", "quantize@onednn", "evaluate@onednn", "report",  # cpu: always
                       "sensitivity@onednn", "search@onednn", "evaluate-budget@onednn"}


@pytest.mark.parametrize("edit", [{"max_wer_increase": 0.5}, {"rank_by": "wer_vs_fp32"}], ids=["budget", "rank_by"])
def test_editing_a_budget_marks_only_its_search(project, edit):
    """The budget, its ranking included, is not a dependency of the sensitivity table, so a new
    budget reuses it."""
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    params["accuracy"]["onednn"].update(edit)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(dvc("status", "--json", cwd=root, env=env)))
    finally:
        (root / "params.yaml").write_text(original)
    assert changed == {"cpu", "search@onednn", "report"}  # evaluate-budget@onednn follows its new artifact


def test_accuracy_search_row_records_its_float_layers(project):
    root, _ = project
    metrics = json.loads((root / "metrics" / "onednn_budget.json").read_text())
    search = metrics["accuracy_search"]
    assert search["searched_from"] == "onednn" and search["float_layers"] == []  # budget 1.0 holds at once
    assert metrics["float_mac_fraction"] == 0 and metrics["speed_vs_full_int8"] > 0
    table = json.loads((root / "metrics" / "sensitivity" / "onednn.json").read_text())
    assert table["variant"] == "onednn" and table["dev_utterances"] == 3 and table["groups"]
    assert (root / "plots" / "sensitivity" / "onednn.png").stat().st_size > 0


def test_fidelity_benchmark_runs_on_the_pipeline_outputs(project):
    """benchmarks/fidelity.py calibrates params.yaml's variants and ad-hoc entries from the
    pipeline's calibration pool and reports one row per variant for a dev manifest."""
    root, env = project
    entry = json.dumps({"backend": "ort", "float_logits": False, "calibration": {"num_utterances": 3, "seed": 0}})
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fidelity.py"), "--threads", "1",
         "--manifest", "data/prepared/espeak_eval/manifest.jsonl", "--variants", "onednn",
         "--entry", f"ort_8bit_logits={entry}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 utterances from data/prepared/espeak_eval/manifest.jsonl; calibration pool: 4 utterances" in result.stdout
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert {"onednn", "ort_8bit_logits"} <= set(rows)
    # eager INT8 with float logits tracks the FP32 rewrite on most frames (the contract template's bar)
    agreement = float(rows["onednn"].split("|")[3].strip().rstrip("%"))
    assert agreement >= 80.0, rows["onednn"]
