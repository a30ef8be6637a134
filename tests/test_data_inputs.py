"""Reading inputs: manifests, audio files, the pocketsphinx clips and TTS, each bad input included."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_ptq.data.audio import load_audio, pcm16_to_float, to_pcm16, write_wav
from nemo_ptq.data.config import TtsSource
from nemo_ptq.data.manifest import read_manifest
from nemo_ptq.data.pocketsphinx import DATA_DIR, pocketsphinx_utterances
from nemo_ptq.data.tts import synthesize_set
from nemo_ptq.errors import DataError

LIBRISPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech_resemblyzer"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def write_tone(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(str(path), np.repeat(signal[:, None], channels, axis=1), rate)
    return path


def write_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- manifests -------------------------------------------------------------------------------

def test_manifest_resolves_relative_paths_against_its_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    write_tone(tmp_path / "audio" / "a.wav", 0.5)
    absolute = write_tone(tmp_path / "b.wav", 0.5)
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "first"},
        "",
        {"audio_filepath": str(absolute), "duration": 0.5, "text": "second"},
    ])
    entries = read_manifest(manifest)
    assert [e.audio_path for e in entries] == [tmp_path / "audio" / "a.wav", absolute]
    assert [(e.text, e.line) for e in entries] == [("first", 1), ("second", 3)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "is empty"),
        (["   "], "is empty"),
        (['{"audio_filepath": "a.wav", '], "line 1 is not valid JSON"),
        (["[1, 2]"], "line 1 is not a JSON object"),
        ([{"audio_filepath": "a.wav", "text": "hi"}], "line 1 lacks key(s) duration"),
        ([{"audio_filepath": "a.wav", "duration": "long", "text": "hi"}], "duration must be a number"),
        ([{"audio_filepath": "missing.wav", "duration": 1.0, "text": "hi"}], "missing.wav not found"),
    ],
)
def test_bad_manifest_names_file_and_line(tmp_path, rows, message):
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    assert message in str(info.value) and str(manifest) in str(info.value)


def test_missing_or_binary_manifest(tmp_path):
    with pytest.raises(DataError, match="not found: check the manifest path"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "audio.jsonl").write_bytes(b"RIFF\xff\xfe\x00")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_manifest(tmp_path / "audio.jsonl")


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason="shared LibriSpeech sample not present")
def test_shared_librispeech_manifest_reads_and_decodes():
    entries = read_manifest(LIBRISPEECH / "manifest.jsonl")
    assert len(entries) == 351
    audio = load_audio(entries[2].audio_path, sample_rate=16000, max_duration_s=40)
    assert abs(len(audio) / 16000 - entries[2].duration) < 0.01


# --- audio -----------------------------------------------------------------------------------

def _load(path, **kwargs):
    return load_audio(path, sample_rate=16000, max_duration_s=kwargs.pop("max_duration_s", 5.0), **kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.wav", "not found"),
        (lambda d: _write_bytes(d / "corrupt.wav", b"RIFF\0\0\0\0WAVEgarbage"), "cannot be decoded"),
        (lambda d: _write_bytes(d / "text.wav", b"not audio at all"), "cannot be decoded"),
        (lambda d: write_tone(d / "empty.wav", 0.0), "contains no samples"),
        (lambda d: write_tone(d / "stereo.wav", 0.5, channels=2), "sox"),
        (lambda d: write_tone(d / "phone.wav", 0.5, rate=8000), "8000 Hz, below the model's 16000 Hz"),
        (lambda d: write_tone(d / "long.wav", 6.0), "longer than data.max_duration_s"),
        (lambda d: _write_float_wav(d / "nan.wav", [0.1, float("nan"), 0.2]), "NaN or infinite"),
    ],
)
def test_bad_audio_says_what_to_do(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        _load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def _write_float_wav(path: Path, samples: list) -> Path:
    sf.write(str(path), np.array(samples, dtype=np.float32), 16000, subtype="FLOAT")
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_higher_rates_are_resampled_and_downmix_is_opt_in(tmp_path):
    audio = _load(write_tone(tmp_path / "hi.wav", 1.0, rate=44100))
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 1
    stereo = _load(write_tone(tmp_path / "st.wav", 0.5, rate=48000, channels=2), downmix=True)
    assert stereo.ndim == 1 and abs(len(stereo) - 8000) <= 1


def test_pcm16_round_trips_exactly(tmp_path):
    samples = np.random.default_rng(0).uniform(-1.2, 1.2, 4000).astype(np.float32)
    pcm = to_pcm16(samples)
    write_wav(tmp_path / "x.wav", pcm, 16000)
    back, rate = sf.read(str(tmp_path / "x.wav"), dtype="float32")
    assert rate == 16000 and sf.info(str(tmp_path / "x.wav")).subtype == "PCM_16"
    np.testing.assert_array_equal(back, pcm16_to_float(pcm))


# --- built-in corpus and TTS ------------------------------------------------------------------

@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="pocketsphinx-testdata not installed")
def test_pocketsphinx_clips_have_transcripts():
    utterances = pocketsphinx_utterances()
    assert len(utterances) == 10 and len({u.id for u in utterances}) == 10
    assert utterances[1].text == "he was not an ill disposed young man"
    assert utterances[5].text == "ten of clubs"
    assert all(u.audio_path.is_file() for u in utterances)


def test_pocketsphinx_missing_says_which_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install pocketsphinx-testdata"):
        pocketsphinx_utterances(tmp_path)


@needs_espeak
def test_tts_is_round_robin_and_deterministic(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("Good morning everyone.\n\nThe kettle is boiling.\nSee you tomorrow.\n")
    tts = TtsSource(engine="espeak-ng", voices=["en-us", "en-gb"], sentences=str(sentences))
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        runs.append(synthesize_set(tts, tmp_path / name, limit=2))
    first, second = runs
    assert [u.text for u in first] == ["Good morning everyone.", "The kettle is boiling."]
    assert [u.source.split(":")[1] for u in first] == ["en-us", "en-gb"]
    assert first[1].origin.endswith("line 3 (espeak-ng voice en-gb)")
    for a, b in zip(first, second):
        assert a.audio_path.read_bytes() == b.audio_path.read_bytes()


def test_tts_missing_engine_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    tts = TtsSource(engine="flite", voices=["slt"], sentences=str(tmp_path / "s.txt"))
    with pytest.raises(DataError, match="apt-get install flite"):
        synthesize_set(tts, tmp_path)


@needs_espeak
def test_tts_unknown_voice_and_sentence_problems(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("Hello there.\n")
    bad_voice = TtsSource(engine="espeak-ng", voices=["xx-nosuchvoice"], sentences=str(sentences))
    with pytest.raises(DataError, match="espeak-ng failed .*--voices"):
        synthesize_set(bad_voice, tmp_path)
    sentences.write_text("\n...\n")
    with pytest.raises(DataError, match="line 2 has no words"):
        synthesize_set(TtsSource(engine="espeak-ng", voices=["en-us"], sentences=str(sentences)), tmp_path)
    with pytest.raises(DataError, match="sentence file .* not found"):
        synthesize_set(TtsSource(engine="espeak-ng", voices=["en-us"], sentences="nope.txt"), tmp_path)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
def test_flite_unknown_voice_is_an_error_not_a_fallback(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("Hello there.\n")
    with pytest.raises(DataError, match="unknown flite voice.*available: .*slt"):
        synthesize_set(TtsSource(engine="flite", voices=["nosuch"], sentences=str(sentences)), tmp_path)
