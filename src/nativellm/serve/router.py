"""Router instances: one llama-server in router mode serving several models from the store.

llama-server (trees from late 2025 on) runs as a *router* when started without a model: it
spawns one child llama-server per loaded model (on a free loopback port, same binary, inside
the unit's cgroup), forwards each request by its `model` field, and loads, unloads and evicts
models through `/models`, `/models/load` and `/models/unload`. nativellm renders the router's
model list and per-model settings as a preset INI (`--models-preset`) from the instance spec,
next to the unit's drop-in, and drives load/unload/swap through that API.

Rendering is pure; the HTTP side (RouterClient) and the use cases (RouterOps) are below it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm.client import WAIT_S, ModelState, RouterClient
from nativellm.errors import InstanceError, ModelError, NotFoundError, ResourceError, UsageError
from nativellm.models.fit_router import FitSettings
from nativellm.serve.server_flags import ServerFlags
from nativellm.specs import InstanceSpec, http_url

PRESET_NAME = "nativellm-models.ini"  # in the unit's drop-in dir: systemd reads only *.conf there
ROUTER_FLAGS = ("--models-preset", "--models-max")
# Keys the router sets itself or that would take a model out of nativellm's hands.
RESERVED_KEYS = frozenset(
    {
        "host", "port", "api-key", "api-key-file", "alias", "a", "model", "m", "models-dir", "models-preset",
        "models-max", "models-autoload", "no-models-autoload", "hf-repo", "hf", "hf-file", "model-url",
        "ssl-key-file", "ssl-cert-file", "load-on-startup", "log-file",
    }
)  # fmt: skip
PRESET_ONLY_KEYS = frozenset({"stop-timeout"})  # understood by the router, not in --help


# -- rendering (pure) ------------------------------------------------------------------------
def instance_settings(spec: InstanceSpec, flags: ServerFlags) -> dict[str, str]:
    """The instance-wide settings, as preset keys: they go to the [*] section, so that a model's
    own settings override them (command-line arguments would override the preset instead)."""
    out: dict[str, str] = {}
    pairs = (
        ("ctx-size", spec.ctx), ("threads", spec.threads), ("n-gpu-layers", spec.gpu_layers),
        ("parallel", spec.parallel), ("batch-size", spec.batch), ("cache-type-k", spec.cache_type_k),
        ("cache-type-v", spec.cache_type_v),
    )  # fmt: skip
    for key, value in pairs:
        if value is not None:
            out[key] = str(value)
    if spec.flash_attn is not None:
        fa = flags.flash_attn_args(spec.flash_attn)
        if fa:
            out["flash-attn"] = fa[1] if len(fa) > 1 else "true"
    if spec.mlock:
        args = flags.mlock_args
        out.update({"load-mode": args[1]} if len(args) > 1 else {"mlock": "true"})
    if spec.rpc:
        out["rpc"] = ",".join(spec.rpc)
    if spec.metrics and flags.knows("--metrics"):
        out["metrics"] = "true"
    return out


def model_settings(spec: InstanceSpec, model: str, flags: ServerFlags) -> dict[str, str]:
    """What the child for `model` runs with: the instance's settings, then the model's own."""
    return {**instance_settings(spec, flags), **dict(spec.model_settings.get(model, {}))}


def check_router(spec: InstanceSpec, binary: Path, flags: ServerFlags) -> None:
    """Refuse, before anything is written, a build without router mode or a setting its
    llama-server would reject (the router refuses the whole preset file then, and never starts)."""
    if not all(flags.knows(f) for f in ROUTER_FLAGS):
        raise InstanceError(
            f"the llama-server of {binary} has no router mode (--models-preset, --models-max): it is older "
            "than llama.cpp's router (late 2025)",
            "build a newer llama.cpp (`nativellm build --auto --ref <newer tag>`, or `nativellm upgrade`), "
            "or pin such a build with --build",
        )
    for model, settings in spec.model_settings.items():
        for key in settings:
            if key in RESERVED_KEYS:
                raise InstanceError(
                    f"setting {key!r} for model {model} is managed by the router or by nativellm",
                    "drop it: host, port, API key, model path and load-on-startup come from the instance",
                )
            if key not in PRESET_ONLY_KEYS and not flags.knows(f"--{key}"):
                raise InstanceError(
                    f"setting {key!r} for model {model}: the llama-server of {binary} has no option --{key}",
                    "check the name in `llama-server --help` (long names without dashes, e.g. ctx-size), "
                    "or use a build that has it",
                )


def render_preset(
    spec: InstanceSpec, model_paths: Mapping[str, Path], flags: ServerFlags, *, header: str = ""
) -> str:
    """The preset INI for a router instance: [*] the instance-wide settings, then one section per
    model (its section name is the model id clients send) with its file and its own settings."""
    lines = [f"; {line}" for line in header.splitlines()]
    lines += ["version = 1", ""]
    common = instance_settings(spec, flags)
    if common:
        lines.append("[*]")
        lines += [f"{k} = {_ini_value(v)}" for k, v in common.items()]
        lines.append("")
    starting = set(spec.load_on_start or ())
    for model in spec.models or ():
        lines.append(f"[{model}]")
        lines.append(f"model = {_ini_value(str(model_paths[model]))}")
        lines.append(f"load-on-startup = {'true' if model in starting else 'false'}")
        lines += [f"{k} = {_ini_value(v)}" for k, v in spec.model_settings.get(model, {}).items()]
        lines.append("")
    return "\n".join(lines)


def _ini_value(value: str) -> str:
    # llama.cpp's INI grammar ends a value at a newline or at whitespace followed by ; or #.
    if any(c in value for c in "\r\n") or " ;" in value or " #" in value or "\t;" in value or "\t#" in value:
        raise UsageError(f"value {value!r} cannot be written to a preset file", "avoid ' ;' and ' #' in it")
    return value


def router_argv(
    spec: InstanceSpec,
    binary: Path,
    preset: Path,
    *,
    api_key_path: str | None,
) -> list[str]:
    """The router's own argv. Only what the router itself uses is here: anything else on its command
    line would be inherited by every child and override the models' own settings."""
    argv = [str(binary), "--models-preset", str(preset), "--host", spec.host, "--port", str(spec.port)]
    argv += ["--models-max", str(spec.models_max if spec.models_max is not None else len(spec.models or ()))]
    if api_key_path is not None:
        argv += ["--api-key-file", api_key_path]
    return argv + list(spec.extra_args)


