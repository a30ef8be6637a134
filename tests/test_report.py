"""The report stage: rows are exactly params.yaml's variants, all measured on the current model and sets."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from nemo_ptq import provenance, report
from nemo_ptq.data.prepared import PreparedData
from nemo_ptq.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def write_prepared(root: Path, clips: dict[str, bytes]) -> Path:
    """A prepare output with one eval set 'clips' (audio bytes need not be real WAV: only hashed)."""
    folder = root / "clips"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for utt_id, audio in clips.items():
        (folder / "audio" / f"{utt_id}.wav").write_bytes(audio)
        rows.append({"id": utt_id, "audio_filepath": f"audio/{utt_id}.wav", "duration": 1.0, "text": "a",
                     "text_norm": "a", "source": "test"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"sample_rate": 16000, "feature_dim": 64,
               "sets": [{"name": "clips", "kind": "real", "role": "eval", "utterances": len(rows), "seconds": 1.0}]}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture()
def inputs(tmp_path) -> dict:
    model = tmp_path / "model.nemo"
    model.write_bytes(b"model weights")
    prepared = write_prepared(tmp_path / "prepared", {"u1": b"one", "u2": b"two"})
    return {"model": model, "prepared": prepared, "current": report.Inputs.current(model, prepared)}


def fake_metrics(variant: str, wer: float, latency: float, size: float, measured_on: report.Inputs,
                 rtfx: float | None = None) -> dict:
    throughput = {} if rtfx is None else {"rtfx_batch1": rtfx / 4, "rtfx_batch16": rtfx, "rtfx_streams2": rtfx / 3,
                                          "rtfx_best": rtfx, "rtfx_best_setting": "batch 16", "batch_agreement": 1.0}
    return {**throughput, "variant": variant, "backend": "nemo-eager" if variant == "fp32" else "eager", "wer": wer, "cer": wer / 2,
            "latency_ms_median": latency, "latency_ms_p90": latency * 1.1, "speedup_vs_fp32": 150 / latency,
            "size_mb": size, "size_ratio_vs_fp32": size / 76, "int8_weight_layer_fraction": 0.0 if variant == "fp32" else 1.0,
            "int8_weight_mac_fraction": 0.0 if variant == "fp32" else 1.0,
            "sets": {"clips": {"kind": "real"}}, "eval_sets": measured_on.eval_sets,
            "model": {"source": "embedded", "trained": True, "nemo_sha256": measured_on.model_sha256}}


def write_metrics(folder: Path, *metrics: dict) -> None:
    folder.mkdir(exist_ok=True)
    for m in metrics:
        (folder / f"{m['variant']}.json").write_text(json.dumps(m))


@pytest.fixture()
def metrics_dir(tmp_path, inputs) -> Path:
    folder = tmp_path / "metrics"
    current = inputs["current"]
    # by RTFx at batch 16 qnnpack is the fastest (as batches can turn a slow batch-1 kernel around)
    write_metrics(folder, fake_metrics("fp32", 0.10, 150.0, 76.0, current, rtfx=80.0),
                  fake_metrics("onednn", 0.11, 22.0, 20.0, current, rtfx=400.0),
                  fake_metrics("qnnpack", 0.12, 450.0, 20.0, current, rtfx=900.0))
    return folder


def test_pareto_front_drops_dominated_variants(metrics_dir, inputs):
    metrics, left_out = report.load_metrics(metrics_dir, ["qnnpack", "onednn"], inputs["current"])
    rows = report.summary_rows(metrics)
    assert [r["variant"] for r in rows] == ["fp32", "qnnpack", "onednn"] and left_out == []  # params.yaml order
    assert report.pareto_front(rows) == ["onednn", "fp32"]  # qnnpack: slower and worse than fp32
    assert report.pareto_front([{**rows[0], "wer": None}, rows[2]]) == ["onednn"]
    speed = report.throughput_speed(rows)
    assert speed.key == "rtfx_best" and speed.higher_is_better
    assert report.pareto_front(rows, speed) == ["qnnpack", "onednn", "fp32"]  # highest RTFx first
    assert report.throughput_columns(rows) == ["rtfx_batch1", "rtfx_batch16", "rtfx_streams2"]
    assert report.throughput_speed([rows[0], {**rows[1], "rtfx_best": None}]) is None  # a row not measured


def test_rows_say_which_model_and_eval_sets(metrics_dir, inputs):
    metrics, _ = report.load_metrics(metrics_dir, ["onednn", "qnnpack"], inputs["current"])
    [set_hash] = [s["sha256"] for s in inputs["current"].eval_sets]
    for row in report.summary_rows(metrics):
        assert row["model"] == f"embedded ({inputs['current'].model_sha256[:12]})"
        assert row["eval_sets"] == f"clips ({set_hash[:12]})"
    table = report.markdown_table(report.summary_rows(metrics)).splitlines()
    assert table[0].startswith("| variant | backend | wer |")
    assert table[0].endswith("| rtfx_best | rtfx_best_setting | batch_agreement | model | eval_sets | hardware | "
                             "skipped | rtfx_batch1 | rtfx_batch16 | rtfx_streams2 |")
    assert len(table) == 5 and "| onednn | eager | 0.11 |" in table[3] and "–" in table[2]  # fp32: no wer_vs_fp32
    assert report.caption(metrics) == "WER over real speech"


def test_columns_are_what_evaluate_writes():
    """Every figure column is a headline key of the evaluate stage's real metrics (not a stale name)."""
    from nemo_ptq.evaluation.evaluate import build_metrics
    from nemo_ptq.params import EvaluateParams

    overall = {"wer": 0.1, "cer": 0.05, "wer_vs_fp32": 0.01, "utterances": 2, "hours": 0.001}
    metrics = build_metrics(
        variant="onednn", backend="eager", scores={"overall": overall, "sets": {}, "kinds": {}},
        timings={"onednn": [0.01, 0.012], "fp32": [0.05, 0.06]}, params=EvaluateParams(), size_bytes=10,
        fp32_sizes={"fp32_nemo_bytes": 40, "fp32_state_dict_bytes": 38}, info=None, card={"source": "embedded"},
        model_sha256="0" * 64, eval_sets=[], deployment={"waveform": {"agreement": 1.0}},
        throughput={"batch": {"1": {"rtfx": 50.0, "agreement": 1.0}, "16": {"rtfx": 90.0, "agreement": 0.5}},
                    "streams": {"2": {"rtfx": 70.0}}})
    figures = [column for column in report.COLUMNS if column not in ("model", "eval_sets", "hardware", "skipped")]
    assert [column for column in figures if column not in metrics] == []
    assert report.hardware(metrics).endswith(f"], {EvaluateParams().threads} threads")  # CPU [identity], threads
    assert report.throughput_columns([metrics]) == ["rtfx_batch1", "rtfx_batch16", "rtfx_streams2"]
    assert metrics["rtfx_batch16"] == 90.0 and metrics["batch_agreement"] == 0.5
    assert metrics["rtfx_best"] == 70.0 and metrics["rtfx_best_setting"] == "2 streams"  # batch 16 changed words


