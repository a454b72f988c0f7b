"""Apple probe (macOS): the SoC, its unified memory, its GPU, and its CPU features.

Sources: `sysctl` (brand, memory, core counts, hw.optional.* features, iogpu.wired_limit_mb) and
`system_profiler SPDisplaysDataType -json` (GPU model, core count, Metal family). The parse functions
take captured text so they are tested on Linux, and are total: a key that is absent or malformed
gives None (or the field's neutral value), never an exception.

Unified memory: the CPU and GPU share one pool of RAM. Metal lets the GPU's working set grow to
`MTLDevice.recommendedMaxWorkingSetSize`, which ggml-metal reports as the device's memory and
warns past ("current allocated size is greater than the recommended max working set size"). Logs
users posted show it at 2/3 of RAM on a 32 GiB Mac (21845.34 MB, ollama/ollama#434) and 3/4 on
a 96 GiB Mac (73728.00 MB, ggml-org/llama.cpp#3213); 3/4 is also what is reported for 64 and
128 GiB Macs. The root-only `sysctl iogpu.wired_limit_mb=N` moves the limit (0: macOS's default).
So the GPU is reported with that working set as its memory, and flagged `unified`: models/fit.py
then takes what the GPU holds out of the same RAM instead of counting those bytes twice.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nativellm import run
from nativellm.hardware.profile import GpuInfo

log = logging.getLogger(__name__)

SYSCTL_KEYS = (
    "machdep.cpu.brand_string",
    "hw.memsize",
    "hw.physicalcpu",
    "hw.logicalcpu",
)
# Performance and efficiency cores (macOS 12+ on Apple silicon; unknown names on Intel Macs).
PERFLEVEL_KEYS = ("hw.perflevel0.physicalcpu", "hw.perflevel1.physicalcpu")
WIRED_LIMIT_KEY = "iogpu.wired_limit_mb"  # macOS 14+ on Apple silicon; unknown elsewhere

# sysctl hw.optional.* -> Linux /proc/cpuinfo spelling, so one set of names serves the planner.
_FEATURES = {
    "hw.optional.floatingpoint": ("fp",),
    "hw.optional.AdvSIMD": ("asimd",),
    "hw.optional.neon": ("asimd",),
    "hw.optional.arm.FEAT_AES": ("aes",),
    "hw.optional.arm.FEAT_PMULL": ("pmull",),
    "hw.optional.arm.FEAT_SHA1": ("sha1",),
    "hw.optional.arm.FEAT_SHA256": ("sha2",),
    "hw.optional.arm.FEAT_SHA512": ("sha512",),
    "hw.optional.arm.FEAT_SHA3": ("sha3",),
    "hw.optional.armv8_crc32": ("crc32",),
    "hw.optional.arm.FEAT_CRC32": ("crc32",),
    "hw.optional.arm.FEAT_LSE": ("atomics",),
    "hw.optional.arm.FEAT_RDM": ("asimdrdm",),
    "hw.optional.arm.FEAT_FP16": ("fphp", "asimdhp"),
    "hw.optional.arm.FEAT_FHM": ("asimdfhm",),
    "hw.optional.arm.FEAT_DotProd": ("asimddp",),
    "hw.optional.arm.FEAT_I8MM": ("i8mm",),
    "hw.optional.arm.FEAT_BF16": ("bf16",),
    "hw.optional.arm.FEAT_JSCVT": ("jscvt",),
    "hw.optional.arm.FEAT_FCMA": ("fcma",),
    "hw.optional.arm.FEAT_LRCPC": ("lrcpc",),
    "hw.optional.arm.FEAT_LRCPC2": ("ilrcpc",),
    "hw.optional.arm.FEAT_DPB": ("dcpop",),
    "hw.optional.arm.FEAT_FlagM": ("flagm",),
    "hw.optional.arm.FEAT_SB": ("sb",),
    "hw.optional.arm.FEAT_SSBS": ("ssbs",),
    "hw.optional.arm.FEAT_DIT": ("dit",),
    "hw.optional.arm.FEAT_SME": ("sme",),
    "hw.optional.arm.FEAT_SME2": ("sme2",),
}


@dataclass(frozen=True)
class AppleHost:
    brand: str
    memory_bytes: int
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...]
    gpu: GpuInfo | None
    performance_cores: int | None = None
    efficiency_cores: int | None = None
    wired_limit_mb: int | None = None  # iogpu.wired_limit_mb when set (> 0); None: macOS's default


@dataclass(frozen=True)
class AppleGpu:
    """One entry of `system_profiler SPDisplaysDataType -json`."""

    model: str | None  # sppci_model, e.g. "Apple M3 Pro"
    cores: int | None  # sppci_cores (a string there)
    metal: str | None  # spdisplays_mtlgpufamilysupport, e.g. "spdisplays_metal3" -> "metal3"
    builtin: bool  # sppci_bus == spdisplays_builtin: the SoC's own GPU


# Default GPU working set as a fraction of RAM (see the module docstring for the evidence).
SMALL_MAC_BYTES = 36 * 2**30
SMALL_FRACTION = (2, 3)
LARGE_FRACTION = (3, 4)


def gpu_working_set_bytes(memory_bytes: int, wired_limit_mb: int | None = None) -> int:
    """What Metal lets the GPU keep resident: iogpu.wired_limit_mb when set, else 2/3 of RAM up to
    36 GiB and 3/4 above (recommendedMaxWorkingSetSize as ggml-metal logs it)."""
    if memory_bytes <= 0:
        return 0
    if wired_limit_mb is not None and wired_limit_mb > 0:
        return min(memory_bytes, wired_limit_mb * 2**20)
    num, den = SMALL_FRACTION if memory_bytes <= SMALL_MAC_BYTES else LARGE_FRACTION
    return memory_bytes * num // den


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_displays(text: str) -> tuple[AppleGpu, ...]:
    """The GPUs in `system_profiler SPDisplaysDataType -json` output; () for anything unreadable."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return ()
    entries = data.get("SPDisplaysDataType") if isinstance(data, dict) else None
    out = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict) or e.get("sppci_device_type", "spdisplays_gpu") != "spdisplays_gpu":
            continue
        model = e.get("sppci_model") or e.get("_name")
        metal = e.get("spdisplays_mtlgpufamilysupport") or e.get("spdisplays_metal")
        out.append(
            AppleGpu(
                model=str(model) if model else None,
                cores=_int(e.get("sppci_cores")),
                metal=str(metal).removeprefix("spdisplays_") if metal else None,
                builtin=e.get("sppci_bus") == "spdisplays_builtin",
            )
        )
    return tuple(out)


