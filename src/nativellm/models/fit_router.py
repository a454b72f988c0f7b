"""Memory fit for a router instance: several models behind one llama-server, `--models-max` at once.

Each model is estimated on its own (`estimate_fit`, with its own settings); the router needs the
worst set that may be loaded together: the `models_max` largest needs, taken separately for host
memory and for each GPU (a bound that holds whichever set the router happens to keep loaded).
`models_max` 0 means no limit: every model at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nativellm.errors import UsageError
from nativellm.hardware.profile import HostProfile
from nativellm.hardware.vram import GpuDevice, profile_devices
from nativellm.models.fit import FitReport, HasFacts, _fmt, _level, estimate_fit

if TYPE_CHECKING:
    from nativellm.paths import Paths


@dataclass(frozen=True)
class FitSettings:
    """One model's llama-server settings in the router preset, as far as memory goes."""

    ctx: int = 4096
    parallel: int = 1
    gpu_layers: int = 0
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_cpu_moe: int = 0
    cpu_moe: bool = False
    swa_full: bool = False


@dataclass(frozen=True)
class RouterFitReport:
    """The router's worst case and each model's own estimate (in the order given)."""

    verdict: str  # "fits" | "tight" | "does_not_fit"
    models_max: int  # as given: 0 is unlimited
    loaded_at_once: int  # how many models the worst case holds
    names: tuple[str, ...]
    models: tuple[FitReport, ...]
    total_bytes: int  # the largest `loaded_at_once` totals, summed
    host_bytes: int  # the largest `loaded_at_once` host needs, summed
    gpu_bytes: tuple[int, ...]  # per GPU: the largest `loaded_at_once` needs there, summed
    available_ram_bytes: int
    available_vram_bytes: tuple[int, ...]
    message: str
    devices: tuple[GpuDevice, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "models_max": self.models_max,
            "loaded_at_once": self.loaded_at_once,
            "total_bytes": self.total_bytes,
            "host_bytes": self.host_bytes,
            "gpu_bytes": list(self.gpu_bytes),
            "available_ram_bytes": self.available_ram_bytes,
            "available_vram_bytes": list(self.available_vram_bytes),
            "message": self.message,
            "models": [{"name": n, **r.to_dict()} for n, r in zip(self.names, self.models, strict=True)],
        }


def _top(values: Sequence[int], k: int) -> int:
    return sum(sorted(values, reverse=True)[:k])


def _one(rec: HasFacts, s: FitSettings, profile: HostProfile, inventory: Sequence[GpuDevice]) -> FitReport:
    return estimate_fit(
        rec, profile, ctx=s.ctx, parallel=s.parallel, gpu_layers=s.gpu_layers, cache_type_k=s.cache_type_k,
        cache_type_v=s.cache_type_v, devices=inventory, n_cpu_moe=s.n_cpu_moe, cpu_moe=s.cpu_moe,
        swa_full=s.swa_full,
    )  # fmt: skip


def estimate_router_fit(
    models: Sequence[tuple[HasFacts, FitSettings]],
    profile: HostProfile,
    *,
    models_max: int = 0,
    devices: Sequence[GpuDevice] | None = None,
) -> RouterFitReport:
    """The memory a router needs when up to `models_max` of `models` are loaded at once (0: all)."""
    if models_max < 0:
        raise UsageError(f"--models-max {models_max} is negative", "give 0 (no limit) or a positive count")
    if not models:
        raise UsageError("a router needs at least one model", "name the models with --models a,b")
    inventory = tuple(devices) if devices is not None else profile_devices(profile)
    reports = tuple(_one(rec, s, profile, inventory) for rec, s in models)
    names = tuple(rec.name for rec, _ in models)
    k = len(models) if models_max == 0 else min(models_max, len(models))
    gpus = tuple(d.capacity for d in inventory)
    host = _top([r.host_bytes for r in reports], k)
    per_gpu = tuple(
        _top([r.gpu_bytes[i] if i < len(r.gpu_bytes) else 0 for r in reports], k) for i in range(len(gpus))
    )
    total = _top([r.total_bytes for r in reports], k)
    level = max(
        [_level(host, profile.memory_bytes)] + [_level(u, m) for u, m in zip(per_gpu, gpus, strict=True) if u]
    )
    verdict = ("fits", "tight", "does_not_fit")[level]
    word = {"fits": "fits", "tight": "fits tightly", "does_not_fit": "does not fit"}[verdict]
    at_once = "all" if k == len(models) else f"the {k} largest"
    where = f"{_fmt(host)} of {_fmt(profile.memory_bytes)} RAM"
    if any(per_gpu):
        where += "; " + ", ".join(
            f"{_fmt(u)} of {_fmt(m)} on GPU {d.index}"
            for d, u, m in zip(inventory, per_gpu, gpus, strict=True)
        )
    each = ", ".join(f"{n} {_fmt(r.total_bytes)}" for n, r in zip(names, reports, strict=True))
    message = (
        f"router with {len(models)} models, {at_once} loaded at once, {word}: needs {_fmt(total)} "
        f"({each}); {where}" + (" (over 85% is tight)" if verdict == "tight" else "") + "."
    )
    return RouterFitReport(
        verdict=verdict,
        models_max=models_max,
        loaded_at_once=k,
        names=names,
        models=reports,
        total_bytes=total,
        host_bytes=host,
        gpu_bytes=per_gpu,
        available_ram_bytes=profile.memory_bytes,
        available_vram_bytes=gpus,
        message=message,
        devices=inventory,
    )


def fit_router_models(
    paths: Paths,
    models: Sequence[tuple[str, FitSettings]],
    profile: HostProfile,
    *,
    models_max: int = 0,
    devices: Sequence[GpuDevice] | None = None,
) -> RouterFitReport:
    """`estimate_router_fit` over registered models by name, each with its file's facts as they are now
    (like `registry.fit_model`: a record added before a fact existed, or a replaced file, is re-read)."""
    from nativellm.models.gguf import validate_model
    from nativellm.models.registry import ModelRegistry

    reg = ModelRegistry(paths)
    recs = []
    for name, settings in models:
        rec = reg.get(name)
        recs.append((replace(rec, facts=validate_model(list(rec.parts) or [rec.path])), settings))
    return estimate_router_fit(recs, profile, models_max=models_max, devices=devices)
