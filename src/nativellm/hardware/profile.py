"""HostProfile: the public `nativellm.host/1` contract (DESIGN.md section 4)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nativellm.errors import NotFoundError, UsageError

SCHEMA = "nativellm.host/1"


@dataclass(frozen=True)
class CpuInfo:
    vendor: str
    model: str
    flags: tuple[str, ...]
    physical_cores: int
    logical_cores: int
    numa_nodes: int = 1
    reported_flags: tuple[str, ...] | None = None
    dropped_flags: dict[str, str] | None = None

    def has(self, flag: str) -> bool:
        return flag in self.flags


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # nvidia | amd | apple | intel
    index: int
    name: str
    arch: str  # sm_XY, gfxNNNN, apple-m2, intel
    memory_bytes: int
    driver: str | None = None
    # Additive (nativellm.host/1 allows new fields): set for Apple silicon only, dropped when None.
    # unified: the GPU shares the host's RAM, and memory_bytes is its working-set limit, not VRAM.
    unified: bool | None = None
    cores: int | None = None  # GPU cores (system_profiler's sppci_cores)


@dataclass(frozen=True)
class Toolkits:
    cuda: str | None = None
    rocm: str | None = None
    vulkan: str | None = None
    metal: bool = False


@dataclass(frozen=True)
class HostProfile:
    os: str
    arch: str
    cpu: CpuInfo
    memory_bytes: int
    gpus: tuple[GpuInfo, ...] = ()
    toolkits: Toolkits = field(default_factory=Toolkits)
    libc: str | None = None
    # Software Vulkan devices (Mesa lavapipe/llvmpipe): listed by `detect`, planned for only with an
    # explicit --backend vulkan, and kept out of `gpus` (no VRAM of their own, not a GPU to fit to).
    software_gpus: tuple[GpuInfo, ...] = ()

    def gpus_of(self, vendor: str) -> tuple[GpuInfo, ...]:
        return tuple(g for g in self.gpus if g.vendor == vendor)

    def to_dict(self) -> dict[str, Any]:
        cpu = asdict(self.cpu)
        cpu["flags"] = list(self.cpu.flags)
        for optional in ("reported_flags", "dropped_flags"):
            if cpu[optional] is None:
                del cpu[optional]
            elif optional == "reported_flags":
                cpu[optional] = list(cpu[optional])
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "os": self.os,
            "arch": self.arch,
            "cpu": cpu,
            "memory_bytes": self.memory_bytes,
            "gpus": [_drop_none(asdict(g)) for g in self.gpus],
            "toolkits": asdict(self.toolkits),
        }
        if self.libc is not None:
            out["libc"] = self.libc
        if self.software_gpus:
            out["software_gpus"] = [_drop_none(asdict(g)) for g in self.software_gpus]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostProfile:
        """Parse a profile; unknown fields are ignored, as the contract says."""
        schema = data.get("schema")
        if schema != SCHEMA:
            raise UsageError(
                f"profile schema is {schema!r}, expected {SCHEMA!r}",
                "write the profile with `nativellm detect --json`",
            )
        try:
            c = data["cpu"]
            cpu = CpuInfo(
                vendor=str(c.get("vendor", "")),
                model=str(c.get("model", "")),
                flags=tuple(sorted({str(f).lower() for f in c.get("flags", [])})),
                physical_cores=int(c.get("physical_cores", 1)),
                logical_cores=int(c.get("logical_cores", c.get("physical_cores", 1))),
                numa_nodes=int(c.get("numa_nodes", 1)),
                reported_flags=tuple(c["reported_flags"]) if c.get("reported_flags") else None,
                dropped_flags=dict(c["dropped_flags"]) if c.get("dropped_flags") else None,
            )
            gpus = _gpus(data.get("gpus", []))
            t = data.get("toolkits", {}) or {}
            toolkits = Toolkits(
                cuda=t.get("cuda"),
                rocm=t.get("rocm"),
                vulkan=t.get("vulkan"),
                metal=bool(t.get("metal", False)),
            )
            return cls(
                os=str(data["os"]),
                arch=str(data["arch"]),
                cpu=cpu,
                memory_bytes=int(data.get("memory_bytes", 0)),
                gpus=gpus,
                toolkits=toolkits,
                libc=data.get("libc"),
                software_gpus=_gpus(data.get("software_gpus", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"profile is malformed: {exc}", "write the profile with `nativellm detect --json`"
            ) from exc


def _gpus(items: list[dict[str, Any]]) -> tuple[GpuInfo, ...]:
    return tuple(
        GpuInfo(
            vendor=str(g["vendor"]),
            index=int(g.get("index", i)),
            name=str(g.get("name", "")),
            arch=str(g.get("arch", "")),
            memory_bytes=int(g.get("memory_bytes", 0)),
            driver=g.get("driver"),
            unified=bool(g["unified"]) if g.get("unified") is not None else None,
            cores=int(g["cores"]) if g.get("cores") is not None else None,
        )
        for i, g in enumerate(items)
    )


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def load_profile(path: Path) -> HostProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(
            f"profile {path} does not exist", "pass a file written by `nativellm detect --json`"
        ) from None
    except OSError as exc:
        raise NotFoundError(
            f"cannot read profile {path}: {exc.strerror}", "check the path and permissions"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"profile {path} is not JSON: {exc.msg} at line {exc.lineno}",
            "write it with `nativellm detect --json`",
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"profile {path} is not a JSON object", "write it with `nativellm detect --json`")
    try:
        return HostProfile.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A hand-edited profile: a section of the wrong JSON type, or a missing field.
        raise UsageError(
            f"profile {path} is not a valid HostProfile ({type(exc).__name__}: {exc})",
            "write it with `nativellm detect --json`, or fix the field it names",
        ) from None
