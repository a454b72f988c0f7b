"""Hardware classes for fleets: the fingerprint of a HostProfile, and what a build needs to run.

`fingerprint(profile)` is the key that groups hosts which plan to the same build; an artifact
index is keyed by it. `requirements_of(manifest)` says what a built binary needs from the host
that runs it, derived from the manifest's plan (not from the build host, except for glibc and
the CUDA toolkit it was compiled with). `Requirements.unmet(host)` turns a mismatch into the
sentences `install-artifact` refuses with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The ISA tables in plan.py are the single source of truth for which CPU flags change a plan.
from nativellm.build.plan import _ARM, _X86
from nativellm.fsutil import canonical_hash
from nativellm.hardware.profile import HostProfile
from nativellm.versions import major_minor_text, version_tuple

FINGERPRINT_SCHEMA = "nativellm.fingerprint/1"
FINGERPRINT_VERSION = 1  # bump when the key's parts change; old keys then stop matching

PLANNED_CPU_FLAGS: frozenset[str] = frozenset(
    {f for _, _, needs, _ in _X86 for f in needs} | {f for _, needs, _, _ in _ARM for f in needs}
)
"""CPU flags (cpuinfo spelling) that any plan reads; other flags don't change a build."""

# Oldest NVIDIA driver for each CUDA major, with CUDA's minor-version compatibility
# (CUDA Toolkit release notes, table "CUDA Toolkit and Minimum Required Driver Version").
CUDA_MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
_LIBC_RE = re.compile(r"^(\S+)\s+(\d+)\.(\d+)")
_MACOS = frozenset({"macos", "darwin"})


@dataclass(frozen=True)
class Fingerprint:
    """A stable hardware-class key plus the parts it hashes (documented in README)."""

    key: str
    parts: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": FINGERPRINT_SCHEMA, "key": self.key, "parts": dict(self.parts)}


def _major(version: str | None) -> str | None:
    if not version:
        return None
    m = re.match(r"(\d+)", version.strip())
    return m.group(1) if m else None


def libc_version(libc: str | None) -> tuple[str, tuple[int, int]] | None:
    """`"glibc 2.36"` -> ("glibc", (2, 36)); None when absent or unparseable."""
    m = _LIBC_RE.match(libc or "")
    return (m.group(1), (int(m.group(2)), int(m.group(3)))) if m else None


def fingerprint(profile: HostProfile) -> Fingerprint:
    """Hosts with equal keys plan to the same build and can share an artifact."""
    libc = libc_version(profile.libc)
    tk = profile.toolkits
    parts: dict[str, Any] = {
        "os": profile.os,
        "arch": profile.arch,
        "isa": sorted(set(profile.cpu.flags) & PLANNED_CPU_FLAGS),
        "gpus": sorted({f"{g.vendor}:{g.arch}" for g in profile.gpus}),
        "toolkits": {
            "cuda": _major(tk.cuda),
            "rocm": _major(tk.rocm),
            "vulkan": _major(tk.vulkan),
            "metal": tk.metal,
        },
        "libc": f"{libc[0]} {libc[1][0]}.{libc[1][1]}" if libc else None,
    }
    digest = canonical_hash({"v": FINGERPRINT_VERSION, **parts})[:16]
    return Fingerprint(f"{profile.os}-{profile.arch}-{digest}", parts)


def _plural(items: list[str], one: str, many: str) -> str:
    return one if len(items) == 1 else many


