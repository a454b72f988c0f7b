"""Downloads: resumable, verified HTTP(S) with httpx, and Hugging Face through huggingface_hub.

A download goes to `<dest>.part`. An interrupted transfer leaves the part in
place and the next attempt (in the same run or a later `pull`) asks for the
rest with a Range request. A server that ignores Range gets a clean restart.
Only a complete, hashed part is renamed to its final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from nativellm.errors import DownloadError, NotFoundError, ResourceError, UsageError
from nativellm.gguf_check import SPLIT_RE

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (label, done, total; 0 = unknown)
CHUNK = 1 << 20
ATTEMPTS = 5
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    changed: bool  # False when the file was already complete


def check_free_space(directory: Path, need: int, what: str) -> None:
    """Refuse early, before a byte is written, when `need` more bytes won't fit."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need > free:
        raise ResourceError(
            f"not enough disk space for {what}: it needs {need / 1e9:.2f} GB more, "
            f"{directory} has {free / 1e9:.2f} GB free",
            "free some space or point NATIVELLM_HOME / HF_HOME at a larger disk",
        )


def _total_from(resp: httpx.Response) -> int:
    cr = resp.headers.get("content-range", "")
    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", cr)
    if m and m[3] != "*":
        return int(m[3])
    m = re.match(r"bytes \*/(\d+)", cr)
    if m:
        return int(m[1])
    return int(resp.headers.get("content-length", 0) or 0)


def _raise_for(resp: httpx.Response, url: str) -> None:
    if resp.status_code == 404:
        raise NotFoundError(f"{url} was not found (HTTP 404)", "check the URL")
    if resp.status_code in (401, 403):
        raise DownloadError(
            f"{url} refused access (HTTP {resp.status_code})", "check the URL and any credentials it needs"
        )
    raise DownloadError(f"{url} answered HTTP {resp.status_code}", "try again later or check the URL")


def download_url(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    progress: ProgressFn | None = None,
    attempts: int = ATTEMPTS,
    timeout: float = 30.0,
    client: httpx.Client | None = None,
) -> Fetched:
    """Fetch `url` to `dest` with Range resume from `<dest>.part`, then check the sha256.

    A sha256 mismatch deletes the part (its bytes are wrong, resuming can't fix
    them) and raises DownloadError; an interrupted transfer keeps it.
    """
    if dest.is_file():
        digest = _sha256(dest)
        if expected_sha256 and digest != expected_sha256:
            raise DownloadError(
                f"{dest} exists with sha256 {digest}, not {expected_sha256}",
                "remove the model with `nativellm model rm` and pull it again",
            )
        return Fetched(dest, digest, dest.stat().st_size, False)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    http = client or httpx.Client(
        follow_redirects=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
    )
    label = dest.name
    total = 0
    last_error = ""
    try:
        for attempt in range(1, attempts + 1):
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with http.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 416 and offset:
                        total = _total_from(resp)
                        if total == offset:
                            break  # the part is already complete
                        log.info("416 for a %d-byte part of %d; restarting", offset, total)
                        part.unlink()
                        continue
                    if resp.status_code == 206:
                        m = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
                        if not m or int(m[1]) != offset:
                            raise DownloadError(
                                f"{url} answered a Range request with the wrong range", "retry"
                            )
                        mode = "ab"
                    elif resp.status_code == 200:
                        if offset:
                            log.warning("%s ignored the Range request; restarting from byte 0", url)
                        offset, mode = 0, "wb"
                    else:
                        _raise_for(resp, url)
                    total = _total_from(resp)
                    if total:
                        check_free_space(dest.parent, total - offset, url)
                    with part.open(mode) as f:
                        done = offset
                        for chunk in resp.iter_bytes():  # as it arrives: a cut loses nothing
                            f.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(label, done, total)
                        f.flush()
                        os.fsync(f.fileno())
                if not total or part.stat().st_size >= total:
                    break
                last_error = f"the connection ended at byte {part.stat().st_size} of {total}"
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            log.info("download attempt %d of %s failed: %s", attempt, url, last_error)
            if attempt < attempts:
                time.sleep(min(0.2 * 2**attempt, 5.0))
        else:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"download of {url} stopped at {have} of {total or '?'} bytes after {attempts} attempts "
                f"({last_error}); the partial file {part} is kept",
                "run the same pull again to resume",
            )
    finally:
        if own_client:
            http.close()
    size = part.stat().st_size
    if total and size != total:
        part.unlink()
        raise DownloadError(
            f"{url} sent {size} bytes but announced {total}; the partial file was removed", "retry"
        )
    digest = _sha256(part)
    if expected_sha256 and digest != expected_sha256:
        part.unlink()
        raise DownloadError(
            f"sha256 mismatch for {url}: expected {expected_sha256}, got {digest}; the file was deleted",
            "check --sha256 and the URL",
        )
    return Fetched(part, digest, size, True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


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


# --------------------------------------------------------------------------- Hugging Face
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
    from huggingface_hub import errors

    return (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, httpx.HTTPError)


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
            f"cannot list {spec.repo} on the Hub: {exc}", "check the network or HF_ENDPOINT"
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
                f"download of {name} from {spec.repo} failed: {exc}",
                "run the same pull again; huggingface_hub resumes the partial file",
            ) from None
        out.append(Path(local))
    return out
