#!/usr/bin/env bash
# The ARM64 check's environment on an x86-64 Debian machine: Debian's qemu-user-static, a Debian
# arm64 tree holding python3 (unpacked only: nothing of it runs at build time) and, beside it, the
# aarch64 wheels of torch $ARM_TORCH and, as pinned in requirements.lock, of onnxruntime, numpy,
# PyYAML (nemo_ptq's eager backend loads there) and their dependencies, installed by the host's
# pip. The check starts the tree's python explicitly through qemu-aarch64-static -L, so it needs
# no binfmt_misc. Cache: $NEMO_PTQ_ARM64 (default ~/.cache/nemo_ptq/arm64); never committed.
# The host's pip is $PYTHON's (default python3, e.g. the project's venv): any Python with pip will do.
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${NEMO_PTQ_ARM64:-$HOME/.cache/nemo_ptq/arm64}"
ROOT="$CACHE/root"  # the Debian arm64 tree (qemu's -L)
SITE="$CACHE/site"  # the aarch64 wheels (PYTHONPATH of the emulated python)
SUITE=bookworm      # Debian 12: python3 is 3.11, as on the host
# Named one by one and installed without resolving: with --platform, pip would judge the wheels'
# dependency markers by this x86 host and pull torch's x86-only CUDA packages.
PINS=(onnxruntime numpy PyYAML flatbuffers packaging protobuf sympy mpmath
      filelock typing_extensions networkx Jinja2 MarkupSafe fsspec)
# The newest aarch64 torch wheel on the package index that runs on a CPU: from 2.11 on they
# require the CUDA packages (the lock's 2.13.0 included), which do not install here.
ARM_TORCH=torch==2.10.0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

missing=()
for pkg in qemu-user-static mmdebstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "arm64_env: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$ROOT/usr/bin/python3" ]; then
  echo "arm64_env: unpacking a Debian $SUITE arm64 tree with python3 into $ROOT"
  rm -rf "$ROOT"
  mkdir -p "$CACHE"
  # extract: unpack the packages and their dependencies without running their scripts (those would
  # need binfmt_misc); libgomp1 and libstdc++6 are what the torch and onnxruntime wheels link to.
  mmdebstrap --quiet --arch=arm64 --variant=extract --include=python3,libgomp1,libstdc++6,zlib1g \
    "$SUITE" "$ROOT"  # no mirror given: the host's apt sources
fi
# qemu-user reads a path inside -L's tree before the host's, so this stands in for the host's x86
# /proc/cpuinfo, on which the cpuinfo library in onnxruntime crashes under emulation: one ARM
# Neoverse N1 entry per host CPU (dot product: the arm_dotprod profile), as the CPU that the check
# has qemu emulate (nemo_ptq.arm64.QEMU_CPU).
mkdir -p "$ROOT/proc"
for cpu in $(seq 0 $(($(nproc) - 1))); do
  printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done > "$ROOT/proc/cpuinfo"

version=$(qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])')

requirements=("$ARM_TORCH")
for name in "${PINS[@]}"; do
  requirements+=("$(grep -E "^$name==" requirements.lock)")
done
stamp="$SITE/.requirements"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]} py$version" ]; then
  echo "arm64_env: installing the aarch64 wheels of ${requirements[*]} for Python $version into $SITE"
  rm -rf "$SITE"
  "${PYTHON:-python3}" -m pip install -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --target "$SITE" "${requirements[@]}"
  echo "${requirements[*]} py$version" > "$stamp"
fi
qemu-aarch64-static -cpu neoverse-n1 -L "$ROOT" -E PYTHONPATH="$SITE" "$ROOT/usr/bin/python3" -c \
  'import platform, numpy, onnxruntime, torch, yaml; print("arm64_env: ready:", platform.machine(),
  "torch", torch.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__,
  "quantized engines", torch.backends.quantized.supported_engines)'
