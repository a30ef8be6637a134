"""The machine a figure was measured on: CPU model, the ISA features INT8 speed depends on, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# VNNI / AMX decide whether INT8 convolutions are fast; bf16 matters for runtimes that use it silently.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
PACKAGES = ("torch", "nemo_toolkit", "numpy", "torchao", "onnxruntime", "openvino", "nncf")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """{"model": str, "isa": [flags present]} from /proc/cpuinfo (first processor entry)."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bf16 math runs in hardware (AVX512_BF16 or AMX); elsewhere oneDNN emulates it, slowly."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_info(cpuinfo)["isa"]))


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def system_info() -> dict:
    """Lists (ISA flags, "name==version") stay out of `dvc metrics show` tables but in the JSON."""
    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "logical_cpus": os.cpu_count(),
        "isa": cpu["isa"],
        "versions": [f"{name}=={version}" for name, version in package_versions().items()],
    }
