"""Model sources: parsing, local .nemo restore, offline errors, the model card."""

import pytest
import torch

from nemo_ptq.errors import ModelSourceError
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY
from nemo_ptq.models.loading import ModelSource, describe, fetch, load_nemo


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
    model = fetch(ModelSource.parse(f"file:{tiny_nemo}"))
    card = describe(model, ModelSource.parse(f"file:{tiny_nemo}"))
    assert card.model_class == "EncDecCTCModel"
    assert card.encoder == "ConvASREncoder"
    assert card.vocabulary == list(QUARTZNET_VOCABULARY)
    assert card.blank_id == len(QUARTZNET_VOCABULARY)
    assert (card.tokenizer, card.sample_rate, card.feature_dim, card.subsampling_factor) == ("char", 16000, 64, 2)
    assert card.trained and card.parameters == sum(p.numel() for p in model.parameters())


def test_architecture_source_is_flagged_untrained():
    source = ModelSource.parse("arch:quartznet_tiny")
    card = describe(fetch(source), source)
    assert not card.trained and "random weights" in card.notes
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
