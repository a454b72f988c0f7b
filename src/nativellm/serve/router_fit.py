"""Memory fit for router instances: at add/edit time for the models that may be loaded together
(models.fit_router), and before each `model load`/`swap` for the RAM left now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nativellm.errors import ModelError
from nativellm.hardware.profile import HostProfile
from nativellm.models.fit import FitReport
from nativellm.models.fit_router import fit_router_models
from nativellm.models.registry import ModelRegistry, fit_model
from nativellm.paths import Paths
from nativellm.serve.router import fit_settings
from nativellm.specs import InstanceSpec


def _fmt(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def model_fit(paths: Paths, spec: InstanceSpec, model: str, profile: HostProfile) -> FitReport | None:
    """One router model's estimate with its own settings, from its file as it is now (None: not a
    registered model)."""
    if ModelRegistry(paths).find(model) is None:
        return None
    s = fit_settings(spec, model)
    return fit_model(
        paths, model, profile, ctx=s.ctx, parallel=s.parallel, gpu_layers=s.gpu_layers,
        cache_type_k=s.cache_type_k, cache_type_v=s.cache_type_v, n_cpu_moe=s.n_cpu_moe, cpu_moe=s.cpu_moe,
        swa_full=s.swa_full,
    )  # fmt: skip


def router_fit(paths: Paths, spec: InstanceSpec, profile: HostProfile, *, force: bool) -> str | None:
    """The most the router can hold at once (its --models-max largest models, each with its own
    settings) against this host's RAM and GPU memory. Refused (ModelError, exit 9, as a single model
    that does not fit) unless `force`; a warning when tight."""
    models = [
        (m, fit_settings(spec, m)) for m in spec.models or () if ModelRegistry(paths).find(m) is not None
    ]
    if not models:
        return None
    report = fit_router_models(paths, models, profile, models_max=spec.models_max or 0)
    if report.verdict == "does_not_fit" and not force:
        raise ModelError(
            f"router {spec.name}: {report.message}",
            "lower --models-max or a model's ctx-size (--model-opt M:ctx-size=N), pick smaller models, "
            "or pass --force",
        )
    return None if report.verdict == "fits" else f"router {spec.name}: {report.message}"


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
    """For RouterOps: refuse (ModelError, with the numbers) a load that would not fit in the RAM left
    now; a swap's unloaded model gives its estimate back first."""

    # One command may check twice (a swap: next to the old model, then in its place): the host is
    # detected and each model's file read once.
    hosts: list[HostProfile] = []
    reports: dict[str, FitReport | None] = {}

    def fit(spec: InstanceSpec, model: str) -> FitReport | None:
        if not hosts:
            hosts.append(profile())
        if model not in reports:
            reports[model] = model_fit(paths, spec, model, hosts[0])
        return reports[model]

    def check(spec: InstanceSpec, model: str, freed: str | None) -> str | None:
        left = available()
        if left is None:
            return None
        report = fit(spec, model)
        if report is None:
            return None
        back = fit(spec, freed) if freed else None
        room = left + (back.host_bytes if back else 0)
        need = report.host_bytes
        if need > room:
            gives = f" plus {_fmt(back.host_bytes)} from unloading {freed}" if back else ""
            raise ModelError(
                f"loading {model} on {spec.name} needs about {_fmt(need)} of RAM, but {_fmt(left)} is "
                f"available now{gives}; nothing was sent to the router",
                f"unload a model first (`nativellm model unload NAME --on {spec.name}`), lower its ctx-size, "
                "or pass --force",
            )
        if need > room * 0.85:
            return f"{model} needs {_fmt(need)} of the {_fmt(room)} RAM available (over 85% is tight)"
        return None

    return check
