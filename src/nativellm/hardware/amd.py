"""AMD probe: GPU agents from rocminfo, VRAM, and the ROCm version."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from nativellm import run
from nativellm.hardware.profile import GpuInfo
from nativellm.versions import major_minor_text

log = logging.getLogger(__name__)

ROCM_ROOT = Path("/opt/rocm")
_KIB = 1024


@dataclass(frozen=True)
class RocmAgent:
    name: str  # gfx942 for GPUs, the CPU model for CPU agents
    marketing_name: str
    device_type: str  # GPU | CPU | DSP
    vram_bytes: int  # first GLOBAL pool of a GPU agent; 0 when not shown


def parse_rocminfo(text: str) -> list[RocmAgent]:
    """Every HSA agent in ``rocminfo`` output, in order."""
    agents: list[RocmAgent] = []
    fields: dict[str, str] | None = None
    vram = 0
    segment = ""

    def flush() -> None:
        if fields is not None and fields.get("name"):
            agents.append(
                RocmAgent(
                    fields["name"],
                    fields.get("marketing name", ""),
                    fields.get("device type", "").upper(),
                    vram,
                )
            )

    for raw in text.splitlines():
        line = raw.strip()
        if re.fullmatch(r"Agent \d+", line) or re.fullmatch(r"\*+\s*Agent \d+\s*\*+", line):
            flush()
            fields, vram, segment = {}, 0, ""
            continue
        if fields is None:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "segment":
            segment = value
        elif key == "size" and segment.startswith("GLOBAL") and not vram:
            m = re.match(r"(\d+)\(0x[0-9a-fA-F]+\)\s*KB", value)
            vram = int(m.group(1)) * _KIB if m else 0
        elif key not in fields:  # the first "Name:" is the agent's; ISA names come later
            fields[key] = value
    flush()
    return agents


def gpus_from_rocminfo(text: str) -> list[GpuInfo]:
    """GPU agents as GpuInfo; the index is the HIP device order (GPU agents in order)."""
    gpus: list[GpuInfo] = []
    for agent in parse_rocminfo(text):
        if agent.device_type != "GPU" or not agent.name.startswith("gfx"):
            continue
        gpus.append(
            GpuInfo(
                vendor="amd",
                index=len(gpus),
                name=agent.marketing_name or agent.name,
                arch=agent.name,
                memory_bytes=agent.vram_bytes,
            )
        )
    return gpus


def parse_rocm_smi_vram(text: str) -> list[int]:
    """VRAM totals from ``rocm-smi --showmeminfo vram --json``, in card order."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(data, dict):
        return []
    cards = sorted(
        (k for k in data if re.fullmatch(r"card\d+", k)),
        key=lambda k: int(k[4:]),
    )
    out = []
    for card in cards:
        entry = data[card]
        value = entry.get("VRAM Total Memory (B)") if isinstance(entry, dict) else None
        out.append(int(value) if value is not None and str(value).isdigit() else 0)
    return out


def parse_rocm_smi_vram_usage(text: str) -> list[tuple[int, int | None]]:
    """(total, used) VRAM bytes per card from ``rocm-smi --showmeminfo vram --json``, in card
    order; used is None where the card does not report "VRAM Total Used Memory (B)"."""
    totals = parse_rocm_smi_vram(text)
    if not totals:
        return []
    data = json.loads(text)
    cards = sorted((k for k in data if re.fullmatch(r"card\d+", k)), key=lambda k: int(k[4:]))
    out: list[tuple[int, int | None]] = []
    for card, total in zip(cards, totals, strict=True):
        entry = data[card]
        used = entry.get("VRAM Total Used Memory (B)") if isinstance(entry, dict) else None
        out.append((total, int(used) if used is not None and str(used).isdigit() else None))
    return out


def probe_rocm_vram_usage(timeout: float = 10.0) -> list[tuple[int, int | None]] | None:
    """Live (total, used) VRAM per AMD card from rocm-smi; None when rocm-smi does not answer."""
    exe = run.which("rocm-smi") or _under_rocm("bin/rocm-smi")
    if exe is None:
        return None
    done = run.probe([exe, "--showmeminfo", "vram", "--json"], timeout=timeout)
    return parse_rocm_smi_vram_usage(done.stdout) if done is not None and done.ok else None


def parse_rocm_version(text: str) -> str | None:
    """``6.2.41133-dd7f95766`` (hipconfig) or ``6.2.0-66`` (.info/version) -> ``"6.2"``."""
    return major_minor_text(text)


def _sysfs_vram() -> list[int]:
    sizes = []
    for path in sorted(Path("/sys/class/drm").glob("card[0-9]*/device/mem_info_vram_total")):
        try:
            sizes.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return sizes


def detect_amd_gpus(timeout: float = 10.0) -> list[GpuInfo]:
    """AMD GPUs from rocminfo. [] when ROCm is absent or sees no GPU."""
    exe = run.which("rocminfo") or _under_rocm("bin/rocminfo")
    if exe is None:
        log.info("amd: rocminfo not found on PATH or in %s/bin", ROCM_ROOT)
        return []
    done = run.probe([exe], timeout=timeout)
    if done is None or not done.ok:
        log.info("amd: rocminfo failed%s", f": {done.stderr.strip()}" if done else "")
        return []
    gpus = gpus_from_rocminfo(done.stdout)
    if gpus and any(g.memory_bytes == 0 for g in gpus):
        sizes = _rocm_smi_vram(timeout) or _sysfs_vram()
        if len(sizes) == len(gpus):
            gpus = [g if g.memory_bytes else _with_memory(g, s) for g, s in zip(gpus, sizes, strict=True)]
        else:
            log.info("amd: VRAM size unknown for some GPUs (%d sizes for %d GPUs)", len(sizes), len(gpus))
    return gpus


def _with_memory(g: GpuInfo, size: int) -> GpuInfo:
    return GpuInfo(g.vendor, g.index, g.name, g.arch, size, g.driver)


def _rocm_smi_vram(timeout: float) -> list[int]:
    exe = run.which("rocm-smi") or _under_rocm("bin/rocm-smi")
    if exe is None:
        return []
    done = run.probe([exe, "--showmeminfo", "vram", "--json"], timeout=timeout)
    return parse_rocm_smi_vram(done.stdout) if done is not None and done.ok else []


def _under_rocm(rel: str) -> str | None:
    path = ROCM_ROOT / rel
    return str(path) if path.is_file() else None


def detect_rocm_version(timeout: float = 10.0) -> str | None:
    """ROCm/HIP version as "major.minor", or None when ROCm is absent."""
    exe = run.which("hipconfig") or _under_rocm("bin/hipconfig")
    if exe is not None:
        done = run.probe([exe, "--version"], timeout=timeout)
        version = parse_rocm_version(done.stdout) if done is not None and done.ok else None
        if version:
            return version
    try:
        return parse_rocm_version((ROCM_ROOT / ".info" / "version").read_text())
    except OSError:
        log.info("amd: no hipconfig and no %s/.info/version; ROCm is not installed", ROCM_ROOT)
        return None
