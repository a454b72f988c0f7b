"""Downloads: resumable, verified HTTP(S) with httpx (Hugging Face lives in nativellm.models.hf).

A download goes to `<dest>.part`. An interrupted transfer leaves the part in
place and the next attempt (in the same run or a later `pull`) asks for the
rest with a Range request. A server that ignores Range gets a clean restart.
Only a complete, hashed part is renamed to its final name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from nativellm.errors import DownloadError, NotFoundError, ResourceError
from nativellm.fsutil import sha256_file

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (label, done, total; 0 = unknown)
CHUNK = 1 << 20
ATTEMPTS = 5


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
        digest = sha256_file(dest)
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
    digest = sha256_file(part)
    if expected_sha256 and digest != expected_sha256:
        part.unlink()
        raise DownloadError(
            f"sha256 mismatch for {url}: expected {expected_sha256}, got {digest}; the file was deleted",
            "check --sha256 and the URL",
        )
    return Fetched(part, digest, size, True)


def get_text(url: str) -> str | None:
    """A small text document over HTTP(S) (an index, a checksum sidecar); None on 404."""
    try:
        resp = httpx.get(url, follow_redirects=True, timeout=30)
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot fetch {url}: {exc}", "check the URL and the network") from exc
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise DownloadError(f"{url} answered HTTP {resp.status_code}", "check the URL")
    return resp.text
