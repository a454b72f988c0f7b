"""Safe extraction of archives nativellm did not make: source tarballs and fleet artifacts.

One extractor for `build --tarball`, `install-artifact`, `upgrade --artifact` and
`build --from-index`. It unpacks member by member and checks each member against the disk *as it is
at that moment*: a symlink made by an earlier member is followed when the next member's parent is
resolved, so a chain of links that each look inside on paper can't carry a later write out of the
destination (checking every member first, against an empty directory, did not see that).

- absolute names, `..`, links (sym and hard) whose target resolves outside, device, FIFO and other
  special members, and a second member for a path that already exists are refused;
- setuid and setgid files are refused; other special bits and group/other write bits are dropped; nothing
  is chowned, so files belong to whoever extracts (root on a fleet host), never to the archive's uid;
- total bytes, bytes per member, member count, header bytes and the compression ratio are capped
  while streaming (gz, bz2, xz through the standard library, zstd through `zstandard`);
- the work happens in a temp dir beside the destination that is renamed into place only when every
  member passed; a refusal removes it, so a failed extraction leaves nothing behind.

Python's `tarfile.data_filter` (3.12, and backported to 3.10.12 / 3.11.4) is consulted first where it
exists; the checks below hold on its own on any 3.10.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from nativellm.errors import NativeLLMError

_MiB = 1 << 20
_GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may unpack to. The defaults fit a CUDA fat-binary artifact or a
    llama.cpp source tree with room to spare, and stop a bomb long before a disk fills."""

    max_total: int = 16 * _GiB  # bytes of member data, all members together
    max_member: int = 8 * _GiB  # bytes of one member
    max_members: int = 200_000
    max_ratio: float = 200.0  # decompressed bytes per compressed byte read ...
    ratio_floor: int = 64 * _MiB  # ... once this many bytes came out (small files compress freely)
    max_header: int = 4 * _MiB  # bytes of tar headers (pax, long names) before one member


DEFAULT_LIMITS = Limits()


class _Refused(Exception):
    """One member (or the stream) broke a rule; turned into the caller's typed error."""

    def __init__(self, member: str, reason: str, kind: str = "path") -> None:
        super().__init__(reason)
        self.member = member
        self.reason = reason
        self.kind = kind  # path: an unsafe member; limit: a cap was hit; plain: the reason says it all