def test_a_skipped_variant_is_a_row_with_its_reason(metrics_dir, inputs):
    current = inputs["current"]
    reason = "inference_precision bf16 needs AVX512_BF16 or AMX; on this CPU (avx2) the plugin runs f32"
    write_metrics(metrics_dir, {"variant": "ov_bf16", "backend": "ov", "skipped": reason,
                                "eval_sets": current.eval_sets,
                                "model": {"source": "embedded", "trained": True, "nemo_sha256": current.model_sha256}})
    metrics, _ = report.load_metrics(metrics_dir, ["onednn", "ov_bf16"], current)
    rows = report.summary_rows(metrics)
    assert rows[2]["skipped"] == reason and rows[2]["wer"] is None and rows[1]["skipped"] is None
    assert report.pareto_front(rows) == ["onednn", "fp32"]
    assert [p["variant"] for p in report.plot_points(rows, []) if p["wer_pct"] is not None] == ["fp32", "onednn"]
    assert reason in report.markdown_table(rows)


def test_eval_set_hash_covers_the_audio(tmp_path, inputs):
    other = write_prepared(tmp_path / "other", {"u1": b"one", "u2": b"TWO"})  # same manifest, other audio
    [before] = provenance.eval_sets(PreparedData.load(inputs["prepared"]))
    [after] = provenance.eval_sets(PreparedData.load(other))
    assert before["name"] == after["name"] and before["sha256"] != after["sha256"]
    (other / "clips" / "audio" / "u2.wav").unlink()
    with pytest.raises(DataError, match=r"u2.wav is missing: rerun the prepare stage"):
        report.Inputs.current(inputs["model"], other)
    with pytest.raises(DataError, match=r"nope.nemo is missing: run dvc repro fetch-pretrained"):
        report.Inputs.current(tmp_path / "nope.nemo", inputs["prepared"])