@dataclass(frozen=True)
class Requirements:
    """What a build needs from the host that runs it (`requirements` in an artifact)."""

    os: str
    arch: str
    backend: str
    cpu: str = "explicit"  # explicit: the plan's ISA flags | portable: any CPU of the arch | native
    cpu_flags: tuple[str, ...] = ()
    glibc: str | None = None  # "2.36": the build host's glibc, the newest symbol versions it may use
    gpu_vendor: str | None = None
    gpu_archs: tuple[str, ...] = ()  # device code compiled for exactly these (sm_120, gfx1100)
    gpu_ptx: tuple[str, ...] = ()  # PTX that the driver JIT-compiles for these and newer GPUs
    cuda: str | None = None  # the CUDA toolkit it was compiled with
    cuda_driver_min: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "os": self.os,
            "arch": self.arch,
            "backend": self.backend,
            "cpu": self.cpu,
            "cpu_flags": list(self.cpu_flags),
            "glibc": self.glibc,
            "gpu_vendor": self.gpu_vendor,
            "gpu_archs": list(self.gpu_archs),
            "gpu_ptx": list(self.gpu_ptx),
            "cuda": self.cuda,
            "cuda_driver_min": self.cuda_driver_min,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Requirements:
        return cls(
            os=str(d["os"]),
            arch=str(d["arch"]),
            backend=str(d.get("backend", "cpu")),
            cpu=str(d.get("cpu", "explicit")),
            cpu_flags=tuple(str(f) for f in d.get("cpu_flags", [])),
            glibc=d.get("glibc"),
            gpu_vendor=d.get("gpu_vendor"),
            gpu_archs=tuple(str(a) for a in d.get("gpu_archs", [])),
            gpu_ptx=tuple(str(a) for a in d.get("gpu_ptx", [])),
            cuda=d.get("cuda"),
            cuda_driver_min=d.get("cuda_driver_min"),
        )

    def describe(self) -> str:
        """One line: "x86_64 linux with avx, avx2, ...; glibc >= 2.36"."""
        cpu = {"portable": "any CPU", "native": "the build host's CPU flags"}.get(self.cpu, "")
        flags = ", ".join(self.cpu_flags) if self.cpu_flags else "the baseline ISA"
        text = [f"{self.arch} {self.os} with {flags}" + (f" ({cpu})" if cpu else "")]
        if self.gpu_vendor:
            archs = ", ".join([*self.gpu_archs, *(f"{p}+ via PTX" for p in self.gpu_ptx)]) or "any"
            gpu = f"{self.gpu_vendor} GPU ({archs})"
            if self.cuda_driver_min:
                gpu += f" with driver >= {self.cuda_driver_min} (CUDA {self.cuda})"
            text.append(gpu)
        if self.glibc:
            text.append(f"glibc >= {self.glibc}")
        return "; ".join(text)

    def unmet(self, host: HostProfile) -> list[str]:
        """Each requirement `host` fails, as a sentence; empty when the build can run there."""
        problems: list[str] = []
        if host.os != self.os and not (host.os in _MACOS and self.os in _MACOS):
            problems.append(f"this build is for {self.os}, this host runs {host.os}")
        if host.arch != self.arch:
            problems.append(f"this build is for {self.arch}, this CPU is {host.arch}")
        missing = [f for f in self.cpu_flags if f not in host.cpu.flags]
        if missing:
            it = _plural(missing, "it", "them")
            problems.append(f"this build needs {', '.join(missing)}, this CPU lacks {it}")
        problems += self._unmet_libc(host)
        problems += self._unmet_gpu(host)
        return problems

    def _unmet_libc(self, host: HostProfile) -> list[str]:
        if not self.glibc:
            return []
        have = libc_version(host.libc)
        if have is None:  # unknown here: the smoke test on this host is the guard
            return []
        need = version_tuple(self.glibc)
        if have[0] != "glibc":
            return [f"this build needs glibc >= {self.glibc}, this host has {host.libc}"]
        if have[1] < need:
            return [f"this build needs glibc >= {self.glibc}, this host has glibc {have[1][0]}.{have[1][1]}"]
        return []

    def _unmet_gpu(self, host: HostProfile) -> list[str]:
        if not self.gpu_vendor:
            return []
        gpus = host.gpus_of(self.gpu_vendor) if self.gpu_vendor != "any" else host.gpus
        wanted = ", ".join([*self.gpu_archs, *self.gpu_ptx])
        if not gpus:
            what = "a GPU" if self.gpu_vendor == "any" else f"an {self.gpu_vendor.upper()} GPU"
            return [f"this build needs {what}" + (f" ({wanted})" if wanted else "") + ", this host has none"]
        problems: list[str] = []
        if self.gpu_archs or self.gpu_ptx:
            for g in gpus:
                if not _covers(g.arch, self.gpu_archs, self.gpu_ptx):
                    problems.append(
                        f"this build has device code for {wanted} only, GPU {g.index} {g.name} is {g.arch}"
                    )
        if self.cuda_driver_min:
            need = version_tuple(self.cuda_driver_min)
            for g in gpus:
                if g.driver and version_tuple(g.driver) < need:
                    problems.append(
                        f"this build needs NVIDIA driver >= {self.cuda_driver_min} (CUDA {self.cuda}), "
                        f"GPU {g.index} has {g.driver}"
                    )
        return problems


