"""The machine a figure was measured on: CPU model, the ISA features INT8 speed depends on, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from nemo_ptq import cpu as cpus

PACKAGES = ("torch", "nemo_toolkit", "numpy", "torchao", "onnxruntime", "openvino", "nncf")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def system_info(threads: int | None = None) -> dict:
    """Lists (ISA flags, "name==version") stay out of `dvc metrics show` tables but in the JSON.
    `hardware` is what latencies may be compared within (nemo_ptq.report ranks only within one)."""
    cpu = cpus.detect()
    return {
        "cpu": cpu.model,
        "cpu_identity": cpu.identity,
        "hardware": cpu.hardware,
        "isa_profile": cpu.profile,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "isa": cpu.isa,
        "versions": [f"{name}=={version}" for name, version in package_versions().items()],
    }
