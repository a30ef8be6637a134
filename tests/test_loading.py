"""Model sources: parsing, local .nemo restore, sha256 pinning, offline errors, the model card."""

import hashlib
import shutil
import tarfile

import pytest
import torch
import yaml

from nemo_ptq.errors import ConfigError, ModelSourceError
from nemo_ptq.models import loading
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY
from nemo_ptq.models.loading import ModelSource, describe, fetch, load_nemo, sha256_of
from nemo_ptq.params import ModelParams, load_config


@pytest.mark.parametrize("text, kind, value", [
    ("embedded", "embedded", ""),
    ("file:models/x.nemo", "file", "models/x.nemo"),
    ("ngc:QuartzNet15x5Base-En", "ngc", "QuartzNet15x5Base-En"),
    ("hf:nvidia/stt_en_quartznet15x5", "hf", "nvidia/stt_en_quartznet15x5"),
    ("arch:quartznet_tiny", "arch", "quartznet_tiny"),
])
def test_parse_sources(text, kind, value):
    source = ModelSource.parse(text)
    assert (source.kind, source.value) == (kind, value)
    assert str(source) == text


@pytest.mark.parametrize("text", ["", "s3:bucket/x.nemo", "file:", "QuartzNet15x5Base-En"])
def test_unknown_source_lists_the_valid_forms(text):
    with pytest.raises(ModelSourceError, match="use one of: embedded, file:<path.nemo>"):
        ModelSource.parse(text)


def test_missing_and_corrupt_nemo_files(tmp_path):
    with pytest.raises(ModelSourceError, match="not found"):
        load_nemo(tmp_path / "absent.nemo")
    corrupt = tmp_path / "corrupt.nemo"
    corrupt.write_bytes(b"\x00not a tar archive" * 100)
    with pytest.raises(ModelSourceError, match="not a valid .nemo archive"):
        load_nemo(corrupt)


def test_hub_source_offline_says_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match=r"could not fetch hf:nvidia/no_such_model .*file:<path.nemo>"):
        fetch(ModelSource.parse("hf:nvidia/no_such_model"))


def test_local_file_restores_and_card_describes_it(tiny_nemo):
    model, sha256 = fetch(ModelSource.parse(f"file:{tiny_nemo}"))
    assert sha256 == hashlib.sha256(tiny_nemo.read_bytes()).hexdigest()
    card = describe(model, ModelSource.parse(f"file:{tiny_nemo}"), sha256)
    assert card.to_json()["sha256"] == sha256
    assert card.model_class == "EncDecCTCModel"
    assert card.encoder == "ConvASREncoder"
    assert card.vocabulary == list(QUARTZNET_VOCABULARY)
    assert card.blank_id == len(QUARTZNET_VOCABULARY)
    assert (card.tokenizer, card.sample_rate, card.feature_dim, card.subsampling_factor) == ("char", 16000, 64, 2)
    assert card.trained and card.parameters == sum(p.numel() for p in model.parameters())


def test_architecture_source_is_flagged_untrained():
    source = ModelSource.parse("arch:quartznet_tiny")
    model, sha256 = fetch(source)
    card = describe(model, source, sha256)
    assert not card.trained and "random weights" in card.notes and card.sha256 is None
    with pytest.raises(ModelSourceError, match="no checkpoint file to pin: remove model.sha256"):
        fetch(source, "0" * 64)
    with pytest.raises(ModelSourceError, match="choose one of: quartznet_15x5"):
        fetch(ModelSource.parse("arch:quartznet_99x9"))


class _ConfigOnlyModel(torch.nn.Module):
    """Just what describe() and model_sample_rate() read: a config, a vocabulary, a subsampling factor."""

    def __init__(self, cfg: dict):
        from omegaconf import OmegaConf

        super().__init__()
        self.cfg = OmegaConf.create(cfg)
        self.encoder, self.decoder = torch.nn.Module(), torch.nn.Module()
        self.encoder.subsampling_factor, self.decoder.vocabulary = 2, [" ", "a"]