# -- use cases -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LifecycleResult:
    instance: str
    action: str
    models: tuple[ModelState, ...]
    seconds: float
    warmup_seconds: float | None = None
    message: str = ""
    overlap: bool | None = None  # swap: new loaded before old was unloaded (no gap in service)
    how: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "action": self.action,
            "seconds": round(self.seconds, 3),
            "warmup_seconds": None if self.warmup_seconds is None else round(self.warmup_seconds, 3),
            "models": [m.to_dict() for m in self.models],
            "message": self.message,
        } | ({"overlap": self.overlap} if self.overlap is not None else {})


RUNNING = ("loaded", "loading", "sleeping")


class RouterOps:
    """load / unload / swap on a running router instance.

    `fit_check(spec, model, freed)` raises ModelError when `model` would not fit in the memory
    left now (plus `freed`, what a swap's unload gives back); the caller injects it, so these
    use cases don't detect hardware themselves."""

    def __init__(
        self,
        spec: InstanceSpec,
        *,
        fit_check: Callable[[InstanceSpec, str, str | None], str | None],
        client: RouterClient | None = None,
    ) -> None:
        if not spec.is_router:
            raise UsageError(
                f"instance {spec.name} serves one model, not a router",
                "model load/unload/swap work on router instances (`instance add NAME --router --models a,b`)",
            )
        self.spec = spec
        self._fit_check = fit_check
        self.client = client or RouterClient(http_url(spec.host, spec.port), read_api_key(spec))

    def _known(self, model: str) -> None:
        if model not in (self.spec.models or ()):
            raise NotFoundError(
                f"model {model!r} is not one of router {self.spec.name}'s models ({', '.join(self.spec.models or ())})",
                f"add it with `nativellm instance edit {self.spec.name} --models ...`",
            )

    def state(self) -> dict[str, ModelState]:
        return self.client.models()

    def load(
        self, model: str, *, force: bool = False, warmup: bool | None = None, timeout: float = WAIT_S
    ) -> LifecycleResult:
        self._known(model)
        now = self.state()
        current = now.get(model)
        if current is not None and current.state in RUNNING:
            raise InstanceError(
                f"model {model} is already {current.state} on {self.spec.name}",
                f"nothing to do; to reload it, `nativellm model unload {model} --on {self.spec.name}` first",
            )
        note = None if force else self._fit_check(self.spec, model, None)
        t0 = time.monotonic()
        self.client.load(model)
        self.client.wait_for(model, ("loaded",), timeout)
        seconds = time.monotonic() - t0
        warm = self.client.warmup(model) if (self.spec.warmup if warmup is None else warmup) else None
        return LifecycleResult(
            self.spec.name, "load", tuple(self.state().values()), seconds, warm, note or ""
        )

    def unload(self, model: str, *, timeout: float = WAIT_S) -> LifecycleResult:
        self._known(model)
        current = self.state().get(model)
        if current is None or current.state not in RUNNING:
            raise InstanceError(
                f"model {model} is not loaded on {self.spec.name}",
                f"see `nativellm status {self.spec.name}` for what is loaded",
            )
        t0 = time.monotonic()
        self.client.unload(model)
        self.client.wait_for(model, ("unloaded", "failed"), timeout)
        return LifecycleResult(self.spec.name, "unload", tuple(self.state().values()), time.monotonic() - t0)

    def swap(
        self, old: str, new: str, *, force: bool = False, warmup: bool | None = None, timeout: float = WAIT_S
    ) -> LifecycleResult:
        """Replace `old` by `new`, checked in full before anything is sent.

        When `new` fits next to `old` (memory left now, and a free --models-max slot) it is loaded
        first and `old` unloaded once `new` serves: requests never find neither loaded. Otherwise
        `old` is unloaded first, to make room."""
        self._known(old)
        self._known(new)
        if old == new:
            raise UsageError("swap needs two different models", f"to reload {old}, unload and load it")
        now = self.state()
        if now.get(old) is None or now[old].state not in RUNNING:
            raise InstanceError(f"model {old} is not loaded on {self.spec.name}", "see `nativellm status`")
        if now.get(new) is not None and now[new].state in RUNNING:
            raise InstanceError(
                f"model {new} is already {now[new].state} on {self.spec.name}", "nothing to swap"
            )
        running = sum(1 for m in now.values() if m.state in RUNNING)
        overlap = not self.spec.models_max or running < self.spec.models_max
        note = None
        if overlap and not force:
            try:
                note = self._fit_check(self.spec, new, None)
            except ModelError:
                overlap = False
        if not overlap and not force:
            note = self._fit_check(self.spec, new, old)
        t0 = time.monotonic()
        if not overlap:
            self.client.unload(old)
            self.client.wait_for(old, ("unloaded", "failed"), timeout)
        self.client.load(new)
        self.client.wait_for(new, ("loaded",), timeout)
        if overlap:
            self.client.unload(old)
            self.client.wait_for(old, ("unloaded", "failed"), timeout)
        seconds = time.monotonic() - t0
        warm = self.client.warmup(new) if (self.spec.warmup if warmup is None else warmup) else None
        how = (
            f"{new} was loaded before {old} was unloaded"
            if overlap
            else f"{old} was unloaded first, to make room"
        )
        result = LifecycleResult(
            self.spec.name, "swap", tuple(self.state().values()), seconds, warm, note or ""
        )
        return dataclasses.replace(result, overlap=overlap, how=how)


