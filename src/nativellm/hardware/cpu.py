"""CPU probe: parse what the CPU reports, then keep only what this process can really use.

/proc/cpuinfo shows what CPUID advertises. A VM or kernel can advertise AVX-512 or
AMX without enabling its register state, and then `-march=native` code dies with
SIGILL. So every SIMD flag is checked three ways: the XCR0 state bits (XGETBV),
the AMX permission (arch_prctl), and by really executing one instruction of the
family in a child process (:mod:`nativellm.hardware.isa_exec`).
"""

from __future__ import annotations

import logging
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nativellm import run
from nativellm.hardware import isa_exec
from nativellm.hardware.profile import CpuInfo

log = logging.getLogger(__name__)

PROC_CPUINFO = Path("/proc/cpuinfo")
PROC_MEMINFO = Path("/proc/meminfo")
SYS_NODE = Path("/sys/devices/system/node")

XCR0_AVX = (1 << 1) | (1 << 2)  # SSE + YMM_Hi128
XCR0_AVX512 = (1 << 5) | (1 << 6) | (1 << 7)  # opmask, ZMM_Hi256, Hi16_ZMM
XCR0_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA

# Flags that need YMM state although their name does not start with "avx".
_AVX_STATE_FLAGS = frozenset({"fma", "f16c", "fma4", "xop", "vaes", "vpclmulqdq"})
# Families that isa_exec can really execute (named as /proc/cpuinfo spells the flag).
EXEC_FAMILIES = frozenset(isa_exec.FAMILIES) - {"base", "ud2"}

# aarch64 "CPU implementer" and (ARM Ltd) "CPU part" codes, for a readable model name.
_ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x43": "Cavium",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x50": "APM",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0x6d": "Microsoft",
    "0xc0": "Ampere",
}
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
    "0xd8e": "Neoverse-N3",
    "0xd84": "Neoverse-V3",
}


@dataclass(frozen=True)
class ParsedCpu:
    """What /proc/cpuinfo (or py-cpuinfo) reports, before any verification."""

    vendor: str
    model: str
    flags: tuple[str, ...]
    physical_cores: int
    logical_cores: int


