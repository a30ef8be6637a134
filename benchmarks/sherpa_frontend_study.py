"""Study: can sherpa-onnx (2.0.1) reproduce the features of a NeMo CTC model's own preprocessor?

Compares, on real clips of a manifest (used here only as test audio, never stored), the model's
NeMo preprocessor output (eval mode, trimmed to the valid frames, per_feature normalized) with

* the features sherpa-onnx really computes for a `from_nemo_ctc` model, read back out of the
  sherpa-onnx runtime with a probe ONNX graph (`probe`): a graph whose greedy-CTC "transcript"
  spells one feature channel, quantized to 1/2048;
* kaldi-native-fbank (the library sherpa-onnx uses) with the options sherpa-onnx sets for a NeMo
  CTC model (`sherpa_like`), and step by step with NeMo's settings instead (the ablation), to
  tell which difference matters;

then decodes clips with (a) NeMo features + ONNX Runtime on the project's own export and (b)
sherpa-onnx's `OfflineRecognizer.from_nemo_ctc` on the same ONNX file (several configurations),
and reports identical transcripts and the character error rate of (b) against (a). Also serves a
waveform graph (NeMo's frontend rebuilt inside, `wave_ctc`) through sherpa-onnx's raw-sample model
type, `from_omnilingual_asr_ctc`, which normalizes the waveform to zero mean and unit variance
before the graph sees it. Single threaded; about 15 s on one core. Needs two packages that the
project does not depend on: `pip install sherpa-onnx==2.0.1 kaldi-native-fbank==1.23.0`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sherpa_frontend_study.py \
        --manifest ../shared/data/vctk_p239/manifest.jsonl --clips 30 --probe-clips 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SR = 16000
HOP = 160
NEMO_GUARD = 2.0 ** -24
FLT_EPS = float(np.finfo(np.float32).eps)  # knf's default log floor: log(max(x, FLT_EPSILON))


# --------------------------------------------------------------------------- normalization
def norm_population(feats: np.ndarray) -> np.ndarray:
    """sherpa-onnx NemoNormalizePerFeature (math.cc): [frames, dim], var = E[x^2] - E[x]^2,
    divided by (sqrt(var) + 1e-5)."""
    x = feats.astype(np.float32)
    mean = x.mean(axis=0)
    var = np.maximum((x * x).mean(axis=0) - mean * mean, 0.0)
    return (x - mean) / (np.sqrt(var) + 1e-5)


def norm_bessel(feats: np.ndarray) -> np.ndarray:
    """NeMo normalize_batch per_feature: std with N - 1, plus 1e-5."""
    x = feats.astype(np.float64)
    mean = x.mean(axis=0)
    std = np.sqrt(((x - mean) ** 2).sum(axis=0) / (x.shape[0] - 1))
    return ((x - mean) / (std + 1e-5)).astype(np.float32)


# --------------------------------------------------------------------------- kaldi-native-fbank
def knf_logmel(samples: np.ndarray, *, frame_length_ms=25.0, window="hann", snip_edges=False,
               is_librosa=True, prepend=0, append=0, own_log=False, log_floor=False,
               max_frames=None) -> np.ndarray:
    """knf OnlineFbank log-mel [frames, 64]. Defaults = what sherpa-onnx 2.0.1 computes for a
    (non-GigaAM) NeMo CTC model, as measured with the probe: knf log(mel + 2^-24)
    (use_log_floor=False, eps=2^-24). `log_floor`: knf's default log(max(mel, FLT_EPSILON)),
    what the older sherpa-onnx source reads as; `own_log`: the log taken here in float64."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    f = opts.frame_opts
    f.samp_freq, f.frame_shift_ms, f.frame_length_ms = SR, 10.0, frame_length_ms
    f.dither, f.preemph_coeff, f.remove_dc_offset = 0.0, 0.97, False
    f.window_type, f.snip_edges, f.round_to_power_of_two = window, snip_edges, True
    m = opts.mel_opts
    m.num_bins, m.low_freq, m.high_freq, m.is_librosa = 64, 0.0, 0.0, is_librosa
    opts.use_energy = False
    opts.use_log_fbank = not own_log
    if not log_floor:
        opts.use_log_floor, opts.eps = False, NEMO_GUARD
    x = np.concatenate([np.zeros(prepend, np.float32), samples, np.zeros(append, np.float32)])
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, x.tolist())
    fb.input_finished()
    out = np.stack([np.asarray(fb.get_frame(i)) for i in range(fb.num_frames_ready)]).astype(np.float32)
    if own_log:
        out = np.log(out.astype(np.float64) + NEMO_GUARD).astype(np.float32)
    return out if max_frames is None else out[:max_frames]


