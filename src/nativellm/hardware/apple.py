"""Apple probe (macOS): the SoC, its unified memory, and its CPU features via sysctl.

The parse functions take captured text so they are tested on Linux.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass

from nativellm import run
from nativellm.hardware.profile import GpuInfo

log = logging.getLogger(__name__)

SYSCTL_KEYS = (
    "machdep.cpu.brand_string",
    "hw.memsize",
    "hw.physicalcpu",
    "hw.logicalcpu",
)

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


def apple_host_from_sysctl(values: dict[str, str]) -> AppleHost:
    brand = values.get("machdep.cpu.brand_string", "")
    memory = int(values.get("hw.memsize", "0") or 0)
    logical = int(values.get("hw.logicalcpu", "0") or 0) or 1
    physical = int(values.get("hw.physicalcpu", "0") or 0) or logical
    family = chip_family(brand)
    # Apple silicon's GPU shares the unified memory; report all of it, as Metal does.
    gpu = GpuInfo("apple", 0, brand, family, memory) if family else None
    return AppleHost(brand, memory, physical, logical, arm_flags(values), gpu)


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
    features = run.probe(["sysctl", "hw.optional"], timeout=timeout)
    if features is not None and features.ok:
        values.update(parse_sysctl(features.stdout))
    return apple_host_from_sysctl(values)
