"""The MLX engine of an instance: which engine runs a model, the mlx_lm.server argv, and the
per-instance alias directory.

mlx_lm.server loads `--model` at start and serves it as "default_model"; a request naming any
other model makes it load that one (from the Hugging Face hub). Clients commonly send the
instance's name (as they do to llama-server, which ignores it). So the unit runs in an alias
directory, `<home>/mlx/instances/NAME/`, that holds one symlink `NAME -> <model dir>`, and passes
`--model NAME`: a request for "NAME", or for no model, is then the loaded model, never a reload.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nativellm.errors import ModelError
from nativellm.fsutil import symlink_atomic
from nativellm.hardware.profile import HostProfile
from nativellm.paths import Paths
from nativellm.specs import InstanceSpec

MLX = "mlx"


class Engine(str, enum.Enum):
    """`instance add --engine`: llama-server, mlx_lm.server, or chosen from the model and host."""

    LLAMA = "llama"
    MLX = "mlx"
    AUTO = "auto"

    @property
    def spec_value(self) -> str | None:
        """What the spec stores: None for llama-server (older specs have no engine key)."""
        return MLX if self is Engine.MLX else None


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str


def is_apple_silicon(profile: HostProfile | None) -> bool:
    return profile is not None and profile.os == "darwin" and profile.arch in ("arm64", "aarch64")


def decide_engine(
    requested: Engine, model_format: str, profile: HostProfile | None, *, metal_build: bool
) -> EngineChoice:
    """Pure: the engine that runs a model of `model_format` ("gguf" or "mlx") on `profile`.

    `auto`: an MLX directory can only run on MLX. A GGUF runs on llama-server. On Apple silicon
    without a working Metal build, llama-server would run a GGUF on the CPU only: auto still picks
    it (MLX cannot load a GGUF), and the reason says so, naming the MLX way to use the GPU.
    An explicit engine that cannot load the model's format is refused (ModelError)."""
    if requested is Engine.MLX and model_format != MLX:
        raise ModelError(
            "--engine mlx needs an MLX model directory, and this model is a GGUF file",
            "use --engine llama (or auto) for a GGUF, or add an MLX model: `nativellm model add DIR`",
        )
    if requested is Engine.LLAMA and model_format == MLX:
        raise ModelError(
            "llama-server cannot load an MLX model directory",
            "use --engine mlx (or auto) for it, or pick a GGUF model",
        )
    if requested is not Engine.AUTO:
        return EngineChoice(requested, f"--engine {requested.value}")
    if model_format == MLX:
        return EngineChoice(Engine.MLX, "the model exists only in MLX format")
    if is_apple_silicon(profile) and not metal_build:
        return EngineChoice(
            Engine.LLAMA,
            "GGUF model on Apple silicon without a working Metal build: llama-server runs it on the CPU "
            "(an MLX copy of the model would use the GPU: --engine mlx)",
        )
    return EngineChoice(Engine.LLAMA, "a GGUF model runs on llama-server")


def alias_dir(paths: Paths, name: str) -> Path:
    return paths.home / "mlx" / "instances" / name


def mlx_argv(spec: InstanceSpec, python: Path, model_arg: str) -> list[str]:
    """The exact mlx_lm.server argv (`python -m mlx_lm server`, its non-deprecated entry point)."""
    argv = [str(python), "-m", "mlx_lm", "server", "--model", model_arg, "--host", spec.host,
            "--port", str(spec.port)]  # fmt: skip
    return argv + list(spec.extra_args)


def mlx_environment(paths: Paths, name: str) -> Mapping[str, str]:
    """Offline, and a hub cache that exists (mlx_lm.server's /v1/models scans it and fails on a
    missing one); other Hugging Face state goes to the unit's private /tmp."""
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(alias_dir(paths, name) / ".hub"),
        "HF_HOME": "/tmp/huggingface",
        "TOKENIZERS_PARALLELISM": "false",
    }


def write_alias(paths: Paths, name: str, model_dir: Path) -> bool:
    """Make `<alias dir>/NAME -> model_dir` (atomically) and the empty hub cache. True if changed."""
    d = alias_dir(paths, name)
    link = d / name
    (d / ".hub").mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    try:
        if os.readlink(link) == str(model_dir):
            return False
    except OSError:
        pass
    symlink_atomic(str(model_dir), link)
    return True


def remove_alias(paths: Paths, name: str) -> None:
    shutil.rmtree(alias_dir(paths, name), ignore_errors=True)