def parse_cpuinfo(text: str) -> ParsedCpu:
    """Parse Linux /proc/cpuinfo text (x86 "flags" or aarch64 "Features" layout)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if not line.strip() and current:
                blocks.append(current)
                current = {}
            continue
        key = key.strip().lower()
        if key == "processor" and "processor" in current:
            blocks.append(current)
            current = {}
        value = value.strip()
        # Some kernels wrap long "Features" over several lines with the same key.
        current[key] = f"{current[key]} {value}" if key in ("flags", "features") and key in current else value
    if current:
        blocks.append(current)
    cpus = [b for b in blocks if "processor" in b and b["processor"].isdigit()] or blocks[:1]
    first = cpus[0] if cpus else {}
    flag_text = first.get("flags") or first.get("features") or ""
    flags = tuple(sorted({f.lower() for f in flag_text.split()}))
    vendor = first.get("vendor_id", "")
    model = " ".join(first.get("model name", "").split())
    implementer = first.get("cpu implementer", "").lower()
    if not vendor and implementer:
        vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
    if not model and implementer:
        part = first.get("cpu part", "").lower()
        name = _ARM_PARTS.get(part) if implementer == "0x41" else None
        model = f"{vendor} {name}" if name else f"{vendor} part {part or 'unknown'}"
    logical = max(len(cpus), 1)
    pairs = {(b.get("physical id"), b.get("core id")) for b in cpus if "core id" in b}
    physical = len(pairs) if pairs else logical
    return ParsedCpu(vendor, model, flags, physical, logical)


def parse_meminfo(text: str) -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def count_numa_nodes(root: Path = SYS_NODE) -> int:
    try:
        nodes = [p for p in root.iterdir() if re.fullmatch(r"node\d+", p.name)]
    except OSError:
        log.info("NUMA: %s is not readable; assuming 1 node", root)
        return 1
    return max(len(nodes), 1)


def read_memory_bytes() -> int:
    try:
        total = parse_meminfo(PROC_MEMINFO.read_text(encoding="utf-8", errors="replace"))
        if total:
            return total
    except OSError:
        log.info("memory: %s is not readable", PROC_MEMINFO)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        log.info("memory: sysconf cannot tell the physical memory size")
        return 0


def _from_py_cpuinfo() -> ParsedCpu:
    """Fallback where /proc/cpuinfo does not exist (macOS, BSD)."""
    logical = os.cpu_count() or 1
    try:
        import cpuinfo

        info: dict[str, Any] = cpuinfo.get_cpu_info()
    except Exception as exc:  # py-cpuinfo runs its own probes; any failure means "unknown"
        log.info("py-cpuinfo failed: %s", exc)
        return ParsedCpu("", platform.processor(), (), logical, logical)
    flags = tuple(sorted({str(f).lower() for f in info.get("flags", [])}))
    return ParsedCpu(
        str(info.get("vendor_id_raw", "")),
        str(info.get("brand_raw", "")),
        flags,
        logical,
        int(info.get("count", logical)),
    )


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class IsaInfo:
    """What the OS enabled. error is set when the execution mechanism itself is unusable."""

    xcr0: int | None
    amx_permission: str | None = None  # None: granted; else why not
    error: str | None = None


class IsaRunner(Protocol):
    """How instructions get executed; unit tests inject a fake."""

    def info(self) -> IsaInfo: ...

    def execute(self, families: Sequence[str]) -> Mapping[str, str | None]:
        """family -> None when it ran, else why it failed."""
        ...


class ChildRunner:
    """Runs isa_exec in child processes through nativellm.run, one crash per child."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        # By file path, isolated: the child needs only the stdlib, not nativellm on sys.path.
        self.argv = [sys.executable, "-I", "-S", str(Path(isa_exec.__file__).resolve())]

    def _run(self, args: Sequence[str]) -> tuple[list[str], str]:
        done = run.probe([*self.argv, *args], timeout=self.timeout)
        if done is None:
            return [], "the probe process timed out or could not start"
        lines = done.stdout.splitlines()
        if done.returncode == 0:
            return lines, ""
        tail = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
        return lines, run.describe_exit(done.returncode, "the probe process") + (
            f": {tail[0]}" if tail else ""
        )

    def info(self) -> IsaInfo:
        lines, why = self._run(["--info"])
        if "ok base" not in lines:
            fail = next((ln for ln in lines if ln.startswith("fail *:")), None)
            return IsaInfo(None, error=fail[len("fail *: ") :] if fail else why or "no output")
        xcr0: int | None = None
        amx: str | None = "the probe did not report AMX permission"
        for ln in lines:
            if ln.startswith("xcr0 "):
                xcr0 = int(ln.split()[1], 16)
            elif ln == "amx-perm ok":
                amx = None
            elif ln.startswith("amx-perm fail: "):
                amx = ln[len("amx-perm fail: ") :]
        if xcr0 is None:
            log.info("XGETBV did not complete: %s", why)
        return IsaInfo(xcr0, amx)

    def execute(self, families: Sequence[str]) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        remaining = list(families)
        while remaining:
            lines, why = self._run(remaining)
            started: str | None = None
            for ln in lines:
                word, _, rest = ln.partition(" ")
                if word == "start":
                    started = rest
                elif word == "ok":
                    results[rest] = None
                    started = None
                elif word == "fail":
                    fam, _, reason = rest.partition(": ")
                    if fam == "*":
                        why = reason
                        break
                    results[fam] = reason
            if started is not None:
                results[started] = why or "the probe stopped without a result"
            left = [f for f in remaining if f not in results]
            if len(left) == len(remaining):  # no progress: the child cannot run at all
                for fam in left:
                    results[fam] = why or "the probe gave no result"
                break
            remaining = left
        return results


def _requires(flag: str) -> str | None:
    """The flag that must also be usable for this one to count."""
    if flag.startswith("avx512") and flag != "avx512f":
        return "avx512f"
    if flag.startswith("amx") and flag != "amx_tile":
        return "amx_tile"
    if flag.startswith("avx_") or flag == "avx512f":
        # AVX-512F is formally independent of AVX2, but every such CPU has both and
        # ggml's AVX-512 paths assume AVX2; one failing alone means something is off.
        return "avx2"
    if flag == "avx2" or flag in _AVX_STATE_FLAGS:
        return "avx"
    return None


