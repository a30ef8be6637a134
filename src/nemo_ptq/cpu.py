"""The CPU this process runs on: its model and the ISA class that decides which INT8 and bf16
settings are fast and exact on it.

INT8 convolutions multiply u8 activations by s8 weights. With an int8 dot-product instruction
(x86 VNNI or AMX, ARM's SDOT/UDOT) the products accumulate in 32 bits. Plain AVX2 has only
VPMADDUBSW, which adds pairs of products into 16 bits and saturates (255 * 127 * 2 > 32767), so
there the weights or activations must use 7-bit ranges (`reduce_range`). bf16 is fast only with
AVX512_BF16 or AMX; elsewhere oneDNN and OpenVINO emulate it, several times slower than f32.

Profiles, best first; a CPU gets the first whose flags it has:
    amx          AMX int8/bf16 tiles (Intel Sapphire Rapids and later)
    avx512_bf16  AVX512 VNNI and BF16 (AMD Zen 4 and later, Intel Cooper Lake)
    vnni         AVX512 VNNI or AVX-VNNI, no native bf16 (Intel Cascade/Ice Lake, Alder Lake)
    avx2         AVX2 without an int8 dot product (AMD Zen 2/3, Intel Haswell to Coffee Lake)
    arm_dotprod  aarch64 with the dot-product extension (asimddp: Neoverse N1/V1, Graviton 2+)
    generic      anything else (reference kernels: slow, but exact)
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

PROC_CPUINFO = Path("/proc/cpuinfo")
# The flags INT8/bf16 speed and exactness depend on (x86 "flags", aarch64 "Features").
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "i8mm", "bf16", "sve")
PROFILES = ("amx", "avx512_bf16", "vnni", "avx2", "arm_dotprod", "generic")
INT8_DOT_PROFILES = {"amx", "avx512_bf16", "vnni", "arm_dotprod"}
NATIVE_BF16_PROFILES = {"amx", "avx512_bf16"}
AUTO = "auto"  # the value of a setting that `resolve_reduce_range` picks for this CPU


@dataclass(frozen=True)
class Cpu:
    model: str
    profile: str  # one of PROFILES
    isa: list[str]  # the ISA_FLAGS this CPU has
    # Vendor, family, model and stepping: cloud VMs often show only "AMD EPYC" as the model name,
    # which Zen 3, 4 and 5 all share; these numbers still tell the cores apart.
    identity: str = "unknown"

    @property
    def hardware(self) -> str:
        """What latencies may be compared within: the same cores (model name and identity)."""
        return f"{self.model} [{self.identity}]"

    @property
    def int8_dot(self) -> bool:
        """u8 x s8 products accumulate in 32 bits (no 16-bit saturation, full 8-bit ranges are exact)."""
        return self.profile in INT8_DOT_PROFILES

    @property
    def native_bf16(self) -> bool:
        """bf16 math runs in hardware; elsewhere it is emulated and slower than f32."""
        return self.profile in NATIVE_BF16_PROFILES

    def isa_record(self) -> dict:
        """What the CPU-dependent stages depend on: the profile and flags, not the model name."""
        return {"profile": self.profile, "isa": self.isa}


def check_reduce_range(value: object) -> None:
    if not isinstance(value, bool) and value != AUTO:
        raise ValueError(f"reduce_range must be true, false or {AUTO}, got {value!r}")


def resolve_reduce_range(value: bool | str) -> bool:
    """`reduce_range: auto` -> 7-bit activations exactly where u8*s8 products would saturate."""
    check_reduce_range(value)
    return (not detect().int8_dot) if value == AUTO else bool(value)


def profile_of(flags: set[str], machine: str) -> str:
    if {"amx_int8", "amx_bf16"} & flags:
        return "amx"
    if {"avx512_vnni", "avx512_bf16"} <= flags:
        return "avx512_bf16"
    if {"avx512_vnni", "avx_vnni"} & flags:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    if machine in ("aarch64", "arm64") and "asimddp" in flags:
        return "arm_dotprod"
    return "generic"


def detect(cpuinfo: Path = PROC_CPUINFO, machine: str | None = None) -> Cpu:
    """The CPU described by /proc/cpuinfo (its first processor entry)."""
    fields: dict[str, str] = {}
    if Path(cpuinfo).is_file():
        for line in Path(cpuinfo).read_text().splitlines():
            if not line.strip():
                if fields:
                    break  # the end of the first processor's entry
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    machine = machine or platform.machine()
    model = fields.get("model name") or fields.get("Model") or platform.processor() or "unknown"
    return Cpu(model=model, profile=profile_of(flags, machine), isa=[flag for flag in ISA_FLAGS if flag in flags],
               identity=_identity(fields, machine))


def _identity(fields: dict[str, str], machine: str) -> str:
    """x86: "AuthenticAMD family 26 model 2 stepping 1"; aarch64: "arm implementer 0x41 part 0xd0c r3p1"."""
    if "vendor_id" in fields:
        return " ".join([fields["vendor_id"]] + [f"{key.split()[-1]} {fields[key]}" for key in
                                                 ("cpu family", "model", "stepping") if key in fields])
    if "CPU implementer" in fields:
        return (f"{machine} implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')} "
                f"r{fields.get('CPU variant', '?')}p{fields.get('CPU revision', '?')}")
    return "unknown"


def write_records(out_dir: Path) -> Cpu:
    """out_dir/isa.json (what builds artifacts: the ISA profile) and out_dir/machine.json (what
    latency depends on too: the model and core count). dvc.yaml's `cpu` stage writes them on
    every run, and a stage reruns only when the file it depends on changes."""
    cpu = detect()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "isa.json").write_text(json.dumps(cpu.isa_record(), indent=2) + "\n")
    machine = {**asdict(cpu), "logical_cpus": os.cpu_count()}
    (out_dir / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    return cpu
