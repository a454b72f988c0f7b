"""Downloads: resumable, verified HTTP(S) with httpx (Hugging Face lives in nativellm.models.hf).

A download goes to `<dest>.<key>.part`, where the key is a hash of the URL, and
the server's validator (a strong ETag, else Last-Modified) is kept beside it in
`<part>.json`. An interrupted transfer leaves both in place and the next attempt
(in the same run or a later `pull`) asks for the rest with `Range` plus
`If-Range: <validator>`, so the server sends the rest only if the file is still
the same one; otherwise it answers 200 and the download starts over. Bytes of
two URLs, or of two versions of one file, are never spliced. A part without a
validator is never resumed. Only a complete, hashed part is renamed to its
final name.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from nativellm.errors import DownloadError, NotFoundError, ResourceError
from nativellm.fsutil import sha256_file, write_json_atomic

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


def part_path(url: str, dest: Path) -> Path:
    """Where the partial download of `url` for `dest` lives: keyed by the URL, never by `dest` alone."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return dest.with_name(f"{dest.name}.{key}.part")


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _validator(resp: httpx.Response) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (RFC 9110 13.1.5)."""
    etag = str(resp.headers.get("etag", ""))
    if etag and not etag.startswith("W/"):
        return etag
    modified = str(resp.headers.get("last-modified", ""))
    return modified or None


def _read_meta(part: Path, url: str) -> str | None:
    """The validator recorded for `part`, if the part belongs to `url`; None means: do not resume."""
    try:
        doc = json.loads(_meta_path(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("url") != url or not isinstance(doc.get("validator"), str):
        return None
    return str(doc["validator"]) or None


def _check_writable_file(path: Path, what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise DownloadError(
            f"{path.parent} exists and is not a directory; nothing was downloaded",
            f"move {path.parent} out of the way and run the same command again",
        ) from None
    if not stat.S_ISREG(mode):
        raise DownloadError(
            f"{what} {path} exists and is not a regular file; nothing was downloaded",
            f"move {path} out of the way and run the same command again",
        )


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _discard_stale(dest: Path, keep: Path) -> None:
    """Other URLs' partial files for `dest` (and the old unkeyed `<dest>.part`): they can never resume."""
    for p in [dest.with_name(dest.name + ".part"), *dest.parent.glob(f"{glob.escape(dest.name)}.*.part")]:
        if p != keep and p.is_file() and not p.is_symlink():
            _discard(p)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error behind an httpx error, if the TLS handshake failed: retrying will not heal it."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _kept(part: Path) -> str:
    try:
        size = part.stat().st_size if part.is_file() else 0
    except OSError:
        size = 0
    return f"; the partial file {part} ({size} bytes) is kept" if size else "; no partial file was kept"


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
    """Fetch `url` to `dest` with Range/If-Range resume from its part file, then check the sha256.

    A sha256 mismatch deletes the part (its bytes are wrong, resuming can't fix
    them) and raises DownloadError; an interrupted transfer keeps it. TLS,
    redirect-loop and other errors that a retry cannot heal fail at once.
    """
    _check_writable_file(dest, "the download target")
    if dest.is_file():
        if not part_path(url, dest).exists():
            forget_part(url, dest)  # a record left by a caller that renamed the part without forgetting it
        digest = sha256_file(dest)
        if expected_sha256 and digest != expected_sha256:
            raise DownloadError(
                f"{dest} exists with sha256 {digest}, not {expected_sha256}",
                "remove the model with `nativellm model rm` and pull it again",
            )
        return Fetched(dest, digest, dest.stat().st_size, False)
    part = part_path(url, dest)
    _check_writable_file(part, "the partial download")
    _check_writable_file(_meta_path(part), "the partial download's record")
    own_client = client is None
    http = client or httpx.Client(
        follow_redirects=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
    )
    label = dest.name
    total = 0
    last_error = ""
    try:
        for attempt in range(1, attempts + 1):
            validator = _read_meta(part, url) if part.is_file() else None
            offset = part.stat().st_size if validator else 0
            headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset and validator else {}
            try:
                with http.stream("GET", url, headers=headers) as resp:
                    answer = _validator(resp)
                    if resp.status_code == 416 and offset:
                        total = _total_from(resp)
                        if total == offset and answer in (None, validator):
                            break  # the part is already complete
                        log.info("416 for a %d-byte part of %d; restarting", offset, total)
                        _discard(part)
                        continue
                    if resp.status_code == 206 and offset:
                        m = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
                        if not m or int(m[1]) != offset:
                            raise DownloadError(
                                f"{url} answered a Range request with the wrong range", "retry"
                            )
                        if answer is not None and answer != validator:
                            log.warning("%s changed since the partial download; restarting", url)
                            _discard(part)
                            continue
                        mode = "ab"
                    elif resp.status_code == 200:
                        if offset:
                            log.warning("%s sent the whole file, not the rest; restarting from byte 0", url)
                        offset, mode = 0, "wb"
                    else:
                        _raise_for(resp, url)
                    total = _total_from(resp)
                    if total:
                        check_free_space(dest.parent, total - offset, url)
                    _write(resp, part, mode, offset, total, answer, url, dest, progress, label)
                if not total or part.stat().st_size >= total:
                    break
                last_error = f"the connection ended at byte {part.stat().st_size} of {total}"
            except httpx.TransportError as exc:
                # A failed handshake (an untrusted or expired certificate, a wrong name) will fail the
                # same way again; a TLS read cut mid-transfer is a cut like any other and is retried.
                tls = _tls_failure(exc) if isinstance(exc, httpx.ConnectError) else None
                if tls is not None:
                    reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
                    raise DownloadError(
                        f"TLS with {httpx.URL(url).host} failed: {reason}{_kept(part)}",
                        "check the URL; for a private CA point SSL_CERT_FILE at its certificate",
                    ) from None
                last_error = f"{type(exc).__name__}: {exc}"
            except httpx.TooManyRedirects:
                raise DownloadError(
                    f"{url} redirects in a loop (too many redirects){_kept(part)}",
                    "check the URL; open it in a browser to see where it leads",
                ) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DownloadError(f"cannot download {url}: {exc}{_kept(part)}", "check the URL") from None
            log.info("download attempt %d of %s failed: %s", attempt, url, last_error)
            if attempt < attempts:
                time.sleep(min(0.2 * 2**attempt, 5.0))
        else:
            if part.is_file() and _read_meta(part, url) is None:
                _discard(part)  # no validator: it could never resume, so it is not kept to mislead
            have = part.stat().st_size if part.is_file() else 0
            raise DownloadError(
                f"download of {url} stopped at {have} of {total or '?'} bytes after {attempts} attempts "
                f"({last_error}){_kept(part)}",
                "run the same pull again to resume" if have else "check the network and try again",
            )
    finally:
        if own_client:
            http.close()
    size = part.stat().st_size
    if total and size != total:
        _discard(part)
        raise DownloadError(
            f"{url} sent {size} bytes but announced {total}; the partial file was removed", "retry"
        )
    digest = sha256_file(part)
    if expected_sha256 and digest != expected_sha256:
        _discard(part)
        raise DownloadError(
            f"sha256 mismatch for {url}: expected {expected_sha256}, got {digest}; the file was deleted",
            "check --sha256 and the URL",
        )
    # The record stays while the part does: a caller that uses the part where it is (artifacts) gets a
    # 416 "already complete" next time instead of a new download. Callers that rename it call forget_part.
    return Fetched(part, digest, size, True)