def _state_needed(flag: str) -> list[tuple[int, str]]:
    needs: list[tuple[int, str]] = []
    if flag.startswith("avx") or flag in _AVX_STATE_FLAGS:
        needs.append((XCR0_AVX, "AVX (YMM) register state"))
    if flag.startswith("avx512"):
        needs.append((XCR0_AVX512, "AVX-512 (opmask and ZMM) register state"))
    if flag.startswith("amx"):
        needs.append((XCR0_AMX, "AMX tile state"))
    return needs


def _propagate(flags: Iterable[str], present: set[str], dropped: dict[str, str]) -> None:
    for flag in flags:
        parent = None if flag in dropped else _requires(flag)
        while parent is not None:
            if parent in dropped:
                dropped[flag] = f"requires {parent}, which was dropped"
                break
            if parent not in present:
                dropped[flag] = f"requires {parent}, which the CPU does not report"
                break
            parent = _requires(parent)


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "i386")


def verify_flags(
    flags: Iterable[str],
    *,
    runner: IsaRunner | None = None,
    machine: str | None = None,
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split reported flags into (usable, {dropped flag: reason}).

    Non-x86 hosts are returned unchanged: their kernels only report usable features.
    """
    reported = sorted({f.lower() for f in flags})
    if not is_x86(machine):
        return tuple(reported), {}
    checked = [f for f in reported if _state_needed(f) or f in EXEC_FAMILIES]
    if not checked:
        return tuple(reported), {}
    runner = runner or ChildRunner()
    info = runner.info()
    if info.error is not None:
        log.warning("cannot verify CPU flags by execution (%s); trusting CPUID", info.error)
        return tuple(reported), {}
    dropped: dict[str, str] = {}
    for flag in checked:
        for mask, what in _state_needed(flag):
            if info.xcr0 is None:
                dropped[flag] = "XGETBV faulted: the OS has not enabled XSAVE, so no extended state"
            elif info.xcr0 & mask != mask:
                dropped[flag] = f"the OS has not enabled {what} in XCR0 ({info.xcr0:#x})"
            if flag in dropped:
                break
        if flag.startswith("amx") and flag not in dropped and info.amx_permission is not None:
            dropped[flag] = info.amx_permission
    present = set(reported)
    _propagate(checked, present, dropped)
    families = [f for f in checked if f in EXEC_FAMILIES and f not in dropped]
    results = runner.execute(families) if families else {}
    for fam in families:
        reason = results.get(fam, "the probe gave no result")
        if reason is not None:
            dropped[fam] = f"the {fam} test instruction failed: {reason}"
    _propagate(checked, present, dropped)
    for flag, reason in sorted(dropped.items()):
        log.info("CPU flag %s dropped: %s", flag, reason)
    return tuple(f for f in reported if f not in dropped), dropped


def read_cpuinfo() -> ParsedCpu:
    try:
        return parse_cpuinfo(PROC_CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        log.info("%s is not readable; asking py-cpuinfo", PROC_CPUINFO)
        return _from_py_cpuinfo()


def detect_cpu(
    *,
    verify: bool = True,
    timeout: float = 10.0,
    runner: IsaRunner | None = None,
    parsed: ParsedCpu | None = None,
) -> CpuInfo:
    """The CPU with verified flags. Never raises for missing sources; logs instead."""
    parsed = parsed or read_cpuinfo()
    kept, dropped = parsed.flags, dict[str, str]()
    verified = verify and is_x86()
    if verified:
        kept, dropped = verify_flags(parsed.flags, runner=runner or ChildRunner(timeout))
    return CpuInfo(
        vendor=parsed.vendor,
        model=parsed.model,
        flags=kept,
        physical_cores=parsed.physical_cores,
        logical_cores=parsed.logical_cores,
        numa_nodes=count_numa_nodes(),
        reported_flags=parsed.flags if verified else None,
        dropped_flags=dropped or None,
    )
