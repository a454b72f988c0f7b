"""Model downloads by name: split-GGUF URL sets, and Hugging Face repositories through huggingface_hub
(its cache, HF_TOKEN and HF_ENDPOINT are honoured)."""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from nativellm.download import check_free_space
from nativellm.errors import DownloadError, NotFoundError, UsageError
from nativellm.models.gguf import SPLIT_RE


def split_urls(url: str) -> list[str]:
    """The URLs of every part when `url` names the first part of a split GGUF, else [url]."""
    base, _, name = url.rpartition("/")
    name, sep, query = name.partition("?")
    m = SPLIT_RE.match(name)
    if not m:
        return [url]
    if int(m["no"]) != 1:
        raise UsageError(f"{name} is not the first part of a split model", "pull the -00001-of-N part")
    count = int(m["count"])
    return [f"{base}/{m['stem']}-{i:05d}-of-{count:05d}.gguf{sep}{query}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class HfSpec:
    """`hf:OWNER/REPO/FILE.gguf[@REVISION]` or `hf:OWNER/REPO:QUANT[@REVISION]`."""

    repo: str
    filename: str | None
    quant: str | None
    revision: str | None

    @classmethod
    def parse(cls, spec: str) -> HfSpec:
        body = spec.removeprefix("hf:")
        body, _, revision = body.partition("@")
        quant: str | None = None
        if ":" in body:
            body, _, quant = body.partition(":")
        parts = body.split("/")
        bad = UsageError(
            f"cannot read the Hugging Face spec {spec!r}",
            "write hf:OWNER/REPO/FILE.gguf[@REVISION] or hf:OWNER/REPO:QUANT (Q4_K_M, Q8_0 ...)",
        )
        if len(parts) < 2 or not all(parts) or any(p in (".", "..") for p in parts):
            raise bad
        filename = "/".join(parts[2:]) or None
        if (filename is None) == (quant is None) or (filename and not filename.endswith(".gguf")):
            raise bad
        return cls(f"{parts[0]}/{parts[1]}", filename, quant or None, revision or None)


def _hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _quant_pattern(quant: str) -> re.Pattern[str]:
    return re.compile(rf"(^|[-_./]){re.escape(quant)}([-_.]|$)", re.IGNORECASE)


def select_hf_files(files: dict[str, int], spec: HfSpec) -> list[str]:
    """The repo files (all parts, in order) that `spec` names, from a {path: size} listing."""
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if spec.filename:
        if spec.filename not in files:
            raise NotFoundError(
                f"{spec.repo} has no file {spec.filename}",
                "GGUF files there: " + (", ".join(ggufs[:12]) or "none"),
            )
        m = SPLIT_RE.match(spec.filename.rpartition("/")[2])
        if not m:
            return [spec.filename]
        first = spec.filename.rpartition("/")[0]
        prefix = f"{first}/" if first else ""
        count = int(m["count"])
        return [f"{prefix}{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    assert spec.quant is not None
    pat = _quant_pattern(spec.quant)
    hits = [f for f in ggufs if pat.search(f) and "mmproj" not in f.lower()]
    groups: dict[str, list[str]] = {}
    for f in hits:
        m = SPLIT_RE.match(f.rpartition("/")[2])
        key = f"{f.rpartition('/')[0]}/{m['stem']}" if m else f
        groups.setdefault(key, []).append(f)
    if not groups:
        quants = sorted(
            {
                q
                for f in ggufs
                for q in re.findall(r"(?i)(?:IQ|Q|BF|F)\d+(?:_[A-Z0-9]+)*", f.rpartition("/")[2])
            }
        )
        raise NotFoundError(
            f"{spec.repo} has no GGUF file for quant {spec.quant}",
            "quants there: " + (", ".join(quants) or "none") + "; or name the file: hf:OWNER/REPO/FILE.gguf",
        )
    if len(groups) > 1:
        raise UsageError(
            f"{spec.repo} has several files for {spec.quant}: {', '.join(sorted(groups))}",
            "name one: hf:OWNER/REPO/FILE.gguf",
        )
    return sorted(next(iter(groups.values())))


def _hf_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the Hub cannot be reached or answers an error. Its transport
    depends on its version (requests, httpx, httpx2), and their errors share no base class."""
    from huggingface_hub import errors

    found: list[type[Exception]] = [errors.HfHubHTTPError, errors.LocalEntryNotFoundError, httpx.HTTPError]
    for module, attr in (("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _hub() -> str:
    return _hf_endpoint() or "https://huggingface.co"


def hf_list_files(spec: HfSpec) -> dict[str, int]:
    """{path: size} of the repo at the revision, through the Hub API (HF_ENDPOINT honoured)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=_hf_endpoint())
    try:
        entries = api.list_repo_tree(spec.repo, recursive=True, revision=spec.revision)
        return {e.path: int(getattr(e, "size", 0) or 0) for e in entries if type(e).__name__ == "RepoFile"}
    except RepositoryNotFoundError:
        raise NotFoundError(
            f"Hugging Face repo {spec.repo} was not found (or is private)",
            "check the name; for a private or gated repo set HF_TOKEN or run `hf auth login`",
        ) from None
    except RevisionNotFoundError:
        raise NotFoundError(f"{spec.repo} has no revision {spec.revision}", "check the @REVISION") from None
    except _hf_errors() as exc:
        raise DownloadError(
            f"cannot list {spec.repo} on the Hugging Face Hub ({_hub()}): {exc}",
            "check the network or HF_ENDPOINT",
        ) from None


def hf_fetch(spec: HfSpec, files: list[str], sizes: dict[str, int]) -> list[Path]:
    """Download `files` into huggingface_hub's cache (it resumes) and return their local paths."""
    from huggingface_hub import constants, hf_hub_download

    cache = Path(constants.HF_HUB_CACHE)
    check_free_space(cache, sum(sizes.get(f, 0) for f in files), f"{spec.repo}")
    out: list[Path] = []
    errors: tuple[type[Exception], ...] = (*_hf_errors(), OSError)
    for name in files:
        try:
            local = hf_hub_download(spec.repo, name, revision=spec.revision, endpoint=_hf_endpoint())
        except errors as exc:
            raise DownloadError(
                f"download of {name} from {spec.repo} ({_hub()}) failed: {exc}",
                "run the same pull again; huggingface_hub resumes the partial file",
            ) from None
        out.append(Path(local))
    return out