def sherpa_like(samples: np.ndarray, prepad: bool = False) -> np.ndarray:
    """What sherpa-onnx 2.0.1 feeds a NeMo CTC graph, [frames, 64] (before the transpose).
    `prepad`: the caller shifts the audio by 80 zero samples (frame centres on NeMo's) and cuts the
    tail so the frame count is NeMo's: the only frame-alignment control a user has."""
    return norm_population(knf_logmel(_prepadded(samples) if prepad else samples))


def _prepadded(samples: np.ndarray) -> np.ndarray:
    frames = samples.shape[0] // HOP  # NeMo's valid frames
    x = np.concatenate([np.zeros(HOP // 2, np.float32), samples])
    return x[: frames * HOP + HOP // 2 - 1]  # (m + 80) // 160 == frames


def nemo_via_knf(samples: np.ndarray, **override) -> np.ndarray:
    """NeMo's preprocessor rebuilt with knf (outside sherpa-onnx): 20 ms symmetric Hann
    (`hanning`), frames centred on t*160 over zero padding, log(mel + 2^-24), Bessel std.
    `override` swaps single settings back to sherpa-onnx's, for the ablation."""
    s = dict(frame_length_ms=20.0, window="hanning", centre="zeros", own_log=True, log_floor=False,
             std="bessel")
    s.update(override)
    frames = samples.shape[0] // HOP
    if s["centre"] == "zeros":  # window w samples long centred on t*160: pad w/2 zeros each side
        half = int(round(s["frame_length_ms"] * SR / 1000)) // 2
        feats = knf_logmel(samples, frame_length_ms=s["frame_length_ms"], window=s["window"],
                           snip_edges=True, prepend=half, append=half, own_log=s["own_log"],
                           log_floor=s["log_floor"], max_frames=frames)
    else:  # sherpa-onnx's snip_edges=false framing (centres at t*160+80, reflection at the edges)
        feats = knf_logmel(samples, frame_length_ms=s["frame_length_ms"], window=s["window"],
                           own_log=s["own_log"], log_floor=s["log_floor"])
    return (norm_bessel if s["std"] == "bessel" else norm_population)(feats)


# --------------------------------------------------------------------------- NeMo side
def nemo_features(extractor, samples: np.ndarray) -> np.ndarray:
    return extractor(samples).T  # project NemoFeatureExtractor: [64, frames] -> [frames, 64]


def compare(ref: np.ndarray, other: np.ndarray) -> dict:
    n = min(ref.shape[0], other.shape[0])
    d = np.abs(ref[:n] - other[:n])
    return {"frames_nemo": int(ref.shape[0]), "frames_other": int(other.shape[0]),
            "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_abs_inner": float(d[2:n - 2].max())}  # without 2 edge frames each side


# --------------------------------------------------------------------------- probe graph
K = 256  # classes per digit; even frames use ids [0, K), odd frames [K, 2K); blank = 2K
QSCALE = 2048.0
QOFFSET = 16.0


def write_probe(path: Path, channel: int, digit: str) -> None:
    """[1, 64, T] features -> [1, T, 2K+1] one-hot of digit (hi or lo) of
    q = floor((x[channel] + 16) * 2048), alternating id ranges so greedy CTC never collapses."""
    import onnx
    from onnx import TensorProto, helper as h

    c = lambda name, arr: helper_const(name, np.asarray(arr))  # noqa: E731
    nodes = [
        c("idx", np.array([channel], np.int64)),
        h.make_node("Gather", ["audio_signal", "idx"], ["xc"], axis=1),           # [1,1,T]
        h.make_node("Squeeze", ["xc", "ax1"], ["v"]),                              # [1,T]
        c("ax1", np.array([1], np.int64)),
        c("off", np.float32(QOFFSET)), c("scale", np.float32(QSCALE)),
        c("lo0", np.float32(0)), c("hi0", np.float32(65535)), c("k", np.float32(K)),
        h.make_node("Add", ["v", "off"], ["v1"]), h.make_node("Mul", ["v1", "scale"], ["v2"]),
        h.make_node("Floor", ["v2"], ["q0"]), h.make_node("Clip", ["q0", "lo0", "hi0"], ["q"]),
        h.make_node("Div", ["q", "k"], ["qd"]), h.make_node("Floor", ["qd"], ["hi"]),
        h.make_node("Mul", ["hi", "k"], ["hik"]), h.make_node("Sub", ["q", "hik"], ["lo"]),
        # parity of the frame index: 0, 1, 0, 1, ...
        h.make_node("Shape", ["v"], ["shp"]), c("one_i", np.array([1], np.int64)),
        h.make_node("Slice", ["shp", "one_i", "two_i"], ["tlen"]), c("two_i", np.array([2], np.int64)),
        h.make_node("Squeeze", ["tlen"], ["tl"]), c("zero_s", np.int64(0)), c("one_s", np.int64(1)),
        h.make_node("Range", ["zero_s", "tl", "one_s"], ["t"]),
        c("two_s", np.int64(2)), h.make_node("Mod", ["t", "two_s"], ["par_i"]),
        h.make_node("Cast", ["par_i"], ["par"], to=TensorProto.FLOAT),
        h.make_node("Mul", ["par", "k"], ["shift"]),
        h.make_node("Add", ["hi" if digit == "hi" else "lo", "shift"], ["cls"]),  # [1,T]
        h.make_node("Unsqueeze", ["cls", "ax2"], ["cls3"]), c("ax2", np.array([2], np.int64)),
        c("ids", np.arange(2 * K + 1, dtype=np.float32)),
        h.make_node("Equal", ["cls3", "ids"], ["eq"]),
        h.make_node("Cast", ["eq"], ["logprobs"], to=TensorProto.FLOAT),         # blank never wins
    ]
    nodes = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    graph = h.make_graph(
        nodes, "probe",
        [h.make_tensor_value_info("audio_signal", TensorProto.FLOAT, [1, 64, "T"]),
         h.make_tensor_value_info("length", TensorProto.INT64, [1])],
        [h.make_tensor_value_info("logprobs", TensorProto.FLOAT, [1, "T", 2 * K + 1])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"vocab_size": str(2 * K + 1), "subsampling_factor": "1",
                       "normalize_type": "per_feature"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def helper_const(name: str, arr: np.ndarray):
    from onnx import helper as h, numpy_helper

    return h.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))


def probe_sherpa_features(work: Path, samples: np.ndarray) -> np.ndarray:
    """sherpa-onnx's own features for these samples, [frames, 64], each to within 1/2048."""
    import sherpa_onnx

    tokens = work / "probe_tokens.txt"
    if not tokens.exists():
        tokens.write_text("".join(f"t{i} {i}\n" for i in range(2 * K)) + f"<blk> {2 * K}\n")
    cols = []
    for ch in range(64):
        digits = {}
        for digit in ("hi", "lo"):
            path = work / f"probe_{ch}_{digit}.onnx"
            if not path.exists():
                write_probe(path, ch, digit)
            rec = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
                model=str(path), tokens=str(tokens), feature_dim=64, sample_rate=SR, num_threads=1)
            s = rec.create_stream()
            s.accept_waveform(SR, samples)
            rec.decode_stream(s)
            digits[digit] = np.array([int(t[1:]) % K for t in s.result.tokens], np.float64)
        q = digits["hi"] * K + digits["lo"]
        cols.append((q + 0.5) / QSCALE - QOFFSET)  # centre of the quantization cell
    return np.stack(cols, axis=1).astype(np.float32)


# --------------------------------------------------------------------------- transcripts
def greedy(logprobs: np.ndarray, vocabulary: list[str]) -> str:
    ids = logprobs.argmax(-1)
    blank = len(vocabulary)
    out, prev = [], -1
    for i in ids:
        if i != prev and i != blank:
            out.append(vocabulary[i])
        prev = i
    return "".join(out).strip()


def cer(ref: str, hyp: str) -> tuple[int, int]:
    import kaldialign

    errs = kaldialign.edit_distance(list(ref), list(hyp))["total"]
    return errs, len(ref)


class RenormCTC:
    """Factory for a wrapper graph: sherpa-onnx's raw log-mel (normalize_type NA) in, NeMo's
    per_feature normalization (Bessel std, + 1e-5) applied inside the graph, then the model."""

    @staticmethod
    def build(inner):
        import torch

        class _Renorm(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):  # [B, 64, T] = log(mel + 2^-24), not normalized
                mean = x.mean(dim=2, keepdim=True)
                std = torch.sqrt(((x - mean) ** 2).sum(dim=2, keepdim=True) / (x.shape[2] - 1))
                return self.inner((x - mean) / (std + 1e-5))

        return _Renorm(inner)


def wave_ctc(model, inner):
    """Waveform [1, samples] -> log-probs: NeMo's FilterbankFeatures (eval) rebuilt from exportable
    ops (STFT as a strided conv with the window folded into a DFT basis), then `inner`; for
    sherpa-onnx's raw-sample model type (`from_omnilingual_asr_ctc`)."""
    import torch
    import torch.nn.functional as F

    fe = model.preprocessor.featurizer
    n_fft, hop, win = int(fe.n_fft), int(fe.hop_length), int(fe.win_length)
    window = torch.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = fe.window.float()
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None]
    ang = 2 * torch.pi * k * n / n_fft
    basis = torch.cat([torch.cos(ang), -torch.sin(ang)]) * window.double()

    class _Wave(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.register_buffer("basis", basis.float()[:, None, :])
            self.register_buffer("fb", fe.fb[0].float())

        def forward(self, x):  # [1, samples] in [-1, 1]
            frames = x.shape[1] // hop
            x = torch.cat([x[:, :1], x[:, 1:] - float(fe.preemph) * x[:, :-1]], dim=1)
            x = F.pad(x[:, None], (n_fft // 2, n_fft // 2))
            spec = F.conv1d(x, self.basis, stride=hop)[:, :, :frames]
            half = n_fft // 2 + 1
            power = spec[:, :half] ** 2 + spec[:, half:] ** 2
            x = torch.log(torch.matmul(self.fb, power) + NEMO_GUARD)
            mean = x.mean(dim=2, keepdim=True)
            std = torch.sqrt(((x - mean) ** 2).sum(dim=2, keepdim=True) / (x.shape[2] - 1))
            return self.inner((x - mean) / (std + 1e-5))

    return _Wave().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("/work/main/data/embedded/model.nemo"))
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--probe-clips", type=int, default=3)
    parser.add_argument("--feature-clips", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    import sherpa_onnx
    import soundfile as sf
    import torch

    from nemo_ptq.data.features import NemoFeatureExtractor
    from nemo_ptq.models import export
    from nemo_ptq.models.fp32 import NemoCTC
    from nemo_ptq.models.loading import ModelSource, describe, load_nemo

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // args.clips)
    rows = rows[::step][: args.clips]
    base = args.manifest.parent
    clips = []
    for r in rows:
        x, sr = sf.read(str(base / r["audio_filepath"]), dtype="float32")
        assert sr == SR and x.ndim == 1
        clips.append((Path(r["audio_filepath"]).name, x))

    model = load_nemo(args.model).eval()
    print("preprocessor:", dict(model.cfg.preprocessor))
    card = describe(model, ModelSource("file", str(args.model))).to_json()
    extractor = NemoFeatureExtractor(model)
    report: dict = {}

    # ---- 1. features: real sherpa-onnx (probe) vs its knf emulation vs NeMo
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        probe = []
        for name, x in clips[: args.probe_clips]:
            real = probe_sherpa_features(work, x)
            emu = sherpa_like(x)
            assert real.shape == emu.shape, (real.shape, emu.shape)
            probe.append({"clip": name, "frames": int(real.shape[0]),
                          "max_abs_real_vs_knf_emulation": float(np.abs(real - emu).max()),
                          "max_abs_real_vs_nemo": compare(nemo_features(extractor, x), real)})
        report["probe"] = probe
        print(json.dumps(probe, indent=1))

    ladder = {
        "sherpa 2.0.1 as is (from_nemo_ctc)": lambda x: sherpa_like(x),
        "sherpa + caller pre-pads 80 zeros, cuts tail": lambda x: sherpa_like(x, prepad=True),
        "knf: NeMo settings (20 ms symmetric hann, centred/zeros, log+2^-24, Bessel)": nemo_via_knf,
        "  ... but 25 ms window": lambda x: nemo_via_knf(x, frame_length_ms=25.0),
        "  ... but periodic hann (knf 'hann')": lambda x: nemo_via_knf(x, window="hann"),
        "  ... but sherpa framing (snip_edges=false, reflect)": lambda x: nemo_via_knf(x, centre="kaldi"),
        "  ... but log(max(x, FLT_EPSILON))": lambda x: nemo_via_knf(x, own_log=False, log_floor=True),
        "  ... but population std": lambda x: nemo_via_knf(x, std="population"),
    }
    feats = {}
    for label, fn in ladder.items():
        res = [compare(nemo_features(extractor, x), fn(x)) for _, x in clips[: args.feature_clips]]
        feats[label] = {"max_abs": max(r["max_abs"] for r in res),
                        "max_abs_inner": max(r["max_abs_inner"] for r in res),
                        "mean_abs": float(np.mean([r["mean_abs"] for r in res])),
                        "frame_count_mismatches": sum(r["frames_nemo"] != r["frames_other"] for r in res)}
        print(f"{label:78s} {feats[label]}")
    report["features"] = feats

    # ---- 2. transcripts
    vocabulary = list(card["vocabulary"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokens = work / "tokens.txt"
        export.write_tokens(tokens, card)
        fp32 = NemoCTC(model).eval()

        def deploy(module, name, normalize_type, **extra):
            path = export.export_onnx(module, work / f"{name}.onnx", export.feature_dim(fp32, card))
            m = onnx.load(str(path))
            export.add_length_input(m)
            meta = export.deployment_metadata(card)
            meta["normalize_type"] = normalize_type
            meta.update(extra)
            export.add_metadata(m, meta)
            onnx.save(m, str(path))
            return path

        plain = deploy(fp32, "model", "per_feature")
        renorm = deploy(RenormCTC.build(fp32), "model_renorm", "NA")
        giga = deploy(fp32, "model_giga", "per_feature", is_giga_am="1")
        wave = work / "model_wave.onnx"
        with torch.no_grad():
            torch.onnx.export(wave_ctc(model, fp32), (torch.randn(1, 48000) * 0.1,), str(wave),
                              dynamo=False, opset_version=export.OPSET, input_names=["samples"],
                              output_names=["logits"], dynamic_axes={"samples": {1: "n"}, "logits": {1: "t"}})
        wave_rec = sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc(
            model=str(wave), tokens=str(tokens), num_threads=1)

        def wave_text(x):
            s = wave_rec.create_stream()
            s.accept_waveform(SR, x)
            wave_rec.decode_stream(s)
            return s.result.text.replace("\u2581", " ").strip()

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(plain), opts, providers=["CPUExecutionProvider"])

        def ort_text(f_tc):  # [frames, 64]
            return greedy(sess.run(None, export.deployment_feed(f_tc.T[None]))[0][0], vocabulary)

        def sherpa_text(path, prepad):
            rec = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
                model=str(path), tokens=str(tokens), feature_dim=64, sample_rate=SR, num_threads=1)

            def run(x):
                s = rec.create_stream()
                s.accept_waveform(SR, _prepadded(x) if prepad else x)
                rec.decode_stream(s)
                return s.result.text.replace("\u2581", " ").strip()
            return run

        systems = {
            "sherpa from_nemo_ctc, as is": sherpa_text(plain, False),
            "sherpa, caller pre-pads 80 zeros": sherpa_text(plain, True),
            "sherpa, pre-pad + NeMo normalization in the graph (normalize_type NA)": sherpa_text(renorm, True),
            "sherpa, metadata is_giga_am=1 (GigaAM frontend)": sherpa_text(giga, False),
            "sherpa from_omnilingual_asr_ctc, waveform graph with NeMo frontend inside": wave_text,
            "emulated sherpa (knf) + ORT, as is": lambda x: ort_text(sherpa_like(x)),
            "knf with NeMo settings + ORT (not reachable in sherpa)": lambda x: ort_text(nemo_via_knf(x)),
        }
        ref = {name: ort_text(nemo_features(extractor, x)) for name, x in clips}
        agree = {}
        for label, fn in systems.items():
            same, errs, chars, texts = 0, 0, 0, {}
            for name, x in clips:
                hyp = fn(x)
                texts[name] = hyp
                same += hyp == ref[name]
                e, n = cer(ref[name], hyp)
                errs, chars = errs + e, chars + n
            agree[label] = {"identical": f"{same}/{len(clips)}", "cer_vs_nemo_ort": round(errs / max(chars, 1), 4)}
            print(f"{label:78s} {agree[label]}")
            agree[label]["_texts"] = texts
        emu = agree["emulated sherpa (knf) + ORT, as is"]["_texts"]
        real = agree["sherpa from_nemo_ctc, as is"]["_texts"]
        report["sherpa_vs_emulation_identical"] = f"{sum(emu[k] == real[k] for k in emu)}/{len(emu)}"
        print("real sherpa vs knf emulation + ORT, identical:", report["sherpa_vs_emulation_identical"])
        for label in agree:
            agree[label].pop("_texts")
        report["transcripts"] = agree
        report["examples"] = [{"clip": n, "nemo_ort": ref[n], "sherpa": real[n]} for n, _ in clips[:3]]
        print(json.dumps(report["examples"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