def parse_sysctl(text: str) -> dict[str, str]:
    """``key: value`` lines of ``sysctl KEY...`` output."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def chip_family(brand: str) -> str | None:
    """``Apple M2 Pro`` -> ``apple-m2``; None for Intel Macs."""
    m = re.match(r"\s*Apple (M\d+)\b", brand)
    return f"apple-{m.group(1).lower()}" if m else None


def arm_flags(values: dict[str, str]) -> tuple[str, ...]:
    flags = {f for key, names in _FEATURES.items() if values.get(key) == "1" for f in names}
    return tuple(sorted(flags))


def apple_host_from_sysctl(values: dict[str, str], displays: Sequence[AppleGpu] = ()) -> AppleHost:
    brand = values.get("machdep.cpu.brand_string", "")
    memory = max(0, _int(values.get("hw.memsize")) or 0)
    logical = _int(values.get("hw.logicalcpu")) or 1
    physical = _int(values.get("hw.physicalcpu")) or logical
    wired = _int(values.get(WIRED_LIMIT_KEY))
    wired = wired if wired is not None and wired > 0 else None
    family = chip_family(brand)
    gpu = None
    if family:
        # The SoC's GPU: its model and core count from system_profiler when it answered.
        sp = next((d for d in displays if d.builtin or (d.model and chip_family(d.model))), None)
        name = (sp.model if sp is not None and sp.model else None) or brand
        gpu = GpuInfo(
            "apple", 0, name, family, gpu_working_set_bytes(memory, wired),
            driver=sp.metal if sp is not None else None,
            unified=True, cores=sp.cores if sp is not None else None,
        )  # fmt: skip
    return AppleHost(
        brand, memory, physical, logical, arm_flags(values), gpu,
        performance_cores=_int(values.get("hw.perflevel0.physicalcpu")),
        efficiency_cores=_int(values.get("hw.perflevel1.physicalcpu")),
        wired_limit_mb=wired,
    )  # fmt: skip


def host_ram_left(memory_bytes: int, gpus: Sequence[GpuInfo], gpu_bytes: Sequence[int]) -> int:
    """RAM left for the host's share once the unified-memory GPUs hold `gpu_bytes` (per GPU, in
    the order of `gpus`): their bytes are the same RAM, so they are not counted twice."""
    shared = sum(b for g, b in zip(gpus, gpu_bytes, strict=False) if g.unified)
    return max(0, memory_bytes - shared)


def is_macos() -> bool:
    return platform.system() == "Darwin"


def detect_apple(timeout: float = 10.0) -> AppleHost | None:
    """The Apple host, or None when this is not macOS or sysctl fails."""
    if not is_macos():
        return None
    done = run.probe(["sysctl", *SYSCTL_KEYS], timeout=timeout)
    if done is None or not done.ok:
        log.info("apple: sysctl failed; no Apple details")
        return None
    values = parse_sysctl(done.stdout)
    for extra in (["sysctl", "hw.optional"], ["sysctl", *PERFLEVEL_KEYS], ["sysctl", WIRED_LIMIT_KEY]):
        # Separately: sysctl exits non-zero at the first unknown name (Intel Macs, older macOS).
        got = run.probe(extra, timeout=timeout)
        if got is not None and got.ok:
            values.update(parse_sysctl(got.stdout))
    sp = run.probe(["system_profiler", "SPDisplaysDataType", "-json"], timeout=max(timeout, 30.0))
    displays = parse_displays(sp.stdout) if sp is not None and sp.ok else ()
    return apple_host_from_sysctl(values, displays)