def forget_part(url: str, dest: Path) -> None:
    """Drop the resume record of `url`'s part once the caller renamed the part to `dest`."""
    _meta_path(part_path(url, dest)).unlink(missing_ok=True)


def _write(
    resp: httpx.Response,
    part: Path,
    mode: str,
    offset: int,
    total: int,
    validator: str | None,
    url: str,
    dest: Path,
    progress: ProgressFn | None,
    label: str,
) -> None:
    """Append (206) or write afresh (200) the body to `part`; a fresh start records the new validator."""
    try:
        if mode == "wb":
            _discard(part)  # the old bytes first, then the record: never a record over foreign bytes
            _discard_stale(dest, part)
            if validator:
                write_json_atomic(_meta_path(part), {"url": url, "validator": validator})
        with part.open(mode) as f:
            done = offset
            for chunk in resp.iter_bytes():  # as it arrives: a cut loses nothing
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(label, done, total)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ResourceError(
            f"cannot write {part}: {exc.strerror or exc}{_kept(part)}",
            "check free disk space and permissions",
        ) from None


def missing(url: str) -> bool:
    """True when `url` answers HEAD with 404: it is not there (other answers, including a server
    that does not do HEAD, say nothing)."""
    try:
        return httpx.head(url, follow_redirects=True, timeout=30).status_code == 404
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot reach {url}: {exc}", "check the URL and the network") from exc


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
