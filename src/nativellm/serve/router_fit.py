"""Memory fit for router instances: at add/edit time for the models that may be loaded together,
and before each `model load`/`swap` for the memory left now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nativellm.errors import ResourceError
from nativellm.hardware.profile import HostProfile
from nativellm.models.fit import FitReport, estimate_fit
from nativellm.models.registry import ModelRegistry
from nativellm.paths import Paths
from nativellm.serve.router import at_once, fit_settings, worst_case
from nativellm.specs import InstanceSpec


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def model_fit(paths: Paths, spec: InstanceSpec, model: str, profile: HostProfile) -> FitReport | None:
    """One router model's estimate with its own settings (None: not registered, or no facts)."""
    rec = ModelRegistry(paths).find(model)
    if rec is None or not rec.facts:
        return None
    s = fit_settings(spec, model)
    return estimate_fit(
        rec, profile, ctx=s.ctx, parallel=s.parallel, gpu_layers=s.gpu_layers,
        cache_type_k=s.cache_type_k, cache_type_v=s.cache_type_v,
    )  # fmt: skip


def router_fit(paths: Paths, spec: InstanceSpec, profile: HostProfile, *, force: bool) -> str | None:
    """The most the router can hold at once (its --models-max largest models) against this host's
    RAM and GPU memory. Refused (ResourceError) unless `force`; a warning when tight."""
    reports = {m: r for m in spec.models or () if (r := model_fit(paths, spec, m, profile)) is not None}
    if not reports:
        return None
    n = at_once(spec)
    host, which = worst_case({m: r.host_bytes for m, r in reports.items()}, n)
    gpu, _ = worst_case({m: sum(r.gpu_bytes) for m, r in reports.items()}, n)
    vram = sum(next(iter(reports.values())).available_vram_bytes)
    ram = profile.memory_bytes
    level = max(_level(host, ram), _level(gpu, vram) if gpu else 0)
    what = (
        f"router {spec.name} with up to {n} of {len(spec.models or ())} models loaded at once "
        f"({', '.join(which)}) needs {_fmt(host)} of {_fmt(ram)} RAM"
        + (f" and {_fmt(gpu)} of {_fmt(vram)} GPU memory" if gpu else "")
    )
    if level == 2 and not force:
        raise ResourceError(
            f"{what}: it does not fit",
            "lower --models-max, the models' ctx-size, or pick smaller models; --force to add it anyway",
        )
    return f"{what} (over 85% is tight)" if level == 1 else (f"{what}: does not fit" if level == 2 else None)


def _level(need: int, have: int) -> int:
    if not have:
        return 0
    return 0 if need <= have * 0.85 else (1 if need <= have else 2)


def mem_available() -> int | None:
    """MemAvailable now (what a new model can take without swapping), or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_fit_check(
    paths: Paths,
    profile: Callable[[], HostProfile],
    available: Callable[[], int | None] = mem_available,
) -> Callable[[InstanceSpec, str, str | None], str | None]:
    """For RouterOps: refuse (ResourceError, with the numbers) a load that would not fit in the RAM
    left now; a swap's unloaded model gives its estimate back first."""

    def check(spec: InstanceSpec, model: str, freed: str | None) -> str | None:
        host = profile()
        left = available()
        if left is None:
            return None
        report = model_fit(paths, spec, model, host)
        if report is None:
            return None
        back = model_fit(paths, spec, freed, host) if freed else None
        room = left + (back.host_bytes if back else 0)
        need = report.host_bytes
        if need > room:
            gives = f" plus {_fmt(back.host_bytes)} from unloading {freed}" if back else ""
            raise ResourceError(
                f"loading {model} on {spec.name} needs about {_fmt(need)} of RAM, but {_fmt(left)} is "
                f"available now{gives}; nothing was sent to the router",
                f"unload a model first (`nativellm model unload NAME --on {spec.name}`), lower its ctx-size, "
                "or pass --force",
            )
        if need > room * 0.85:
            return f"{model} needs {_fmt(need)} of the {_fmt(room)} RAM available (over 85% is tight)"
        return None

    return check


__all__ = ["load_fit_check", "mem_available", "model_fit", "router_fit"]
