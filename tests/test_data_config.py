from pathlib import Path

import pytest

from nemo_ptq.data.config import parse_data_params
from nemo_ptq.errors import ConfigError
from nemo_ptq.params import load_section

REPO = Path(__file__).resolve().parents[1]


def _section(**overrides):
    section = {
        "eval_sets": [{"name": "real", "kind": "real", "builtin": "pocketsphinx"}],
        "calibration_set": {
            "name": "cal", "kind": "synthetic",
            "tts": {"engine": "espeak-ng", "voices": ["en-us"], "sentences": "s.txt"},
        },
        "max_duration_s": 20.0,
    }
    section.update(overrides)
    return section


def test_repository_params_parse():
    params = parse_data_params(load_section("data", REPO / "params.yaml"))
    assert [s.name for s in params.eval_sets] == ["pocketsphinx", "espeak_heldout"]
    assert params.calibration_set.tts.engine == "espeak-ng"
    for spec in params.all_sets:
        if spec.tts is not None:
            assert (REPO / spec.tts.sentences).is_file()


def test_optional_keys():
    params = parse_data_params(_section(eval_sets=[
        {"name": "m", "kind": "real", "manifest": "x.jsonl", "limit": 3, "downmix": True}]))
    spec = params.eval_sets[0]
    assert (spec.limit, spec.downmix, spec.source) == (3, True, "manifest:x.jsonl")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (_section(shuffle=True), "valid keys: eval_sets, calibration_set, max_duration_s"),
        (_section(eval_sets=[{"name": "a", "kind": "real", "builtin": "pocketsphinx", "speed": 2}]),
         "data.eval_sets[0]: unknown key(s) speed; valid keys: name, kind, manifest"),
        (_section(calibration_set={"name": "c", "kind": "synthetic",
                                   "tts": {"engine": "flite", "voices": ["slt"], "sentences": "s", "rate": 1}}),
         "data.calibration_set.tts: unknown key(s) rate"),
        (_section(eval_sets=[{"name": "a", "kind": "real", "builtin": "pocketsphinx", "manifest": "m"}]),
         "exactly one source"),
        (_section(eval_sets=[{"name": "a", "kind": "real"}]), "exactly one source"),
        (_section(eval_sets=[{"name": "a", "kind": "studio", "builtin": "pocketsphinx"}]), "kind must be"),
        (_section(eval_sets=[{"name": "a", "kind": "real", "builtin": "timit"}]), "unknown builtin 'timit'"),
        (_section(eval_sets=[{"name": "a/b", "kind": "real", "builtin": "pocketsphinx"}]), "name must be"),
        (_section(eval_sets=[{"name": "a", "kind": "real", "builtin": "pocketsphinx", "limit": 0}]), "limit"),
        (_section(eval_sets=[{"name": "a", "kind": "real", "builtin": "pocketsphinx"},
                             {"name": "a", "kind": "real", "manifest": "m.jsonl"}]), "unique; repeated: a"),
        (_section(eval_sets=[{"name": "cal", "kind": "real", "builtin": "pocketsphinx"}]),
         "also an eval set name"),
        (_section(calibration_set={"name": "c", "kind": "synthetic",
                                   "tts": {"engine": "festival", "voices": ["x"], "sentences": "s"}}),
         "unknown engine 'festival'"),
        (_section(calibration_set={"name": "c", "kind": "synthetic",
                                   "tts": {"engine": "flite", "voices": [], "sentences": "s"}}),
         "voices must be"),
        (_section(max_duration_s=0), "max_duration_s must be"),
        (_section(eval_sets={"name": "a"}), "data.eval_sets: expected a list"),
        (_section(eval_sets=[]), "at least one set"),
    ],
)
def test_invalid_sections_name_the_problem(section, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_data_params(section)
    assert message in str(info.value)


def test_missing_calibration_set():
    section = _section()
    del section["calibration_set"]
    with pytest.raises(ConfigError, match="data.calibration_set: expected a mapping"):
        parse_data_params(section)
