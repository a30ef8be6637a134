"""ARM64 artifacts checked without ARM hardware: the same artifact run by this machine's backend
and by an aarch64 Python under qemu user-mode emulation, compared by greedy transcript and log-prob.

`scripts/arm64_env.sh` builds the environment: Debian's qemu-aarch64-static, a Debian arm64 tree
with python3 (qemu's -L) and the aarch64 wheels beside it. The host starts that python explicitly
through qemu (no binfmt_misc needed) on `python -m nemo_ptq.arm64`, which loads the artifact with
the ARM wheels and writes each utterance's log-probs as .npy:
    ort    plain onnxruntime on model.onnx, as an ARM deployment runs it (nemo_ptq's ORT backend
           needs onnx and the exporter, which an ARM runtime does not)
    eager  the eager backend's own `load` (it imports torch, numpy and PyYAML only, not NeMo),
           which rebuilds the quantized module from the spec and runs it on the variant's engine
Timings under emulation are not speeds (qemu translates every instruction), so none is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nemo_ptq.errors import BackendUnavailableError, DataError

CACHE_ENV = "NEMO_PTQ_ARM64"  # where arm64_env.sh put the environment
DEFAULT_CACHE = Path.home() / ".cache" / "nemo_ptq" / "arm64"
QEMU = "qemu-aarch64-static"
# The CPU qemu emulates: Neoverse N1 (Graviton 2; dot product, no i8mm), as the tree's /proc/cpuinfo
# says. ORT's S8S8 outputs under qemu's `max` CPU (i8mm, SVE) differed from these by < 1e-4.
QEMU_CPU = "neoverse-n1"
SETUP = "bash scripts/arm64_env.sh"
SRC = Path(__file__).resolve().parents[1]  # the folder holding nemo_ptq, for the emulated python
SYSTEM_FILE = "system.json"
TIMEOUT_S = 3600  # 8 utterances of the embedded model took under a minute; a hung run must still end


@dataclass(frozen=True)
class Emulator:
    cache: Path

    @property
    def root(self) -> Path:
        return self.cache / "root"

    @property
    def site(self) -> Path:
        return self.cache / "site"

    @classmethod
    def find(cls, cache: Path | None = None) -> "Emulator":
        """The environment arm64_env.sh built, or an error that names the setup command."""
        found = cls(Path(cache or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))
        missing = [what for what, ok in (
            (QEMU, shutil.which(QEMU) is not None),
            (str(found.root / "usr/bin/python3"), (found.root / "usr/bin/python3").is_file()),
            (str(found.site / "torch"), (found.site / "torch").is_dir()),
        ) if not ok]
        if missing:
            raise BackendUnavailableError(f"no ARM64 emulation environment ({', '.join(missing)} missing): "
                                          f"run {SETUP}")
        return found

    def python(self, *args: str) -> list[str]:
        """The command line of the emulated python with the ARM wheels and this nemo_ptq."""
        return [QEMU, "-cpu", QEMU_CPU, "-L", str(self.root), "-E", f"PYTHONPATH={self.site}:{SRC}",
                str(self.root / "usr/bin/python3"), *args]

    def run(self, *args: str) -> str:
        try:
            done = subprocess.run(self.python(*args), capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendUnavailableError(f"the emulated aarch64 python ran past {TIMEOUT_S} s: check fewer "
                                          "utterances (--utterances)") from None
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise BackendUnavailableError(f"the emulated aarch64 python failed (exit {done.returncode}): {tail}; "
                                          f"if the environment is incomplete, run {SETUP}")
        return done.stdout

    def describe(self) -> dict:
        version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        return {"emulator": version, "cpu": f"qemu -cpu {QEMU_CPU}; the tree's /proc/cpuinfo (scripts/arm64_env.sh) "
                                            "lists Neoverse N1 entries, as onnxruntime's cpuinfo library crashes on "
                                            "the host's x86 one"}


def run_emulated(emulator: Emulator, backend: str, artifact: Path, features: Sequence[np.ndarray],
                 work: Path) -> tuple[list[np.ndarray], dict]:
    """Log-probs of each utterance's features [feature_dim, frames] from the artifact run under
    emulation, and the emulated system's facts (CPU profile, versions)."""
    inputs, outputs = work / "features", work / "log_probs"
    inputs.mkdir(parents=True)
    for i, feats in enumerate(features):
        np.save(inputs / f"{i:04d}.npy", np.ascontiguousarray(feats[None], dtype=np.float32))
    emulator.run("-m", "nemo_ptq.arm64", "--backend", backend, "--artifact", str(artifact), "--features", str(inputs),
                 "--out", str(outputs))
    log_probs = [np.load(outputs / f"{i:04d}.npy") for i in range(len(features))]
    return log_probs, json.loads((outputs / SYSTEM_FILE).read_text())


def compare(reference: Sequence[np.ndarray], emulated: Sequence[np.ndarray], transcript: Callable[[np.ndarray], str],
            ids: Sequence[str]) -> dict:
    """How far the emulated ARM run strays from this machine's run of the same artifact."""
    if len(reference) != len(emulated):
        raise DataError(f"{len(emulated)} emulated outputs for {len(reference)} utterances")
    differences, frames, agreeing, differing = [], 0, 0, []
    for utt, x86, arm in zip(ids, reference, emulated):
        if x86.shape != arm.shape:
            raise DataError(f"utterance {utt}: ARM log-probs have shape {arm.shape}, x86 {x86.shape}")
        differences.append(float(np.abs(x86 - arm).max()))
        frames += x86[0].shape[0]
        agreeing += int((x86.argmax(-1) == arm.argmax(-1)).sum())
        x86_text, arm_text = transcript(x86), transcript(arm)
        if x86_text != arm_text:
            differing.append({"id": utt, "x86": x86_text, "arm64": arm_text})
    return {
        "utterances": len(ids),
        "identical_transcripts": len(ids) - len(differing),
        "identical_transcript_share": (len(ids) - len(differing)) / max(1, len(ids)),
        "max_abs_log_prob_difference": max(differences, default=0.0),
        "frame_argmax_agreement": agreeing / max(1, frames),
        "differing_transcripts": differing,
    }


# ---- the ARM side: run by the emulated python ------------------------------------------------


def _onnx_runner(artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(artifact / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    # sherpa-onnx's NeMo CTC signature, by position: features [N, C, T], then lengths [N] int64
    features_input, lengths_input = (item.name for item in session.get_inputs())

    def run(features: np.ndarray) -> np.ndarray:
        feed = {features_input: features, lengths_input: np.array([features.shape[-1]], dtype=np.int64)}
        return session.run(None, feed)[0]

    return run


def _backend_runner(artifact: Path) -> Callable[[np.ndarray], np.ndarray]:
    from nemo_ptq.backends import get_backend
    from nemo_ptq.backends.base import CONFIG_FILE

    entry = json.loads((artifact / CONFIG_FILE).read_text())
    return get_backend("arm64", entry).load(artifact, threads=1)


RUNNERS = {"ort": _onnx_runner, "eager": _backend_runner}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run an artifact on saved features (the emulated ARM side)")
    parser.add_argument("--backend", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="folder of [1, C, T] float32 .npy files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nemo_ptq.evaluation.sysinfo import system_info

    run = RUNNERS[args.backend](args.artifact)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.features.glob("*.npy")):
        np.save(args.out / path.name, run(np.load(path)))
    (args.out / SYSTEM_FILE).write_text(json.dumps(system_info(threads=1)) + "\n")


if __name__ == "__main__":
    main()
