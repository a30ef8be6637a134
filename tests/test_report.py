"""The report stage on three fake metrics files: table, Pareto front, plot and points."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from nemo_ptq import report

ROOT = Path(__file__).resolve().parents[1]


def fake_metrics(variant: str, wer: float, latency: float, size: float) -> dict:
    return {"variant": variant, "backend": "nemo-eager" if variant == "fp32" else "eager", "wer": wer, "cer": wer / 2,
            "latency_ms_median": latency, "latency_ms_p90": latency * 1.1, "speedup_vs_fp32": 150 / latency,
            "size_mb": size, "size_ratio_vs_fp32": size / 76, "int8_conv_fraction": 0.0 if variant == "fp32" else 1.0,
            "int8_mac_fraction": 0.0 if variant == "fp32" else 1.0,
            "sets": {"clips": {"kind": "real"}}, "model": {"trained": True}}


@pytest.fixture()
def metrics_dir(tmp_path) -> Path:
    folder = tmp_path / "metrics"
    folder.mkdir()
    for m in (fake_metrics("fp32", 0.10, 150.0, 76.0), fake_metrics("onednn", 0.11, 22.0, 20.0),
              fake_metrics("qnnpack", 0.12, 450.0, 20.0)):
        (folder / f"{m['variant']}.json").write_text(json.dumps(m))
    (folder / "summary.json").write_text(json.dumps({"stale": True}))  # the report's own output: skipped
    return folder


def test_pareto_front_drops_dominated_variants(metrics_dir):
    rows = report.summary_rows(report.load_metrics(metrics_dir))
    assert [r["variant"] for r in rows] == ["fp32", "onednn", "qnnpack"]
    assert report.pareto_front(rows) == ["onednn", "fp32"]  # qnnpack: slower and worse than fp32
    assert report.pareto_front([{**rows[0], "wer": None}, rows[1]]) == ["onednn"]


def test_markdown_table_and_caption(metrics_dir):
    metrics = report.load_metrics(metrics_dir)
    table = report.markdown_table(report.summary_rows(metrics)).splitlines()
    assert table[0].startswith("| variant | backend | wer |") and len(table) == 5
    assert "| onednn | eager | 0.11 |" in table[3] and "–" in table[2]  # fp32 has no wer_vs_fp32
    assert report.caption(metrics) == "WER over real speech, batch-1 latency"


def run_report(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["report.py", *args])
    runpy.run_path(str(ROOT / "stages/report.py"), run_name="__main__")


def test_report_stage_writes_plot_points_and_table(metrics_dir, tmp_path, monkeypatch, capsys):
    plots = tmp_path / "plots"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("NEMO_PTQ_MLFLOW_EXPERIMENT", raising=False)
    run_report(monkeypatch, "--metrics", str(metrics_dir), "--out-plot", str(plots / "pareto.png"),
               "--out-table", str(metrics_dir / "summary.json"), "--out-points", str(plots / "pareto.json"))
    result = capsys.readouterr()
    assert (plots / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = json.loads((plots / "pareto.json").read_text())
    assert points[1] == {"variant": "onednn", "latency_ms_median": 22.0, "wer": 0.11, "wer_pct": 11.0,
                         "size_mb": 20.0, "pareto": True}
    summary = json.loads((metrics_dir / "summary.json").read_text())
    assert set(summary["variants"]) == {"fp32", "onednn", "qnnpack"} and summary["pareto_front"] == ["onednn", "fp32"]
    assert "| qnnpack |" in result.out and "Pareto front (latency vs WER): onednn, fp32" in result.out
    assert "warning" not in result.err

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("nemo-ptq").experiment_id])
    assert run.info.run_name == "summary" and run.data.tags["variants"] == "fp32,onednn,qnnpack"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "summary")} == {
        "summary/pareto.png", "summary/summary.json", "summary/pareto.json"}


def test_report_without_metrics_is_one_error_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "p.png").write_bytes(b"stale")
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    with pytest.raises(SystemExit) as exit_info:
        run_report(monkeypatch, "--metrics", str(tmp_path / "metrics"), "--out-plot", str(tmp_path / "p.png"),
                   "--out-table", str(tmp_path / "s.json"), "--out-points", str(tmp_path / "p.json"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().startswith("error: no evaluate metrics")
    assert not (tmp_path / "p.png").exists()