@pytest.mark.parametrize("cfg, rate", [
    ({"preprocessor": {"sample_rate": 8000}, "sample_rate": 22050}, 8000),
    ({"preprocessor": {}, "sample_rate": 22050}, 22050),
    ({"preprocessor": {}}, 16000),  # NeMo's preprocessors default to 16 kHz
])
def test_one_sample_rate_rule_for_the_card_and_prepare(cfg, rate):
    from nemo_ptq.data.features import model_sample_rate

    model = _ConfigOnlyModel(cfg)
    assert model_sample_rate(model) == rate
    assert describe(model, ModelSource.parse("file:x.nemo")).sample_rate == rate


def test_pinned_sha256_accepts_the_file_and_rejects_another_before_opening_it(tiny_nemo, tmp_path, monkeypatch):
    pinned = hashlib.sha256(tiny_nemo.read_bytes()).hexdigest()
    _, sha256 = fetch(ModelSource.parse(f"file:{tiny_nemo}"), pinned.upper())  # sha256sum case does not matter
    assert sha256 == pinned
    other = tmp_path / "other.nemo"
    shutil.copy(tiny_nemo, other)
    with other.open("ab") as f:
        f.write(b"\0" * 1024)  # still a valid tar, different bytes
    assert tarfile.is_tarfile(other)

    def must_not_restore(path):
        raise AssertionError(f"{path} was opened before its hash was checked")

    monkeypatch.setattr(loading, "_restore", must_not_restore)
    message = rf"other.nemo has sha256 [0-9a-f]{{64}}, but model.sha256 pins {pinned}"
    with pytest.raises(ModelSourceError, match=message):
        fetch(ModelSource.parse(f"file:{other}"), pinned)


@pytest.mark.parametrize("text", ["ngc:QuartzNet15x5Base-En", "hf:nvidia/stt_en_quartznet15x5"])
def test_downloaded_checkpoint_is_hashed_and_pinned(text, tiny_nemo, monkeypatch):
    # The real download needs the network; everything after it is the real code path.
    downloads = []
    monkeypatch.setattr(loading, "_download", lambda kind, name: downloads.append((kind, name)) or tiny_nemo)
    source = ModelSource.parse(text)
    pinned = hashlib.sha256(tiny_nemo.read_bytes()).hexdigest()
    model, sha256 = fetch(source, pinned)
    assert downloads == [(source.kind, source.value)] and sha256 == pinned
    assert describe(model, source, sha256).vocabulary == list(QUARTZNET_VOCABULARY)
    with pytest.raises(ModelSourceError, match=f"{tiny_nemo} has sha256 {pinned}, but model.sha256 pins f{{64}}"):
        fetch(source, "f" * 64)


def test_hf_repo_without_a_nemo_file_restores_from_its_folder(tiny_nemo, tmp_path, monkeypatch):
    folder = tmp_path / "snapshot"
    with tarfile.open(tiny_nemo) as archive:
        archive.extractall(folder, filter="data")
    listing = "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(folder).as_posix()}\n"
                      for f in sorted(p for p in folder.rglob("*") if p.is_file()))
    monkeypatch.setattr(loading, "_download", lambda kind, name: folder)
    model, sha256 = fetch(ModelSource.parse("hf:someone/tiny"))
    assert sha256 == sha256_of(folder) == hashlib.sha256(listing.encode()).hexdigest()
    assert model.decoder.vocabulary == list(QUARTZNET_VOCABULARY)
    (folder / "model_config.yaml").write_text((folder / "model_config.yaml").read_text() + "# edited\n")
    assert sha256_of(folder) != sha256


def test_model_params_checkpoint_and_sha256(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def parse(**values):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": values}))
        return load_config(ModelParams, "model", tmp_path / "params.yaml")

    assert parse(source="embedded") == ModelParams("embedded", "data/embedded/model.nemo", None)
    assert parse(source="file:x.nemo", checkpoint=str(tmp_path / "x.nemo")).checkpoint == str(tmp_path / "x.nemo")
    with pytest.raises(ConfigError, match="name different files: set checkpoint to the same path"):
        parse(source="file:x.nemo")
    with pytest.raises(ConfigError, match="DVC does not expand ~"):
        parse(source="file:~/x.nemo", checkpoint="~/x.nemo")
    for bad in ("abc", "g" * 64, 1234):
        with pytest.raises(ConfigError, match="sha256 must be 64 hex digits"):
            parse(source="embedded", sha256=bad)
