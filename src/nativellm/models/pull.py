"""`nativellm model pull`: download from Hugging Face or a URL, validate, register.

Downloads run under the model's lock, so concurrent pulls of one name
serialise: the second finds the first one's record and changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from nativellm.download import download_url, forget_part
from nativellm.errors import ModelError, UsageError
from nativellm.fsutil import sha256_file
from nativellm.models.gguf import validate_model
from nativellm.models.hf import HfSpec, hf_fetch, hf_list_files, select_hf_files, split_urls
from nativellm.models.mlx_store import is_repo_spec, pull_mlx_repo
from nativellm.models.registry import (
    ModelRecord,
    ModelRegistry,
    ProgressFn,
    make_record,
    name_from_file,
    validate_name,
)
from nativellm.paths import Paths
from nativellm.specs import validate_sha256


@dataclass(frozen=True)
class PullOptions:
    spec: str
    name: str | None = None
    sha256: str | None = None
    attempts: int = 5


def pull_model(
    paths: Paths,
    opts: PullOptions,
    progress: ProgressFn | None = None,
    on_wait: Callable[[], None] | None = None,
) -> tuple[ModelRecord, bool]:
    """Download a model from `hf:...` or an http(s) URL, validate it and register it."""
    expected = validate_sha256(opts.sha256) if opts.sha256 else None
    if is_repo_spec(opts.spec):  # hf:OWNER/REPO: a whole MLX model repository (issue 17)
        if expected:
            raise UsageError(
                "--sha256 checks a single GGUF file, and this is an MLX repository", "drop --sha256"
            )
        return pull_mlx_repo(paths, opts.spec, opts.name)
    if opts.spec.startswith("hf:"):
        hf = HfSpec.parse(opts.spec)
        default = name_from_file(Path(hf.filename)) if hf.filename else f"{hf.repo.split('/')[1]}-{hf.quant}"
    elif opts.spec.startswith(("http://", "https://")):
        hf = None
        default = name_from_file(Path(opts.spec.split("?")[0].rpartition("/")[2] or "model.gguf"))
    else:
        raise UsageError(
            f"cannot pull {opts.spec!r}",
            "give hf:OWNER/REPO/FILE.gguf, hf:OWNER/REPO:QUANT or an https:// URL; local files: `model add`",
        )
    name = validate_name(opts.name or default)
    reg = ModelRegistry(paths)
    with reg.model_lock(name, on_wait):
        existing = reg.find(name)
        if existing is not None:
            if existing.metadata.get("spec") == opts.spec and (expected in (None, existing.sha256)):
                return existing, False
            origin = existing.metadata.get("spec") or existing.path
            raise ModelError(
                f"a model named {name!r} is already registered from {origin}",
                f"choose another --name, or remove it first with `nativellm model rm {name}`",
            )
        if hf is not None:
            return _pull_hf(reg, name, hf, opts, expected)
        return _pull_url(reg, name, opts, expected, progress)


def _pull_url(
    reg: ModelRegistry, name: str, opts: PullOptions, expected: str | None, progress: ProgressFn | None
) -> tuple[ModelRecord, bool]:
    urls = split_urls(opts.spec)
    if expected and len(urls) > 1:
        raise UsageError("--sha256 checks a single file, and this model is split", "drop --sha256")
    dest_dir = reg.files_dir(name)
    finals: list[Path] = []
    hashes: list[str] = []
    for url in urls:
        dest = dest_dir / _file_name(url)
        fetched = download_url(url, dest, expected_sha256=expected, progress=progress, attempts=opts.attempts)
        finals.append(dest)
        hashes.append(fetched.sha256)
        if fetched.path != dest:
            try:
                # Validate the lone file now; split parts are validated together below.
                if len(urls) == 1:
                    validate_model([fetched.path])
            except ModelError:
                fetched.path.unlink(missing_ok=True)  # complete but broken: resuming cannot fix it
                raise
            os.replace(fetched.path, dest)
            forget_part(url, dest)
    try:
        rec = make_record(name, finals, "url", sha256=hashes[0], metadata={"spec": opts.spec, "owned": True})
    except ModelError:
        shutil.rmtree(dest_dir, ignore_errors=True)
        raise
    return rec, reg.put(rec)


def _file_name(url: str) -> str:
    """The URL's file name if it is a plain, safe one; never a path outside the model's directory."""
    name = unquote(url.split("?")[0].rpartition("/")[2])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}", name):
        return "model.gguf"
    return name if name.endswith(".gguf") else f"{name}.gguf"


def _pull_hf(
    reg: ModelRegistry, name: str, hf: HfSpec, opts: PullOptions, expected: str | None
) -> tuple[ModelRecord, bool]:
    listing = hf_list_files(hf)
    files = select_hf_files(listing, hf)
    if expected and len(files) > 1:
        raise UsageError("--sha256 checks a single file, and this model is split", "drop --sha256")
    local = hf_fetch(hf, files, listing)
    sha = sha256_file(local[0])
    if expected and sha != expected:
        raise ModelError(
            f"sha256 mismatch for {hf.repo}/{files[0]}: expected {expected}, got {sha}; nothing registered",
            "check --sha256 and the revision",
        )
    meta = {"spec": opts.spec, "hf_repo": hf.repo, "hf_files": files, "hf_revision": hf.revision}
    rec = make_record(name, local, "hf", sha256=sha, metadata=meta)
    return rec, reg.put(rec)
