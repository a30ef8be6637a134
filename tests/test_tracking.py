"""Where MLflow runs go (env override, repo root, DVC experiment copies) and what a run holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nemo_ptq import tracking
from nemo_ptq.errors import ConfigError


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (root / "src/deep").mkdir(parents=True)
    return root


def test_env_uri_wins(repo):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tracking.tracking_uri(repo, env) == "http://127.0.0.1:5000"
    assert tracking.artifact_location(repo, env) is None


def test_default_store_is_at_the_repo_root(repo):
    assert tracking.tracking_uri(repo / "src/deep", {}) == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert tracking.artifact_location(repo / "src", {}) == (repo.resolve() / "mlartifacts").as_uri()


def test_dvc_experiment_copy_resolves_to_the_main_repo(repo):
    # `dvc exp run --queue` runs stages in <repo>/.dvc/tmp/exps/<tmp>/, a copy with its own .dvc/.
    copy = repo / ".dvc/tmp/exps/tmpab12cd"
    (copy / ".dvc").mkdir(parents=True)
    (copy / "stages").mkdir()
    assert tracking.repo_root(copy / "stages", {}) == repo.resolve()
    # DVC also passes the main root as DVC_ROOT; it takes precedence over cwd.
    assert tracking.repo_root(copy, {"DVC_ROOT": str(repo)}) == repo.resolve()


def test_no_repository_is_a_typed_error(tmp_path):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        tracking.repo_root(tmp_path, {})


def test_switch_and_failure_only_warn(capsys, monkeypatch):
    assert tracking.enabled({}) and not tracking.enabled({"NEMO_PTQ_MLFLOW": "off"})

    def broken(**_):
        raise OSError("disk full")

    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "on")
    tracking.log_safely(broken)
    assert "warning: MLflow logging skipped (OSError: disk full)" in capsys.readouterr().err
    monkeypatch.setenv("NEMO_PTQ_MLFLOW", "off")
    tracking.log_safely(broken)
    assert capsys.readouterr().err == ""


def test_a_mapping_keyed_by_regexes_is_one_param():
    """MLflow refuses `^`, `(`, `\\` in param names: ort's calibration.per_layer is logged as JSON."""
    per_layer = {r"^(blocks\.1\.body\.0\.conv)$": "percentile"}
    flat = tracking.flatten({"calibration": {"method": "minmax", "per_layer": per_layer}})
    assert flat == {"calibration.method": "minmax", "calibration.per_layer": json.dumps(per_layer)}
    assert all(tracking.PARAM_NAME.fullmatch(name) for name in flat)


def test_flatten_and_fingerprint(tmp_path):
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"})
    assert flat == {"a.b": 1, "d": "x"} and tracking.numeric({**flat, "e": True, "f": None}) == {"a.b": 1.0}
    (tmp_path / "art").mkdir()
    (tmp_path / "art/w.bin").write_bytes(b"1")
    first = tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])
    assert first == tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])
    assert first != tracking.fingerprint({"engine": "x86"}, [tmp_path / "art"])
    (tmp_path / "art/w.bin").write_bytes(b"2")
    assert first != tracking.fingerprint({"engine": "onednn"}, [tmp_path / "art"])


def test_run_from_an_experiment_copy_lands_in_the_main_store(repo, monkeypatch, tmp_path):
    copy = repo / ".dvc/tmp/exps/tmpqueued"
    (copy / ".dvc").mkdir(parents=True)
    metrics = {"variant": "onednn", "wer": 0.1, "sets": {"clips": {"kind": "real", "wer": 0.2}},
               "layers": [{"name": "c", "precision": "int8"}], "model": {"trained": True}}
    (copy / "m.json").write_text(json.dumps(metrics))
    (copy / "tr").mkdir()
    (copy / "tr/clips.jsonl").write_text("{}\n")
    monkeypatch.chdir(copy)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "NEMO_PTQ_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "bandy-scup")
    run_id = tracking.log_evaluation(
        variant="onednn", params={"backend": "eager", "options": {"engine": "onednn", "calibration": {"seed": 0}}},
        metrics=metrics, inputs=[copy / "m.json"], metrics_file=copy / "m.json", transcripts_dir=copy / "tr",
    )
    assert not (copy / "mlflow.db").exists() and (repo / "mlflow.db").is_file()
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert run.data.params == {"backend": "eager", "options.engine": "onednn", "options.calibration.seed": "0"}
    assert run.data.metrics == {"wer": 0.1, "sets.clips.wer": 0.2}
    assert run.data.tags["dvc.exp_name"] == "bandy-scup" and run.data.tags["set_kinds"] == "clips=real"
    assert run.info.artifact_uri.startswith((repo.resolve() / "mlartifacts").as_uri())
    assert (repo / "mlartifacts").is_dir()
    with sqlite3.connect(repo / "mlflow.db") as db:
        assert db.execute("select name from experiments where name = 'nemo-ptq'").fetchone()