def _sm(arch: str) -> int | None:
    m = re.fullmatch(r"sm_(\d+)a?", arch)
    return int(m.group(1)) if m else None


def _covers(arch: str, real: tuple[str, ...], ptx: tuple[str, ...]) -> bool:
    if arch in real:
        return True
    n = _sm(arch)
    return n is not None and any((p := _sm(x)) is not None and p <= n for x in ptx)


def _cuda_archs(value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CMAKE_CUDA_ARCHITECTURES -> (real sm archs, PTX sm archs). "120a-real" is sm_120 only."""
    real: list[str] = []
    ptx: list[str] = []
    for item in filter(None, value.split(";")):
        m = re.fullmatch(r"(\d+)(a|f)?(?:-(real|virtual))?", item.strip())
        if not m:
            continue
        sm = f"sm_{m.group(1)}"
        if m.group(3) != "virtual":
            real.append(sm)
        if m.group(3) != "real" and not m.group(2):  # 12Xa PTX can't JIT onto other GPUs
            ptx.append(sm)
    return tuple(sorted(set(real))), tuple(sorted(set(ptx)))


def _cpu_flags(defines: Mapping[str, str], built_on: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    if defines.get("GGML_NATIVE") == "ON":
        # -march=native of the build host: every flag it had may be in the binary.
        flags = set(built_on.get("cpu", {}).get("flags", [])) & PLANNED_CPU_FLAGS
        return "native", tuple(sorted(flags))
    if defines.get("GGML_CPU_ALL_VARIANTS") == "ON":
        return "portable", ()  # ggml picks a CPU variant at run time, down to the baseline
    flags = {f for define, _, needs, _ in _X86 if defines.get(define) == "ON" for f in needs}
    arm = defines.get("GGML_CPU_ARM_ARCH", "")
    tags = set(arm.split("+")[1:])
    flags |= {f for tag, needs, _, _ in _ARM if tag in tags for f in needs}
    return "explicit", tuple(sorted(flags))


def requirements_of(manifest: Mapping[str, Any]) -> Requirements:
    """What the build described by a store manifest needs from the host that runs it."""
    plan = manifest.get("plan", {})
    defines: Mapping[str, str] = plan.get("cmake_defines", {})
    backend = str(plan.get("backend", "cpu"))
    built_for: Mapping[str, Any] = manifest.get("built_for", {})
    built_on: Mapping[str, Any] = manifest.get("built_on", built_for)
    cpu, flags = _cpu_flags(defines, built_on)
    libc = libc_version(built_on.get("libc"))
    glibc = f"{libc[1][0]}.{libc[1][1]}" if libc and libc[0] == "glibc" else None
    gpu_vendor: str | None = None
    real: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()
    cuda: str | None = None
    driver: str | None = None
    if backend == "cuda":
        gpu_vendor = "nvidia"
        real, ptx = _cuda_archs(defines.get("CMAKE_CUDA_ARCHITECTURES", ""))
        cuda = major_minor_text(str(manifest.get("toolchain", {}).get("nvcc") or ""), after="release")
        if cuda is None:
            cuda = major_minor_text(str(built_on.get("toolkits", {}).get("cuda") or ""))
        if cuda:
            driver = CUDA_MIN_DRIVER.get(version_tuple(cuda)[0])
    elif backend == "hip":
        gpu_vendor = "amd"
        real = tuple(sorted(filter(None, defines.get("GPU_TARGETS", "").split(";"))))
    elif backend == "vulkan":
        gpu_vendor = "any"
    elif backend == "sycl":
        gpu_vendor = "intel"
    return Requirements(
        os=str(built_for.get("os", built_on.get("os", "linux"))),
        arch=str(built_for.get("arch", built_on.get("arch", ""))),
        backend=backend,
        cpu=cpu,
        cpu_flags=flags,
        glibc=glibc,
        gpu_vendor=gpu_vendor,
        gpu_archs=real,
        gpu_ptx=ptx,
        cuda=cuda,
        cuda_driver_min=driver,
    )
