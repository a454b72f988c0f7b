"""The MLX engine's part of the instance use cases (serve/instances.py calls these), kept here so
that instances.py keeps its llama-server paths as they were and stays small."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.build.store import Store
from nativellm.errors import ModelError, NativeLLMError, UsageError
from nativellm.mlx import engine
from nativellm.models.registry import ModelRecord, ModelRegistry
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import Resolved, require_root_owned
from nativellm.specs import InstanceSpec, spec_path

# `Instances` and `InstanceOptions` (serve/instances.py) are typed Any here: importing them, even
# for type checking only, would be an import cycle (tests/unit/test_architecture.py).
Instances = Any
InstanceOptions = Any

HEALTHCHECK = "libexec/nativellm-healthcheck.py"  # as serve/instances.py


def resolve(self: Instances, spec: InstanceSpec) -> Resolved:
    """--engine mlx: the current MLX runtime's Python runs mlx_lm.server, in the alias directory."""
    from nativellm.mlx.engine import alias_dir, mlx_environment
    from nativellm.mlx.runtime import require_runtime

    runtime_python = (self._mlx_runtime or require_runtime)(self.paths)
    python = os.path.realpath(self._python)
    helper = self.paths.home / HEALTHCHECK
    if self.paths.scope is Scope.SYSTEM:
        require_root_owned({"the Python interpreter": Path(python), "the health helper": helper})
    return Resolved(
        scope=self.paths.scope,
        server_binary=runtime_python,
        model_path=self._model_path(spec.model),
        backend="cpu",
        python=python,
        healthcheck=helper,
        systemctl=run.which("systemctl") or "/usr/bin/systemctl",
        spec_path=spec_path(self.paths.config, spec.name),
        workdir=alias_dir(self.paths, spec.name),
        engine_env=mlx_environment(self.paths, spec.name),
    )


def check_engine_model(self: Instances, spec: InstanceSpec, rec: ModelRecord | None) -> bool:
    """The engine can load the model's format (else ModelError); True when the model is an MLX
    directory, checked here (the GGUF header checks do not apply)."""
    from nativellm.mlx.engine import Engine, decide_engine
    from nativellm.models.mlx import validate_mlx_dir

    fmt = rec.format if rec is not None else "gguf"
    requested = Engine.MLX if spec.engine == "mlx" else Engine.LLAMA
    if rec is None and requested is Engine.LLAMA:
        return False
    try:
        decide_engine(requested, fmt, None, metal_build=False)  # explicit: no host needed
    except ModelError as exc:
        raise ModelError(f"model {spec.model!r}: {exc.message}", exc.hint + "; nothing was changed") from None
    if rec is None or fmt != "mlx":
        return False
    try:
        validate_mlx_dir(rec.path)
    except NativeLLMError as exc:
        raise ModelError(
            f"model {spec.model!r}: {exc.message}",
            f"check it with `nativellm model verify {spec.model}`, or remove it and add it again",
        ) from None
    return True


def merge_engine(
    self: Instances, name: str, existing: InstanceSpec | None, opts: InstanceOptions
) -> InstanceSpec:
    """_merge plus the engine: --engine llama|mlx as given; auto (and, for a new instance or a new
    model, no --engine) picks from the model's format and the host (mlx/engine.decide_engine)."""
    from nativellm.mlx.engine import Engine, decide_engine

    requested = opts.engine
    base = dataclasses.replace(opts, engine=None)
    spec: InstanceSpec = self._merge(name, existing, base)
    if requested is None and existing is not None and opts.model is None:
        return spec
    try:
        wanted = Engine(requested or "auto")
    except ValueError:
        raise UsageError(f"--engine {requested!r} is invalid", "use llama, mlx or auto") from None
    if spec.is_router:  # llama-server's router mode; an explicit mlx is refused by the spec's checks
        return dataclasses.replace(spec, engine="mlx" if wanted is Engine.MLX else None)
    rec = ModelRegistry(self.paths).find(spec.model)
    fmt = rec.format if rec is not None else "gguf"
    if wanted is Engine.AUTO and fmt != "mlx":
        return dataclasses.replace(spec, engine=None)  # the llama-server default, as before
    store_current = Store(self.paths).current()
    metal = store_current is not None and store_current.backend == "metal" and store_current.smoke_passed
    choice = decide_engine(wanted, fmt, self._profile(), metal_build=metal)
    if choice.engine is Engine.MLX and opts.threads is None:
        # The default thread count is llama-server's --threads; mlx_lm.server has no such flag.
        return dataclasses.replace(spec, engine=choice.engine.spec_value, threads=None)
    return dataclasses.replace(spec, engine=choice.engine.spec_value)


def write_alias(self: Instances, spec: InstanceSpec) -> list[str]:
    """The alias directory of an --engine mlx instance (mlx/engine.py); the path when it changed."""
    if spec.engine != "mlx":
        return []
    if engine.write_alias(self.paths, spec.name, self._model_path(spec.model)):
        return [str(engine.alias_dir(self.paths, spec.name) / spec.name)]
    return []


def forget(paths: Paths, spec: InstanceSpec) -> None:
    """`instance rm`: the alias directory goes with the instance."""
    if spec.engine == "mlx":
        engine.remove_alias(paths, spec.name)


def foreground_argv(spec: InstanceSpec, r: Resolved) -> list[str]:
    """`nativellm run NAME` of an --engine mlx instance: the model directory by its real path."""
    return engine.mlx_argv(spec, r.server_binary, str(r.model_path))