def _log(root, variant, backend, options, **metrics):
    metrics = {"variant": variant, "wer": 0.1, **metrics}
    (root / f"{variant}.json").write_text(json.dumps(metrics))
    (root / "tr").mkdir(exist_ok=True)
    return tracking.log_evaluation(variant=variant, params={"variant": variant, "backend": backend, "options": options},
                                   metrics=metrics, inputs=[root / f"{variant}.json"],
                                   metrics_file=root / f"{variant}.json", transcripts_dir=root / "tr")


def test_runs_name_their_calibration_and_the_experiment_opens_on_the_runs_table(repo, monkeypatch):
    monkeypatch.chdir(repo)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "NEMO_PTQ_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(name, raising=False)
    calibration = {"num_utterances": 4, "seed": 0, "observer": "histogram", "per_channel": True}
    runs = [_log(repo, "fp32", "nemo-eager", {}),
            _log(repo, "onednn", "eager", {"engine": "onednn", "calibration": calibration}),
            _log(repo, "onednn", "eager", {"engine": "onednn", "calibration": dict(calibration, num_utterances=32)}),
            _log(repo, "ort_fp32", "ort", {"precision": "fp32"})]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    names = [client.get_run(run_id).info.run_name for run_id in runs]
    assert names == ["fp32 | nemo-eager",
                     "onednn | num_utterances=4 seed=0 observer=histogram per_channel=true | eager engine=onednn",
                     "onednn | num_utterances=32 seed=0 observer=histogram per_channel=true | eager engine=onednn",
                     "ort_fp32 | ort precision=fp32"]
    tags = client.get_run(runs[2]).data.tags
    assert (tags["backend"], tags["backend_options"]) == ("eager", "engine=onednn")
    assert tags["calibration"] == "num_utterances=32 seed=0 observer=histogram per_channel=true"
    assert client.get_run(runs[3]).data.tags["calibration"] == "none"

    experiment = client.get_experiment_by_name("nemo-ptq")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.nemo-ptq"])
    assert view["selectedColumns"][:2] == ["tags.`calibration`", "metrics.`wer_vs_fp32`"]
    assert view["columnOrder"][:3] == ["attributes.`Run Name`", "runDateAndNestInfo", "tags.`calibration`"]
    assert view["columnWidths"]["tags.`calibration`"] == 420
    url = tracking.runs_view_url(experiment.experiment_id, "http://127.0.0.1:5000/")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=nemo-ptq")

    # A kind chosen in the UI stays; the saved view follows the code.
    client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "genai_development")
    client.set_experiment_tag(experiment.experiment_id, "mlflow.sharedViewState.nemo-ptq", "{}")
    _log(repo, "x86", "eager", {"engine": "x86"})
    tags = client.get_experiment(experiment.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "genai_development"
    assert json.loads(tags["mlflow.sharedViewState.nemo-ptq"]) == tracking.runs_view()


def test_view_columns_are_metrics_that_evaluate_writes():
    metrics = json.loads((Path(__file__).resolve().parents[1] / "metrics" / "onednn.json").read_text())
    shown = {name.partition(".")[2] for name in tracking.VIEW_COLUMNS if name.startswith("metrics.")}
    assert len(shown) == 6 and shown <= set(tracking.numeric(tracking.flatten(metrics)))
