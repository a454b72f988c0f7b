"""`nativellm status` for one instance: what the unit, the server and the GPU tools said, as the
`nativellm.status/1` rows other tools read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nativellm.client import ModelState
from nativellm.hardware.vram import GpuMemory
from nativellm.serve.dropins import unit_name
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec


@dataclass(frozen=True)
class InstanceStatus:
    """`nativellm status` for one instance."""

    name: str
    spec: InstanceSpec
    unit: UnitState | None
    health: str  # ok | loading | down
    metrics: Mapping[str, float]
    error_line: str | None
    # () when it holds none (not running, or CPU only); None when it may but no source could tell.
    gpu_memory: tuple[GpuMemory, ...] | None = ()
    # A router's models and their states (loaded, loading, unloaded, sleeping, failed); None when
    # it is not a router, or the router did not answer.
    models: tuple[ModelState, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        u = self.unit
        return {
            "name": self.name,
            "unit": unit_name(self.name),
            "active_state": u.active_state if u else None,
            "sub_state": u.sub_state if u else None,
            "result": u.result if u else None,
            "enabled": u.unit_file_state if u else None,
            "pid": u.main_pid or None if u else None,
            "uptime_s": round(u.uptime_s, 1) if u and u.uptime_s is not None else None,
            "restarts": u.n_restarts if u else None,
            "start_limit_hit": u.start_limit_hit if u else None,
            "memory_bytes": u.memory_bytes if u else None,
            "cpu_s": round(u.cpu_ns / 1e9, 3) if u and u.cpu_ns is not None else None,
            "host": self.spec.host,
            "port": self.spec.port,
            "url": f"http://{self.spec.host}:{self.spec.port}",
            "health": self.health,
            "healthy": self.health == "ok",
            "model": self.spec.model or None,
            "router": self.spec.is_router,
            "models": None if self.models is None else [m.to_dict() for m in self.models],
            "build": self.spec.build,
            "metrics": dict(self.metrics),
            "error": self.error_line,
            "gpu_memory": None if self.gpu_memory is None else [g.to_dict() for g in self.gpu_memory],
        }
