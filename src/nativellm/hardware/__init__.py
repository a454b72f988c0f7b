"""Hardware detection: what this machine can really do, as a `nativellm.host/1` HostProfile.

Every probe is total: a missing tool or device gives an empty answer and a log line
saying why, never an exception. Each child process has a timeout.
"""

from __future__ import annotations

import logging
import platform

from nativellm.hardware.amd import detect_amd_gpus, detect_rocm_version
from nativellm.hardware.apple import detect_apple
from nativellm.hardware.cpu import (
    ChildRunner,
    IsaInfo,
    IsaRunner,
    ParsedCpu,
    detect_cpu,
    is_x86,
    parse_cpuinfo,
    read_memory_bytes,
    verify_flags,
)
from nativellm.hardware.nvidia import detect_cuda_version, detect_nvidia_gpus
from nativellm.hardware.profile import SCHEMA, CpuInfo, GpuInfo, HostProfile, Toolkits, load_profile
from nativellm.hardware.vulkan import (
    detect_vulkan_devices,
    detect_vulkan_toolkit,
    gpus_from_vulkan,
    software_from_vulkan,
)

__all__ = [
    "SCHEMA",
    "ChildRunner",
    "CpuInfo",
    "GpuInfo",
    "HostProfile",
    "IsaInfo",
    "IsaRunner",
    "ParsedCpu",
    "Toolkits",
    "detect_cpu",
    "detect_host",
    "load_profile",
    "normalize_arch",
    "parse_cpuinfo",
    "verify_flags",
]

log = logging.getLogger(__name__)


def normalize_arch(machine: str, system: str) -> str:
    """``x86_64``/``aarch64`` on Linux, ``arm64`` on macOS (the contract's spelling)."""
    m = machine.lower()
    if m in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if m in ("arm64", "aarch64"):
        return "arm64" if system == "Darwin" else "aarch64"
    return m


def _libc() -> str | None:
    name, version = platform.libc_ver()
    return f"{name} {version}" if name else None


def detect_host(timeout: float = 10.0, *, verify: bool = True) -> HostProfile:
    """Probe this machine. ``timeout`` bounds each child process, not the total."""
    system = platform.system()
    apple = detect_apple(timeout)
    if apple is not None and not is_x86():
        cpu = CpuInfo(
            vendor="Apple",
            model=apple.brand,
            flags=apple.flags,
            physical_cores=apple.physical_cores,
            logical_cores=apple.logical_cores,
        )
    else:
        cpu = detect_cpu(verify=verify, timeout=timeout)
    memory = apple.memory_bytes if apple is not None and apple.memory_bytes else read_memory_bytes()

    gpus: list[GpuInfo] = [*detect_nvidia_gpus(timeout), *detect_amd_gpus(timeout)]
    software: list[GpuInfo] = []
    if system == "Linux":
        # Vulkan adds what the vendor tools did not see (Intel, or a GPU without CUDA/ROCm).
        seen = {g.vendor for g in gpus}
        vk_devices = detect_vulkan_devices(timeout)
        gpus += [g for g in gpus_from_vulkan(vk_devices) if g.vendor not in seen]
        software = software_from_vulkan(vk_devices)
    if apple is not None and apple.gpu is not None:
        gpus.append(apple.gpu)
    if not gpus:
        log.info("no GPU found; the CPU backend will be planned")

    toolkits = Toolkits(
        cuda=detect_cuda_version(timeout),
        rocm=detect_rocm_version(timeout),
        vulkan=detect_vulkan_toolkit(),
        metal=system == "Darwin",
    )
    return HostProfile(
        os=system.lower(),
        arch=normalize_arch(platform.machine(), system),
        cpu=cpu,
        memory_bytes=memory,
        gpus=tuple(gpus),
        toolkits=toolkits,
        libc=_libc(),
        software_gpus=tuple(software),
    )