def router_models(spec: InstanceSpec) -> tuple[ModelState, ...] | None:
    """For `status`: the router's models in the spec's order (None when it does not answer)."""
    client = RouterClient(http_url(spec.host, spec.port), read_api_key(spec), timeout=2.0)
    try:
        states = client.models()
    except (InstanceError, ResourceError):
        return None
    finally:
        client.close()
    return tuple(states.get(m, ModelState(m, "missing")) for m in spec.models or ())


def read_api_key(spec: InstanceSpec) -> str | None:
    if not spec.api_key_file:
        return None
    try:
        return Path(spec.api_key_file).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ResourceError(
            f"cannot read the API key file {spec.api_key_file} ({exc.strerror})",
            "run as a user that can read it (e.g. with sudo for a system instance)",
        ) from exc


# -- memory fit ------------------------------------------------------------------------------
def fit_settings(spec: InstanceSpec, model: str) -> FitSettings:
    """The settings one router model's memory depends on: its own, else the instance's."""
    own = spec.model_settings.get(model, {})

    def pick(key: str, default: int | str | None) -> str | None:
        value = own.get(key)
        return value if value is not None else (None if default is None else str(default))

    return FitSettings(
        ctx=int(pick("ctx-size", spec.ctx) or 0),
        parallel=int(pick("parallel", spec.parallel) or 1),
        gpu_layers=int(pick("n-gpu-layers", spec.gpu_layers) or 0),
        cache_type_k=pick("cache-type-k", spec.cache_type_k) or "f16",
        cache_type_v=pick("cache-type-v", spec.cache_type_v) or "f16",
        n_cpu_moe=int(own.get("n-cpu-moe") or 0),
        cpu_moe=own.get("cpu-moe", "false").lower() in ("1", "true", "on", "yes"),
        swa_full=own.get("swa-full", "false").lower() in ("1", "true", "on", "yes"),
    )
