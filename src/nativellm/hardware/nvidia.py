"""NVIDIA probe: GPUs from NVML or nvidia-smi, the CUDA toolkit from nvcc."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from nativellm import run
from nativellm.hardware.profile import GpuInfo
from nativellm.hardware.vram import probe_nvml
from nativellm.versions import major_minor_text

log = logging.getLogger(__name__)

QUERY_FIELDS = ("index", "name", "compute_cap", "memory.total", "driver_version")
_LEGACY_FIELDS = ("index", "name", "memory.total", "driver_version")
_MIB = 1024 * 1024

# Drivers before ~510 cannot report compute_cap; the name then decides. Longest match wins.
_ARCH_BY_NAME: tuple[tuple[str, str], ...] = (
    ("RTX PRO 6000 Blackwell", "sm_120"),
    ("RTX 5090", "sm_120"),
    ("RTX 5080", "sm_120"),
    ("RTX 5070", "sm_120"),
    ("RTX 5060", "sm_120"),
    ("B200", "sm_100"),
    ("GB200", "sm_100"),
    ("H200", "sm_90"),
    ("H100", "sm_90"),
    ("GH200", "sm_90"),
    ("L40S", "sm_89"),
    ("L40", "sm_89"),
    ("L4", "sm_89"),
    ("RTX 4090", "sm_89"),
    ("RTX 4080", "sm_89"),
    ("RTX 4070", "sm_89"),
    ("RTX 4060", "sm_89"),
    ("RTX 6000 Ada", "sm_89"),
    ("RTX 4000 Ada", "sm_89"),
    ("A100", "sm_80"),
    ("A30", "sm_80"),
    ("A800", "sm_80"),
    ("A40", "sm_86"),
    ("A10", "sm_86"),
    ("RTX A6000", "sm_86"),
    ("RTX A5000", "sm_86"),
    ("RTX A4000", "sm_86"),
    ("RTX 3090", "sm_86"),
    ("RTX 3080", "sm_86"),
    ("RTX 3070", "sm_86"),
    ("RTX 3060", "sm_86"),
    ("T4", "sm_75"),
    ("RTX 2080", "sm_75"),
    ("RTX 2070", "sm_75"),
    ("RTX 2060", "sm_75"),
    ("Quadro RTX", "sm_75"),
    ("GTX 1660", "sm_75"),
    ("GTX 1650", "sm_75"),
    ("V100", "sm_70"),
    ("TITAN V", "sm_70"),
    ("P100", "sm_60"),
    ("P40", "sm_61"),
    ("P4", "sm_61"),
    ("GTX 1080", "sm_61"),
    ("GTX 1070", "sm_61"),
    ("GTX 1060", "sm_61"),
)


def arch_from_compute_cap(cap: str) -> str | None:
    """Compute capability to arch: ``12.0`` -> ``sm_120``, ``8.6`` -> ``sm_86``."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cap)
    return f"sm_{m.group(1)}{m.group(2)}" if m else None


def arch_from_name(name: str) -> str | None:
    """Best-effort arch from a product name, for drivers that lack compute_cap."""
    best: tuple[int, str] | None = None
    for needle, arch in _ARCH_BY_NAME:
        found = re.search(rf"(?<![A-Za-z0-9]){re.escape(needle)}(?![0-9])", name, re.IGNORECASE)
        if found and (best is None or len(needle) > best[0]):
            best = (len(needle), arch)
    return best[1] if best else None


def _mib(value: str) -> int:
    m = re.match(r"\s*(\d+(?:\.\d+)?)", value)
    return int(float(m.group(1)) * _MIB) if m else 0


def parse_nvidia_smi_csv(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`` output.

    A header row, when present, names the columns (and may carry " [MiB]" units);
    otherwise ``fields`` gives the order that was queried.
    """
    rows = [ln for ln in text.splitlines() if ln.strip() and "," in ln]
    columns = [f.strip() for f in fields]
    if rows and re.match(r"\s*(index|name)\s*,", rows[0]):
        columns = [re.sub(r"\s*\[.*\]$", "", c.strip()) for c in rows[0].split(",")]
        rows = rows[1:]
    gpus: list[GpuInfo] = []
    for i, row in enumerate(rows):
        cells = dict(zip(columns, (c.strip() for c in row.split(",")), strict=False))
        name = cells.get("name", "")
        if not name:
            continue
        cap = cells.get("compute_cap", "")
        arch = arch_from_compute_cap(cap) or arch_from_name(name)
        if arch is None:
            log.info("nvidia: cannot tell the architecture of %r (compute_cap %r)", name, cap)
            arch = "unknown"
        index = cells.get("index", "")
        driver = cells.get("driver_version")
        gpus.append(
            GpuInfo(
                vendor="nvidia",
                index=int(index) if index.isdigit() else i,
                name=name,
                arch=arch,
                memory_bytes=_mib(cells.get("memory.total", "")),
                driver=driver if driver and driver not in ("[N/A]", "N/A") else None,
            )
        )
    return gpus


def parse_nvcc_version(text: str) -> str | None:
    """``Cuda compilation tools, release 12.8, V12.8.93`` -> ``"12.8"``."""
    return major_minor_text(text, after="release")


def _from_nvml() -> list[GpuInfo] | None:
    """GPUs from the one NVML reader (hardware/vram.py); None when NVML is not usable here."""
    snap = probe_nvml()
    if snap is None:
        return None
    gpus = []
    for d in snap.devices:
        arch = (
            arch_from_compute_cap(d.compute_capability) if d.compute_capability else None
        ) or arch_from_name(d.name)
        gpus.append(GpuInfo("nvidia", d.index, d.name, arch or "unknown", d.total_bytes, snap.driver))
    return gpus


def detect_nvidia_gpus(timeout: float = 10.0) -> list[GpuInfo]:
    """NVIDIA GPUs, from NVML when importable, else nvidia-smi. [] when there are none."""
    gpus = _from_nvml()
    if gpus is not None:
        return gpus
    query = "--query-gpu=" + ",".join(QUERY_FIELDS)
    done = run.probe(["nvidia-smi", query, "--format=csv,noheader,nounits"], timeout=timeout)
    if done is None:
        return []
    if not done.ok and "compute_cap" in (done.stdout + done.stderr):
        log.info("nvidia: driver too old for compute_cap; mapping the product name instead")
        query = "--query-gpu=" + ",".join(_LEGACY_FIELDS)
        done = run.probe(["nvidia-smi", query, "--format=csv,noheader,nounits"], timeout=timeout)
        if done is None:
            return []
        fields: Sequence[str] = _LEGACY_FIELDS
    else:
        fields = QUERY_FIELDS
    if not done.ok:
        log.info("nvidia: nvidia-smi failed (%s): %s", done.returncode, (done.stderr or done.stdout).strip())
        return []
    return parse_nvidia_smi_csv(done.stdout, fields)


def find_nvcc() -> str | None:
    found = run.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    log.info("nvidia: nvcc is not on PATH, in $CUDA_HOME or in /usr/local/cuda/bin")
    return None


def detect_cuda_version(timeout: float = 10.0) -> str | None:
    """The CUDA toolkit version as "major.minor", or None when nvcc is absent."""
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    done = run.probe([nvcc, "--version"], timeout=timeout)
    version = parse_nvcc_version(done.stdout) if done is not None and done.ok else None
    if version is None:
        log.info("nvidia: %s --version gave no release number", nvcc)
    return version