def test_a_row_from_another_eval_set_or_model_is_an_error(tmp_path, metrics_dir, inputs):
    other_sets = report.Inputs.current(inputs["model"], write_prepared(tmp_path / "p2", {"u1": b"new"}))
    write_metrics(metrics_dir, fake_metrics("onednn", 0.11, 22.0, 20.0, other_sets))
    with pytest.raises(DataError, match=r"onednn.json was measured on other contents of eval set clips: "
                                        r"run dvc repro evaluate@onednn"):
        report.load_metrics(metrics_dir, ["onednn"], inputs["current"])
    renamed = report.Inputs(inputs["current"].model_sha256, [{"name": "test_other", "kind": "real", "sha256": "0" * 64}])
    write_metrics(metrics_dir, fake_metrics("onednn", 0.11, 22.0, 20.0, renamed))
    with pytest.raises(DataError, match=r"other eval sets \(test_other; now clips\)"):
        report.load_metrics(metrics_dir, ["onednn"], inputs["current"])
    other_model = report.Inputs("f" * 64, inputs["current"].eval_sets)
    write_metrics(metrics_dir, fake_metrics("fp32", 0.10, 150.0, 76.0, other_model))
    with pytest.raises(DataError, match=r"fp32.json was measured on another model \(model.nemo sha256 ffffffffffff"):
        report.load_metrics(metrics_dir, [], inputs["current"])


def test_a_file_without_provenance_is_an_error(metrics_dir, inputs):
    old = fake_metrics("onednn", 0.11, 22.0, 20.0, inputs["current"])
    del old["eval_sets"], old["model"]["nemo_sha256"]  # written before metrics recorded provenance
    write_metrics(metrics_dir, old)
    with pytest.raises(DataError, match="another model .*none recorded.* and other eval sets"):
        report.load_metrics(metrics_dir, ["onednn"], inputs["current"])


def run_report(monkeypatch, tmp_path, inputs, metrics_dir, variants: list[str]) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"variants": {v: {"backend": "eager"} for v in variants}}))
    plots = tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", [
        "report.py", "--metrics", str(metrics_dir), "--params", str(params), "--model", str(inputs["model"]),
        "--prepared", str(inputs["prepared"]), "--out-plot", str(plots / "pareto.png"),
        "--out-table", str(tmp_path / "reports" / "summary.json"), "--out-points", str(plots / "pareto.json")])
    runpy.run_path(str(ROOT / "stages/report.py"), run_name="__main__")
    return plots


