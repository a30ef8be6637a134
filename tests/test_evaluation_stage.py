"""The evaluate stage on a tiny random-weight QuartzNet and a fake prepared dir: FP32 baseline, a
variant through a fake backend registered for the test, MLflow mirroring, and the error path."""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nemo_ptq.backends import base
from nemo_ptq.backends.base import ArtifactInfo, Backend
from nemo_ptq.evaluation.wer import wer

ROOT = Path(__file__).resolve().parents[1]
SETS = {"clips": "real", "tts": "synthetic"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """data/model (tiny .nemo + card.json), data/prepared (2 sets x 2 utterances) and params.yaml."""
    import torch

    from nemo_ptq.data.audio import to_pcm16, write_wav
    from nemo_ptq.evaluation.latency import speech_like_signal
    from nemo_ptq.models.architectures import build_quartznet
    from nemo_ptq.models.loading import ModelSource, describe

    root = tmp_path_factory.mktemp("ws")
    model = build_quartznet("quartznet_tiny")
    (root / "data/model").mkdir(parents=True)
    model.save_to(str(root / "data/model/model.nemo"))
    card = describe(model, ModelSource.parse("arch:quartznet_tiny")).to_json()
    (root / "data/model/card.json").write_text(json.dumps(card))

    prepared = root / "data/prepared"
    summary = {"sample_rate": 16000, "feature_dim": 64, "sets": []}
    for k, (name, kind) in enumerate(SETS.items()):
        (prepared / name / "features").mkdir(parents=True)
        (prepared / name / "audio").mkdir()
        rows = []
        for i in range(2):
            audio = torch.from_numpy(speech_like_signal(1.0 + 0.5 * i, 16000, seed=10 * k + i))[None]
            with torch.inference_mode():
                features, length = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
            np.save(prepared / name / "features" / f"u{i}.npy", features[0, :, : int(length[0])].numpy())
            write_wav(prepared / name / "audio" / f"u{i}.wav", to_pcm16(audio[0].numpy()), 16000)
            rows.append({"id": f"u{i}", "audio_filepath": f"audio/u{i}.wav", "duration": audio.shape[1] / 16000,
                         "text": f"Hello, World {i}!", "text_norm": f"hello world {i}", "source": "test"})
        (prepared / name / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary["sets"].append({"name": name, "kind": kind, "role": "eval", "utterances": 2, "seconds": 2.5})
    (prepared / "summary.json").write_text(json.dumps(summary))
    (root / "data/quantized/fake8").mkdir(parents=True)
    (root / "data/quantized/fake8/weights.bin").write_bytes(b"\0" * 1000)
    (root / "params.yaml").write_text(
        # no streams: a stream process would not know the fake backend, registered only in this one
        "evaluate: {threads: 1, latency_audio_s: 1.0, warmup_runs: 1, timed_runs: 3,\n"
        "           throughput: {batch_sizes: [1, 2], streams: [], timed_passes: 1}}\n"
        "variants:\n  fake8: {backend: fake, noise: 5.0}\n"
    )
    (root / ".dvc").mkdir()
    return root


@dataclass(frozen=True)
class FakeConfig:
    noise: float = 0.0
    needs_native_bf16: bool = False


class FakeBackend(Backend):
    """'Quantizes' by adding noise to every one of NeMo's FP32 log-probs, so hypotheses differ from FP32."""

    name = "fake"
    config_class = FakeConfig
    calibration_file = "none"

    def calibration_sample(self):
        return None

    def skip_reason(self, found):
        return "needs native bf16" if self.config.needs_native_bf16 and not found.native_bf16 else None

    def observe(self, fused, features, payload):
        raise NotImplementedError

    def convert(self, fused, payload, out_dir):
        raise NotImplementedError

    def load(self, artifact_dir, threads):
        from nemo_ptq.evaluation.fp32 import NemoEagerRunner, load_fp32

        runner = NemoEagerRunner(load_fp32(Path(artifact_dir).parents[1] / "model"))
        rng = np.random.default_rng(0)

        def run(features):
            log_probs = runner(features)
            return log_probs + self.config.noise * rng.standard_normal(log_probs.shape).astype("f")

        return run

    def describe(self, artifact_dir):
        layers = [{"name": "encoder.0", "runtime_names": ["e0"], "precision": "int8", "macs": 9},
                  {"name": "decoder", "runtime_names": ["d"], "precision": "fp32", "macs": 1}]
        return ArtifactInfo(size_bytes=1000, int8_weight_layer_fraction=0.5, int8_weight_mac_fraction=0.9,
                            layers=layers, notes="fake")


def run_stage_in_process(workspace: Path, monkeypatch, *args: str) -> None:
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    runpy.run_path(str(ROOT / "stages/evaluate.py"), run_name="__main__")


def test_evaluate_fp32_and_a_variant(workspace, monkeypatch, tmp_path):
    monkeypatch.setitem(base._REGISTRY, "fake", FakeBackend)  # restored after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("NEMO_PTQ_MLFLOW_EXPERIMENT", "test-evaluate")
    common = ["--model", "data/model", "--prepared", "data/prepared", "--params", "params.yaml"]
    run_stage_in_process(workspace, monkeypatch, "--variant", "fp32", *common,
                         "--out-metrics", "metrics/fp32.json", "--out-transcripts", "data/evaluation/fp32")
    run_stage_in_process(workspace, monkeypatch, "--variant", "fake8", *common,
                         "--artifact", "data/quantized/fake8", "--fp32-transcripts", "data/evaluation/fp32",
                         "--out-metrics", "metrics/fake8.json", "--out-transcripts", "data/evaluation/fake8")

    fp32 = json.loads((workspace / "metrics/fp32.json").read_text())
    fake = json.loads((workspace / "metrics/fake8.json").read_text())
    headline = {"variant", "backend", "wer", "cer", "utterances", "hours", "latency_ms_median", "latency_ms_p90",
                "rtf", "speedup_vs_fp32", "fp32_latency_ms_median", "size_mb", "size_ratio_vs_fp32",
                "int8_weight_layer_fraction", "int8_weight_mac_fraction"}
    assert headline <= set(fp32) and headline | {"wer_vs_fp32"} <= set(fake)
    assert "wer_vs_fp32" not in fp32
    # wer_vs_fp32 compares the variant's hypotheses with the FP32 run's, pooled over both sets
    hypotheses = {variant: [row["hypothesis"] for name in SETS for row in map(
        json.loads, (workspace / f"data/evaluation/{variant}/{name}.jsonl").read_text().splitlines())]
        for variant in ("fp32", "fake8")}
    assert hypotheses["fake8"] != hypotheses["fp32"], "noise on every log-prob should change the output"
    assert fake["wer_vs_fp32"] == pytest.approx(wer(hypotheses["fp32"], hypotheses["fake8"]), rel=1e-5)
    assert fake["wer_vs_fp32"] > 0
    assert fp32["backend"] == "nemo-eager" and fp32["size_ratio_vs_fp32"] == 1.0
    assert fp32["speedup_vs_fp32"] == 1.0
    assert fake["speedup_vs_fp32"] == pytest.approx(fake["fp32_latency_ms_median"] / fake["latency_ms_median"],
                                                     rel=1e-4)
    # runs_ms are kept to 1 us, so their median can differ from the exact one by up to 0.5 us
    assert fake["latency_ms_median"] == pytest.approx(float(np.median(fake["latency"]["runs_ms"])), abs=6e-4)
    assert fp32["throughput"]["padding"] == "masked" and fake["throughput"]["padding"] == "not masked"
    assert fake["throughput"]["streams"] == {} and fake["rtfx_batch2"] > 0 and "rtfx_streams1" not in fake
    assert fake["size_mb"] == 0.001 and fake["int8_weight_mac_fraction"] == 0.9
    assert [(layer["name"], layer["precision"]) for layer in fake["layers"]] == [("encoder.0", "int8"),
                                                                                ("decoder", "fp32")]
    assert fake["utterances"] == 4 and set(fake["sets"]) == set(SETS)
    assert {name: s["kind"] for name, s in fake["sets"].items()} == SETS and set(fake["kinds"]) == {"real", "synthetic"}
    assert len(fake["latency"]["runs_ms"]) == len(fake["latency"]["fp32_runs_ms"]) == 3
    assert fake["latency"]["threads"] == 1 and len(fp32["latency"]["runs_ms"]) == 3
    assert fp32["size"]["fp32_state_dict_bytes"] > 0 and fp32["model"]["trained"] is False
    nemo_sha = hashlib.sha256((workspace / "data/model/model.nemo").read_bytes()).hexdigest()
    assert fp32["model"]["nemo_sha256"] == fake["model"]["nemo_sha256"] == nemo_sha  # what the report checks
    assert [s["name"] for s in fake["eval_sets"]] == list(SETS) and fake["eval_sets"] == fp32["eval_sets"]
    assert set(fp32["system"]) == {"cpu", "cpu_identity", "hardware", "isa_profile", "logical_cpus", "threads", "isa",
                                   "versions"}
    assert fp32["system"]["threads"] == fp32["latency"]["threads"] and fp32["system"]["cpu"] in fp32["system"]["hardware"]
    assert any(v.startswith("torch==") for v in fp32["system"]["versions"])
    rows = [json.loads(line) for line in (workspace / "data/evaluation/fake8/clips.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["u0", "u1"] and rows[0]["reference"] == "hello world 0"

    import mlflow

    runs = mlflow.search_runs(experiment_names=["test-evaluate"], output_format="list")
    assert sorted(run.data.tags["variant"] for run in runs) == ["fake8", "fp32"]
    run = next(r for r in runs if r.data.tags["variant"] == "fake8")
    assert run.data.params["options.noise"] == "5.0" and run.data.params["backend"] == "fake"
    assert run.data.params["evaluate.timed_runs"] == "3"
    assert run.data.metrics["wer_vs_fp32"] == fake["wer_vs_fp32"] and run.data.metrics["sets.clips.utterances"] == 2
    assert run.data.tags["set_kinds"] == "clips=real,tts=synthetic" and len(run.data.tags["stage_fingerprint"]) == 64
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "transcripts")}
    assert artifacts == {"transcripts/clips.jsonl", "transcripts/tts.jsonl"}


@pytest.mark.parametrize("profile, skipped", [("avx2", True), ("avx512_bf16", False)])
def test_a_variant_the_cpu_would_emulate_is_skipped_with_its_reason(workspace, monkeypatch, tmp_path, profile,
                                                                    skipped):
    from nemo_ptq import cpu

    monkeypatch.setitem(base._REGISTRY, "fake", FakeBackend)
    monkeypatch.setattr(cpu, "detect", lambda: cpu.Cpu(model="Test CPU", profile=profile, isa=[]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("NEMO_PTQ_MLFLOW_EXPERIMENT", "test-skip")
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {threads: 1, latency_audio_s: 1.0, warmup_runs: 1, timed_runs: 3,\n"
                      "           throughput: {batch_sizes: [1], streams: [], timed_passes: 1}}\n"
                      "variants:\n  fake_bf16: {backend: fake, needs_native_bf16: true}\n")
    common = ["--model", "data/model", "--prepared", "data/prepared", "--params", str(params)]
    run_stage_in_process(workspace, monkeypatch, "--variant", "fp32", *common,
                         "--out-metrics", "metrics/fp32.json", "--out-transcripts", "data/evaluation/fp32")
    out = tmp_path / "fake_bf16"
    run_stage_in_process(workspace, monkeypatch, "--variant", "fake_bf16", *common,
                         "--artifact", "data/quantized/fake8", "--fp32-transcripts", "data/evaluation/fp32",
                         "--out-metrics", str(out / "metrics.json"), "--out-transcripts", str(out / "transcripts"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["system"]["isa_profile"] == profile
    if skipped:
        assert metrics["skipped"] == "needs native bf16" and "wer" not in metrics and "latency_ms_median" not in metrics
        assert list((out / "transcripts").iterdir()) == []
        fp32 = json.loads((workspace / "metrics/fp32.json").read_text())
        assert metrics["model"] == fp32["model"] and metrics["eval_sets"] == fp32["eval_sets"]  # a valid report row
    else:
        assert "skipped" not in metrics and metrics["wer"] >= 0 and metrics["latency_ms_median"] > 0

    import mlflow

    [run] = [r for r in mlflow.search_runs(experiment_names=["test-skip"], output_format="list")
             if r.data.tags["variant"] == "fake_bf16"]
    assert run.data.tags.get("skipped") == ("needs native bf16" if skipped else None)
    assert run.data.tags["isa_profile"] == profile


def test_bad_input_is_one_error_line_and_no_output(workspace, monkeypatch, capsys, tmp_path):
    out = tmp_path / "m.json"
    out.write_text("stale")
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    with pytest.raises(SystemExit) as exit_info:
        run_stage_in_process(workspace, monkeypatch, "--variant", "fp32", "--model", "data/model",
                             "--prepared", "missing/prepared", "--out-metrics", str(out),
                             "--out-transcripts", str(tmp_path / "t"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert "dvc repro prepare" in err[0] and not out.exists() and not (tmp_path / "t").exists()


def test_unknown_variant_lists_the_choices():
    from nemo_ptq.errors import ConfigError
    from nemo_ptq.evaluation.evaluate import variant_entry

    with pytest.raises(ConfigError, match="choose one of: fp32, fake8"):
        variant_entry({"fake8": {"backend": "fake"}}, "onednn")
    with pytest.raises(ConfigError, match="reserved"):
        variant_entry({"fp32": {"backend": "fake"}}, "fp32")
