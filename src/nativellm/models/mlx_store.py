"""MLX model directories in the registry: `model add DIR` and `model pull hf:ORG/REPO` of an MLX repo.

Validation is models/mlx.py's; this module builds and registers records (it imports the registry,
which itself only calls models/mlx.py, so there is no cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nativellm.errors import ModelError, UsageError
from nativellm.models.mlx import FORMAT, dir_sha256, dir_size, file_hashes, real_dir, validate_mlx_dir
from nativellm.models.registry import ModelRecord, ModelRegistry, check_model_path, validate_name
from nativellm.paths import Paths


def mlx_record(name: str, model: Path, source: str, metadata: Mapping[str, Any] | None = None) -> ModelRecord:
    """Validate an MLX directory and build its registry record (nothing is registered here)."""
    check_model_path(model)
    facts = validate_mlx_dir(model)
    hashes = file_hashes(model)
    return ModelRecord(
        name=name,
        path=model,
        sha256=dir_sha256(hashes),
        size=dir_size(model),
        source=source,
        facts=facts,
        added=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        metadata={**(metadata or {}), "format": FORMAT, "file_sha256": hashes},
    )


def add_mlx_model(
    paths: Paths, model: Path, *, name: str | None = None, copy: bool = False, sha256: str | None = None
) -> tuple[ModelRecord, bool]:
    """`model add DIR`: register an MLX model directory where it is (validated first)."""
    if copy:
        raise UsageError(
            "--copy is not supported for an MLX model directory",
            "drop --copy: the directory is registered in place",
        )
    if sha256:
        raise UsageError("--sha256 checks a single GGUF file, and this is an MLX directory", "drop --sha256")
    src = real_dir(model)
    name = validate_name(name or src.name.lower())
    reg = ModelRegistry(paths)
    existing = reg.find(name)
    if existing is not None and existing.path == src:
        validate_mlx_dir(src)
        return existing, False
    if existing is not None:
        raise ModelError(
            f"a model named {name!r} is already registered ({existing.path})",
            f"choose another --name, or remove it first with `nativellm model rm {name}`",
        )
    rec = mlx_record(name, src, "file", {"origin": str(src)})
    return rec, reg.put(rec)