class _Counting(io.RawIOBase):
    """Counts the compressed bytes read from the archive file."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n


class _Capped(io.RawIOBase):
    """The decompressed tar stream: every byte counts towards the total cap and the ratio; bytes
    read outside member data (headers, pax records) count towards the header cap."""

    def __init__(self, inner: IO[bytes], compressed: _Counting, limits: Limits) -> None:
        self.inner = inner
        self.compressed = compressed
        self.limits = limits
        self.out = 0
        self.header = 0
        self.in_data = False
        self.member = ""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), _MiB)
        data = self.inner.read(want)
        n = len(data)
        b[:n] = data
        self.out += n
        if not self.in_data:
            self.header += n
            if self.header > self.limits.max_header:
                raise _Refused(
                    self.member or "(header)", f"has over {self.limits.max_header} bytes of headers", "limit"
                )
        if self.out > self.limits.max_total + self.limits.max_header:
            raise _Refused(
                self.member or "(stream)", f"unpacks to over {self.limits.max_total} bytes", "limit"
            )
        if self.out > self.limits.ratio_floor and self.out > self.limits.max_ratio * max(
            1, self.compressed.count
        ):
            raise _Refused(
                self.member or "(stream)",
                f"decompresses over {self.limits.max_ratio:.0f} times its compressed size (a decompression bomb)",
                "limit",
            )
        return n


def _decompressor(archive: Path, counted: _Counting) -> IO[bytes]:
    with archive.open("rb") as f:
        magic = f.read(6)
    src = cast(IO[bytes], counted)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=src, mode="rb"))
    if magic[:3] == b"BZh":
        return cast(IO[bytes], bz2.BZ2File(src, "rb"))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.LZMAFile(src, "rb"))
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard
        except ImportError:
            raise _Refused(
                "(archive)", "is zstd-compressed and the zstandard package is missing", "plain"
            ) from None
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True))
    return cast(IO[bytes], io.BufferedReader(counted))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_name(name: str) -> str:
    if not name or "\x00" in name:
        raise _Refused(name, "has an empty or invalid name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _Refused(name, "is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(name, "climbs out with '..'")
    if not parts:
        raise _Refused(name, "has an empty name")
    return "/".join(parts)


class _Writer:
    """Creates members one by one under `root` (a fresh private dir), resolving against the disk."""

    def __init__(self, root: Path, limits: Limits, stream: _Capped) -> None:
        self.root = os.path.realpath(root)
        self.limits = limits
        self.stream = stream
        self.count = 0
        self.data = 0

    def _parent(self, rel: str) -> str:
        """The real directory `rel` goes into, made if missing; refused if links lead it outside."""
        parent_rel = os.path.dirname(rel)
        cur = self.root
        for part in parent_rel.split("/") if parent_rel else []:
            nxt = os.path.realpath(os.path.join(cur, part))
            if not _inside(nxt, self.root):
                raise _Refused(rel, "goes through a link that leaves the destination")
            if not os.path.lexists(nxt):
                os.mkdir(nxt, 0o755)
            elif not os.path.isdir(nxt):
                raise _Refused(rel, "goes through something that is not a directory")
            cur = nxt
        return cur

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise _Refused(member.name, f"is over the cap of {self.limits.max_members} members", "limit")
        if member.isdir() and member.name.strip("/") in ("", "."):
            return  # "./", the destination itself (tar -C DIR .)
        rel = _check_name(member.name)
        if hasattr(tarfile, "data_filter"):  # the interpreter's own rules first, where it has them
            try:
                tarfile.data_filter(member, self.root)
            except tarfile.FilterError as exc:
                raise _Refused(
                    member.name, str(exc).replace(repr(member.name), "").strip() or "is unsafe"
                ) from None
        if member.mode & 0o6000 and member.isreg():
            # Nothing nativellm unpacks needs them, and as root they would hand out root. (On a
            # directory setgid only means group inheritance: dropped below, like the sticky bit.)
            raise _Refused(member.name, f"has the setuid or setgid bit (mode {member.mode:o})")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            kind = (
                "a device node"
                if member.ischr() or member.isblk()
                else "a FIFO"
                if member.isfifo()
                else "special"
            )
            raise _Refused(member.name, f"is {kind}")
        parent = self._parent(rel)
        target = os.path.join(parent, os.path.basename(rel))
        if os.path.lexists(target):
            if member.isdir() and os.path.isdir(target) and not os.path.islink(target):
                return
            raise _Refused(member.name, "appears twice or replaces an earlier member")
        if member.isdir():
            os.mkdir(target, 0o755)
        elif member.issym():
            self._symlink(member, parent, target)
        elif member.islnk():
            self._hardlink(member, target)
        else:
            self._file(tar, member, target)

    def _symlink(self, member: tarfile.TarInfo, parent: str, target: str) -> None:
        link = member.linkname
        if not link or link.startswith("/"):
            raise _Refused(member.name, f"is a symlink to an absolute path ({link})")
        if not _inside(os.path.realpath(os.path.join(parent, link)), self.root):
            raise _Refused(member.name, f"is a symlink that leaves the destination ({link})")
        os.symlink(link, target)

    def _hardlink(self, member: tarfile.TarInfo, target: str) -> None:
        try:
            src_rel = _check_name(member.linkname)
        except _Refused as exc:
            raise _Refused(
                member.name, f"is a hard link to {member.linkname!r}, which {exc.reason}"
            ) from None
        src = os.path.realpath(os.path.join(self.root, src_rel))
        if not _inside(src, self.root):
            raise _Refused(member.name, f"is a hard link that leaves the destination ({member.linkname})")
        if not os.path.isfile(src):
            raise _Refused(member.name, f"is a hard link to a missing member ({member.linkname})")
        os.link(src, target, follow_symlinks=False)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        if member.size > self.limits.max_member:
            raise _Refused(
                member.name, f"is over the per-member cap of {self.limits.max_member} bytes", "limit"
            )
        if self.data + member.size > self.limits.max_total:
            raise _Refused(
                member.name, f"brings the archive over its cap of {self.limits.max_total} bytes", "limit"
            )
        # No setuid/setgid/sticky, no group/other write: the data filter's rule. Owner keeps rw.
        mode = (member.mode & 0o755) | 0o600
        src = tar.extractfile(member)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        written = 0
        self.stream.in_data, self.stream.member = True, member.name
        try:
            with os.fdopen(fd, "wb") as out:
                while src is not None:
                    chunk = src.read(_MiB)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > member.size or written > self.limits.max_member:
                        raise _Refused(member.name, "holds more data than its header says")
                    out.write(chunk)
        finally:
            self.stream.in_data = False
        self.data += written
        os.chmod(target, mode)  # the umask may have taken bits; setuid bits are never set
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def sweep(self) -> None:
        """Every symlink still resolves inside once all are made (a later link can't re-aim one)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p) and not _inside(os.path.realpath(p), self.root):
                    rel = os.path.relpath(p, self.root)
                    raise _Refused(rel, f"is a symlink that leaves the destination ({os.readlink(p)})")


def extract_archive(
    archive: Path,
    into: Path,
    error: Callable[[str, str], NativeLLMError],
    *,
    what: str = "archive",
    hint: str = "use an archive from a source you trust",
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Unpack `archive` into `into` (which must not exist yet, or be an empty dir); return the single
    top directory, or `into` when there are several entries. Refusals raise `error(message, hint)`;
    `into` is then left as it was and nothing was written outside a temp dir beside it."""
    into.parent.mkdir(parents=True, exist_ok=True)
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise error(f"cannot extract {archive.name} into {into}: it is not empty", "remove it first")
    staging = Path(tempfile.mkdtemp(dir=into.parent, prefix=f".{into.name}.extract-"))
    try:
        with archive.open("rb") as raw:
            counted = _Counting(raw)
            stream = _Capped(_decompressor(archive, counted), counted, limits)
            writer = _Writer(staging, limits, stream)
            with tarfile.open(fileobj=io.BufferedReader(stream, _MiB), mode="r|") as tar:
                for member in tar:
                    stream.member, stream.header = member.name, 0
                    writer.add(tar, member)
            writer.sweep()
        if into.exists():
            into.rmdir()
        os.rename(staging, into)
    except _Refused as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.kind == "plain":
            raise error(f"{archive.name} {exc.reason}", "pip install zstandard") from None
        if exc.kind == "limit":
            raise error(
                f"{archive.name} was refused at member {exc.member!r}: it {exc.reason}",
                "the archive is damaged or hostile; nothing was kept",
            ) from None
        raise error(f"{archive.name} contains an unsafe path {exc.member!r}: it {exc.reason}", hint) from None
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, ValueError, zlib.error) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise error(f"{archive} is not a readable {what}: {exc}", "download it again") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else into


def read_json_member(top: Path, name: str) -> dict[str, Any] | None:
    """A JSON object file inside an extracted tree, or None when it is missing, not a regular file
    (a link) or not a JSON object."""
    p = top / name
    if p.is_symlink() or not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["DEFAULT_LIMITS", "Limits", "extract_archive", "read_json_member"]
