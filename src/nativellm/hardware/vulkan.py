"""Vulkan probe: devices from ``vulkaninfo --summary``; the toolkit from headers + glslc."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nativellm import run
from nativellm.hardware.profile import GpuInfo

log = logging.getLogger(__name__)

_VENDORS = {0x10DE: "nvidia", 0x1002: "amd", 0x8086: "intel", 0x106B: "apple", 0x10005: "mesa"}
SOFTWARE_ARCH = "cpu"  # GpuInfo.arch of a software Vulkan device (it runs on the host's CPU)
# Mesa RADV names the chip in parentheses; map codenames to the gfx target.
_RADV_CODENAMES = {
    "POLARIS10": "gfx803",
    "POLARIS11": "gfx803",
    "VEGA10": "gfx900",
    "VEGA20": "gfx906",
    "NAVI10": "gfx1010",
    "NAVI14": "gfx1012",
    "NAVI21": "gfx1030",
    "NAVI22": "gfx1031",
    "NAVI23": "gfx1032",
    "NAVI24": "gfx1034",
    "REMBRANDT": "gfx1035",
    "RAPHAEL_MENDOCINO": "gfx1036",
    "NAVI31": "gfx1100",
    "NAVI32": "gfx1101",
    "NAVI33": "gfx1102",
    "PHOENIX": "gfx1103",
    "NAVI44": "gfx1200",
    "NAVI48": "gfx1201",
}


@dataclass(frozen=True)
class VulkanDevice:
    index: int
    name: str
    device_type: str  # DISCRETE_GPU | INTEGRATED_GPU | VIRTUAL_GPU | CPU | OTHER
    vendor_id: int
    api_version: str | None

    @property
    def is_gpu(self) -> bool:
        return self.device_type != "CPU" and not self.name.lower().startswith(("llvmpipe", "lavapipe"))


def parse_vulkaninfo(text: str) -> list[VulkanDevice]:
    """Devices from ``vulkaninfo --summary`` (or the full output's device properties)."""
    devices: list[VulkanDevice] = []
    cur: dict[str, str] | None = None
    index = -1

    def flush() -> None:
        # The full (non-summary) output repeats "GPU0:" per section; the first one wins.
        if cur is not None and "devicename" in cur and all(d.index != index for d in devices):
            vid = cur.get("vendorid", "0")
            api = re.search(r"(\d+\.\d+\.\d+)", cur.get("apiversion", ""))
            devices.append(
                VulkanDevice(
                    index=index,
                    name=cur["devicename"],
                    device_type=cur.get("devicetype", "").removeprefix("PHYSICAL_DEVICE_TYPE_"),
                    vendor_id=int(vid, 16) if vid.lower().startswith("0x") else int(vid or 0),
                    api_version=api.group(1) if api else None,
                )
            )

    for raw in text.splitlines():
        line = raw.strip()
        m = re.fullmatch(r"GPU(\d+):?", line)
        if m:
            flush()
            cur, index = {}, int(m.group(1))
            continue
        if cur is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().lower()
        if key in ("apiversion", "vendorid", "devicetype", "devicename") and key not in cur:
            cur[key] = value.strip()
    flush()
    return devices


def _amd_arch(name: str) -> str:
    m = re.search(r"\bGFX(\d+)\b", name, re.IGNORECASE)
    if m:
        return f"gfx{m.group(1)}"
    m = re.search(r"\(RADV ([A-Z0-9_]+)\)", name)
    if m and m.group(1) in _RADV_CODENAMES:
        return _RADV_CODENAMES[m.group(1)]
    return "unknown"


def gpus_from_vulkan(devices: list[VulkanDevice]) -> list[GpuInfo]:
    """Real GPUs (software rasterisers left out) as GpuInfo. Vulkan does not show VRAM here."""
    gpus = []
    for dev in devices:
        if not dev.is_gpu:
            continue
        vendor = _VENDORS.get(dev.vendor_id, f"{dev.vendor_id:#06x}")
        arch = {"intel": "intel", "amd": _amd_arch(dev.name)}.get(vendor, "unknown")
        gpus.append(GpuInfo(vendor=vendor, index=dev.index, name=dev.name, arch=arch, memory_bytes=0))
    return gpus


def software_from_vulkan(devices: list[VulkanDevice]) -> list[GpuInfo]:
    """Software Vulkan devices (lavapipe/llvmpipe) as GpuInfo with arch "cpu". ggml-vulkan skips
    CPU-type devices unless GGML_VK_VISIBLE_DEVICES names them, so they are used only on request."""
    return [
        GpuInfo(
            vendor=_VENDORS.get(dev.vendor_id, f"{dev.vendor_id:#06x}"),
            index=dev.index,
            name=dev.name,
            arch=SOFTWARE_ARCH,
            memory_bytes=0,
            driver=f"Vulkan {dev.api_version}" if dev.api_version else None,
        )
        for dev in devices
        if not dev.is_gpu
    ]


def parse_vulkan_header_version(text: str) -> str | None:
    """``#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)`` -> "1.3"."""
    m = re.search(
        r"#define\s+VK_HEADER_VERSION_COMPLETE\s+VK_MAKE_(?:API_)?VERSION\(\s*(?:\d+\s*,\s*)?(\d+)\s*,\s*(\d+)",
        text,
    )
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _header_candidates() -> list[Path]:
    roots = [os.environ.get("VULKAN_SDK"), "/usr", "/usr/local"]
    return [Path(r) / "include" / "vulkan" / "vulkan_core.h" for r in roots if r]


def detect_vulkan_toolkit() -> str | None:
    """Vulkan SDK version when a build could use it: headers and glslc both present."""
    if run.which("glslc") is None:
        log.info("vulkan: glslc is not on PATH (install glslc or the Vulkan SDK)")
        return None
    for header in _header_candidates():
        try:
            version = parse_vulkan_header_version(header.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if version:
            return version
    log.info("vulkan: glslc found but no vulkan_core.h (install the Vulkan headers)")
    return None


def detect_vulkan_devices(timeout: float = 10.0) -> list[VulkanDevice]:
    """Devices the Vulkan loader sees. [] when vulkaninfo is absent or fails."""
    done = run.probe(["vulkaninfo", "--summary"], timeout=timeout)
    if done is None:
        return []
    if not done.ok:
        log.info("vulkan: vulkaninfo --summary failed (%s)", done.returncode)
        return []
    return parse_vulkaninfo(done.stdout)


def detect_vulkan_gpus(timeout: float = 10.0) -> list[GpuInfo]:
    """GPUs the Vulkan loader sees (software devices left out). [] when vulkaninfo fails."""
    return gpus_from_vulkan(detect_vulkan_devices(timeout))