def test_report_rows_are_the_params_variants(metrics_dir, inputs, tmp_path, monkeypatch, capsys):
    # A variant removed from params.yaml, measured on other eval sets: its file stays but is not shown.
    stale = report.Inputs(inputs["current"].model_sha256, [{"name": "old_set", "kind": "real", "sha256": "1" * 64}])
    write_metrics(metrics_dir, fake_metrics("removed", 0.01, 1.0, 1.0, stale))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("NEMO_PTQ_MLFLOW_EXPERIMENT", raising=False)
    monkeypatch.delenv("NEMO_PTQ_MLFLOW", raising=False)
    plots = run_report(monkeypatch, tmp_path, inputs, metrics_dir, ["onednn", "qnnpack"])
    result = capsys.readouterr()
    assert (plots / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads((plots / "pareto.json").read_text())
    assert [p["variant"] for p in points] == ["fp32", "onednn", "qnnpack"]
    assert points[1] == {"variant": "onednn", "latency_ms_median": 22.0, "rtfx": 400.0, "wer": 0.11, "wer_pct": 11.0,
                         "size_mb": 20.0, "pareto": True, "pareto_rtfx": True}
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert list(summary["variants"]) == ["fp32", "onednn", "qnnpack"] and summary["pareto_front"] == ["onednn", "fp32"]
    assert f"not shown (not a variant in {tmp_path / 'params.yaml'}): {metrics_dir / 'removed.json'}" in result.out
    assert "| qnnpack |" in result.out and "| removed |" not in result.out and "old_set" not in result.out
    assert "Pareto front (latency vs WER): onednn, fp32" in result.out and "warning" not in result.err
    assert "Pareto front (rtfx_best vs WER): qnnpack, onednn, fp32" in result.out
    assert summary["pareto_front_rtfx"] == ["qnnpack", "onednn", "fp32"]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("nemo-ptq").experiment_id])
    assert run.info.run_name == "summary" and run.data.tags["variants"] == "fp32,onednn,qnnpack"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "summary")} == {
        "summary/pareto.png", "summary/summary.json", "summary/pareto.json"}


def test_latency_is_ranked_only_within_fp32s_hardware(metrics_dir, inputs, tmp_path, monkeypatch, capsys):
    """A row timed on other cores (same model name, other family) stays in the table but is not ranked."""
    here = {"hardware": "AMD EPYC [AuthenticAMD family 25 model 17 stepping 1]", "threads": 2}
    elsewhere = {"hardware": "AMD EPYC [AuthenticAMD family 26 model 2 stepping 1]", "threads": 2}
    current = inputs["current"]
    write_metrics(metrics_dir, {**fake_metrics("fp32", 0.10, 150.0, 76.0, current, rtfx=80.0), "system": here},
                  {**fake_metrics("onednn", 0.11, 22.0, 20.0, current, rtfx=400.0), "system": here},
                  {**fake_metrics("qnnpack", 0.09, 10.0, 20.0, current, rtfx=900.0), "system": elsewhere})
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    plots = run_report(monkeypatch, tmp_path, inputs, metrics_dir, ["onednn", "qnnpack"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    # qnnpack would dominate both on the front; measured elsewhere, it is on neither and not plotted.
    assert summary["pareto_front"] == ["onednn", "fp32"] and summary["pareto_front_rtfx"] == ["onednn", "fp32"]
    assert summary["not_ranked"] == {"qnnpack": f"{elsewhere['hardware']}, 2 threads"}
    assert summary["variants"]["qnnpack"]["hardware"] == f"{elsewhere['hardware']}, 2 threads"
    assert [p["variant"] for p in json.loads((plots / "pareto.json").read_text())] == ["fp32", "onednn"]
    assert f"not ranked (latency measured on other hardware than fp32's, {here['hardware']}, 2 threads): qnnpack" in out


def test_a_missing_variant_is_one_error_line_and_no_output(metrics_dir, inputs, tmp_path, monkeypatch, capsys):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "pareto.png").write_bytes(b"stale")
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    with pytest.raises(SystemExit) as exit_info:
        run_report(monkeypatch, tmp_path, inputs, metrics_dir, ["onednn", "ort_int8"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {metrics_dir / 'ort_int8.json'} is missing: run dvc repro evaluate@ort_int8"
    assert not (tmp_path / "plots" / "pareto.png").exists()
