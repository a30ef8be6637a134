"""ISA profiles from /proc/cpuinfo, and the records the CPU-dependent DVC stages depend on."""

from __future__ import annotations

import json

import pytest

from nemo_ptq import cpu

ZEN4 = "fpu avx2 avx512f avx512_vnni avx512_bf16"
XEON_CASCADE_LAKE = "fpu avx2 avx512f avx512_vnni"
SAPPHIRE_RAPIDS = "fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
ALDER_LAKE = "fpu avx2 avx_vnni"
ZEN3 = "fpu avx2 fma"
NEOVERSE_N1 = "fp asimd asimddp"


def cpuinfo_file(tmp_path, flags: str, key: str = "flags", model_key: str = "model name"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\n{model_key}\t: Test CPU 9000\n{key}\t\t: {flags}\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    return path


@pytest.mark.parametrize("flags, machine, profile, int8_dot, native_bf16", [
    (SAPPHIRE_RAPIDS, "x86_64", "amx", True, True),
    (ZEN4, "x86_64", "avx512_bf16", True, True),
    (XEON_CASCADE_LAKE, "x86_64", "vnni", True, False),
    (ALDER_LAKE, "x86_64", "vnni", True, False),
    (ZEN3, "x86_64", "avx2", False, False),
    (NEOVERSE_N1, "aarch64", "arm_dotprod", True, False),
    ("fp asimd", "aarch64", "generic", False, False),
    ("fpu sse4_2", "x86_64", "generic", False, False),
])
def test_profile_from_flags(tmp_path, flags, machine, profile, int8_dot, native_bf16):
    key = "Features" if machine == "aarch64" else "flags"
    found = cpu.detect(cpuinfo_file(tmp_path, flags, key), machine=machine)
    assert (found.profile, found.int8_dot, found.native_bf16) == (profile, int8_dot, native_bf16)
    assert found.model == "Test CPU 9000"  # the first processor entry, not the last
    assert set(found.isa) <= set(flags.split())


def test_only_relevant_flags_are_recorded(tmp_path):
    found = cpu.detect(cpuinfo_file(tmp_path, "fpu sse avx2 avx512f avx512_vnni hypervisor"), machine="x86_64")
    assert found.isa == ["avx2", "avx512f", "avx512_vnni"]


@pytest.mark.parametrize("entry, machine, identity", [
    # Two VMs that both call themselves "AMD EPYC": a Zen 4 and a Zen 5.
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n",
     "x86_64", "AuthenticAMD family 25 model 17 stepping 1"),
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nstepping\t: 1\n",
     "x86_64", "AuthenticAMD family 26 model 2 stepping 1"),
    ("CPU implementer\t: 0x41\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n", "aarch64",
     "aarch64 implementer 0x41 part 0xd0c r0x3p1"),
    ("flags\t: fpu\n", "x86_64", "unknown"),
])
def test_identity_tells_cores_apart_behind_one_model_name(tmp_path, entry, machine, identity):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\n{entry}\nprocessor\t: 1\nvendor_id\t: Other\n")
    found = cpu.detect(path, machine=machine)
    assert found.identity == identity and identity in found.hardware


def test_unreadable_cpuinfo_is_generic(tmp_path):
    found = cpu.detect(tmp_path / "absent", machine="x86_64")
    assert found.profile == "generic" and found.isa == []


def test_records_split_isa_from_machine(tmp_path, monkeypatch):
    """Artifacts depend on isa.json (profile and flags only), latency on machine.json (model too)."""
    monkeypatch.setattr(cpu, "detect", lambda: cpu.Cpu(model="Test CPU 9000", profile="avx2", isa=["avx2"]))
    cpu.write_records(tmp_path / "cpu")
    assert json.loads((tmp_path / "cpu" / "isa.json").read_text()) == {"profile": "avx2", "isa": ["avx2"]}
    machine = json.loads((tmp_path / "cpu" / "machine.json").read_text())
    assert machine["model"] == "Test CPU 9000" and machine["profile"] == "avx2" and machine["logical_cpus"] >= 1
    assert machine["identity"] == "unknown"  # evaluate reruns on other cores behind the same model name
