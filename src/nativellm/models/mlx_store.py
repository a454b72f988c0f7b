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


# Files an MLX repository's model needs; the rest (README, images, .gitattributes) stays on the Hub.
_WANTED = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
           "tokenizer.model", "special_tokens_map.json", "generation_config.json", "chat_template.jinja")  # fmt: skip


def is_repo_spec(spec: str) -> bool:
    """`hf:OWNER/REPO[@REVISION]`: a whole repository (an MLX model), not one GGUF file or quant."""
    body = spec.removeprefix("hf:").partition("@")[0]
    parts = body.split("/")
    return spec.startswith("hf:") and ":" not in body and len(parts) == 2 and all(parts)


def pull_mlx_repo(paths: Paths, spec: str, name: str | None) -> tuple[ModelRecord, bool]:
    """`model pull hf:OWNER/REPO`: download an MLX repository's model files through huggingface_hub
    (into its cache: one snapshot directory per commit, which is the model directory), validate it
    and register it."""
    from nativellm.models.hf import HfSpec, hf_fetch, hf_list_files

    body, _, revision = spec.removeprefix("hf:").partition("@")
    if any(p in (".", "..") for p in body.split("/")):
        raise UsageError(f"cannot read the Hugging Face spec {spec!r}", "write hf:OWNER/REPO[@REVISION]")
    hf = HfSpec(body, None, None, revision or None)
    name = validate_name(name or body.split("/")[1].lower())
    reg = ModelRegistry(paths)
    with reg.model_lock(name):
        existing = reg.find(name)
        if existing is not None:
            if existing.metadata.get("spec") == spec:
                return existing, False
            raise ModelError(
                f"a model named {name!r} is already registered from {existing.metadata.get('spec') or existing.path}",
                f"choose another --name, or remove it first with `nativellm model rm {name}`",
            )
        listing = hf_list_files(hf)
        top = {f: s for f, s in listing.items() if "/" not in f}
        files = sorted(f for f in top if f in _WANTED or f.endswith(".safetensors"))
        if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
            ggufs = sorted(f for f in listing if f.endswith(".gguf"))
            raise ModelError(
                f"{hf.repo} is not an MLX model repository (it has no config.json and *.safetensors)",
                f"pull one of its GGUF files: hf:{hf.repo}/{ggufs[0]}"
                if ggufs
                else "check the repository name",
            )
        local = hf_fetch(hf, files, top)
        model = local[0].parent  # huggingface_hub's snapshot directory of that commit
        meta = {"spec": spec, "hf_repo": hf.repo, "hf_files": files, "hf_revision": hf.revision}
        rec = mlx_record(name, model, "hf", meta)
        return rec, reg.put(rec)
