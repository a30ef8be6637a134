"""Shared fixtures: small NeMo models built from config, saved once per test session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from nemo_ptq.cli import quiet_environment

quiet_environment()
# Stage commands in dvc.yaml call `python` and tests call `dvc`: both must be this environment's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def randomize_batchnorm(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics so BN folding is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="session")
def tiny_model():
    from nemo_ptq.models.architectures import build_quartznet

    return randomize_batchnorm(build_quartznet("quartznet_tiny"))


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory, tiny_model) -> Path:
    """The tiny model as a .nemo, with the card.json that fetch-pretrained would write beside it."""
    from nemo_ptq.models.loading import ModelSource, describe

    path = tmp_path_factory.mktemp("models") / "tiny.nemo"
    tiny_model.save_to(str(path))
    card = describe(tiny_model, ModelSource.parse("arch:quartznet_tiny")).to_json()
    (path.parent / "card.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="session")
def tiny_fused(tiny_model):
    from nemo_ptq.models.fused import rewrite

    return rewrite(tiny_model)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from nemo_ptq.models.architectures_other import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def nemo_ctc(cfg):
    """A random-weight NeMo BPE CTC model, its `NemoCTC` wrapper (as the fuse stage hands it on)
    and its model card."""
    from nemo_ptq.models.architectures_other import build_bpe_ctc
    from nemo_ptq.models.fp32 import NemoCTC
    from nemo_ptq.models.loading import ModelSource, describe

    model = build_bpe_ctc(cfg)
    return model, NemoCTC(model).eval(), describe(model, ModelSource("arch", "test")).to_json()


@pytest.fixture(scope="session")
def citrinet(tokenizer_dir):
    """A small Citrinet (squeeze-excite, strided residuals, 80 features): (model, NemoCTC, card)."""
    from nemo_ptq.models.architectures_other import citrinet_config

    return nemo_ctc(citrinet_config(tokenizer_dir, features=80))


def stage_env() -> dict[str, str]:
    """Environment for running stage scripts as subprocesses (telemetry off, no MLflow writes)."""
    env = dict(os.environ)
    env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "NEMO_PTQ_MLFLOW": "off"})
    return env
