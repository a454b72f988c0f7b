"""Hostile archives (issue 14, finding 1): every member is checked against the disk as it is
extracted, nothing special survives, sizes and ratios are capped, and a refusal leaves nothing behind.

The archives are crafted here, member by member; each test asserts that no file appeared outside the
destination (a `pwn` anywhere under tmp_path) and that the temp dir beside it is gone.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, cast

import pytest
import zstandard

from nativellm.build import artifacts
from nativellm.build.extract import Limits, extract_archive
from nativellm.build.source import resolve_tarball
from nativellm.errors import ArtifactError, NativeLLMError, SourceError


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0, mode: int = 0o644
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size, ti.mode = kind, link, size, mode
    return ti


def _file(name: str, data: bytes = b"x", **kw: int) -> tuple[tarfile.TarInfo, bytes]:
    ti = _info(name, size=len(data), mode=kw.pop("mode", 0o644))
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def _sym(name: str, link: str) -> tuple[tarfile.TarInfo, None]:
    return _info(name, tarfile.SYMTYPE, link, mode=0o777), None


def _tar(path: Path, members: Iterable[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _nothing_left(tmp_path: Path, into: Path) -> None:
    assert not list(tmp_path.rglob("pwn*")), "a member was written outside the destination"
    assert not into.exists()
    assert not [p for p in into.parent.iterdir() if ".extract-" in p.name], "the temp dir was left behind"


def _refused(archive: Path, into: Path, match: str, limits: Limits | None = None) -> None:
    with pytest.raises(ArtifactError, match=match) as info:
        extract_archive(archive, into, ArtifactError, limits=limits or Limits())
    assert "\n" not in info.value.message and info.value.hint


_CHAIN = [
    _sym("top/a", "."),
    _sym("top/a/c", "."),
    _sym("top/a/c/b", "../../.."),
    _file("top/a/c/b/pwn", b"owned"),
]


@pytest.fixture(autouse=True, params=["data-filter", "own-checks"])
def interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case runs twice: with tarfile.data_filter (3.12, 3.11.4+, 3.10.12+) and without it, as
    on an older 3.10, where nativellm's own checks must hold alone."""
    if request.param == "own-checks":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this interpreter has no tarfile.data_filter")
    return str(request.param)


@pytest.fixture
def into(tmp_path: Path) -> Path:
    (tmp_path / "box").mkdir()
    return tmp_path / "box" / "into"


def test_a_plain_archive_unpacks_with_links_modes_and_times(tmp_path: Path, into: Path) -> None:
    ti, data = _file("./top/bin/llama-server", b"#!bin", mode=0o755)
    ti.mtime = 1_700_000_000
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [
            (_info("./", tarfile.DIRTYPE, mode=0o755), None),
            (_info("top/lib", tarfile.DIRTYPE, mode=0o755), None),
            (ti, data),
            _file("top/lib/libggml.so.1", b"elf"),
            _sym("top/lib/libggml.so", "libggml.so.1"),
            (_info("top/lib/hard.so", tarfile.LNKTYPE, "top/lib/libggml.so.1"), None),
        ],
    )
    top = extract_archive(archive, into, ArtifactError)
    assert top == into / "top"
    server = top / "bin" / "llama-server"
    assert server.read_bytes() == b"#!bin" and stat.S_IMODE(server.stat().st_mode) == 0o755
    assert server.stat().st_mtime == 1_700_000_000
    assert (top / "lib" / "libggml.so").resolve() == top / "lib" / "libggml.so.1"
    assert (top / "lib" / "hard.so").stat().st_nlink == 2
    assert not [p for p in into.parent.iterdir() if ".extract-" in p.name]


def test_a_symlink_chain_cannot_carry_a_write_outside(tmp_path: Path, into: Path) -> None:
    # Each member is inside "on paper" (resolved against an empty dir): a/c/b/../../.. is the
    # destination itself. On disk a -> . and a/c -> . make a/c/b top/b, whose ../../.. is tmp_path:
    # the old extractor wrote tmp_path/pwn.
    archive = _tar(tmp_path / "chain.tar.gz", _CHAIN)
    _refused(archive, into, r"unsafe path 'top/a/c/b'.*(leaves|outside) the destination")
    _nothing_left(tmp_path, into)


def test_a_link_re_aimed_by_a_later_link_is_refused(tmp_path: Path, into: Path) -> None:
    # x -> y/w/../../.. is inside while y does not exist; y -> . then puts x above the destination.
    archive = _tar(tmp_path / "reaim.tar.gz", [_sym("top/x", "y/w/../../.."), _sym("top/y", ".")])
    _refused(archive, into, r"unsafe path 'top/x'.*(leaves|outside) the destination")
    _nothing_left(tmp_path, into)


def test_a_member_cannot_replace_an_earlier_link(tmp_path: Path, into: Path) -> None:
    archive = _tar(tmp_path / "dup.tar.gz", [_sym("top/l", "."), _sym("top/l", "../../..")])
    _refused(archive, into, r"unsafe path 'top/l'")
    _nothing_left(tmp_path, into)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([_sym("top/l", "../../../pwn-target")], "(leaves|outside) the destination"),
        ([_sym("top/l", "/etc")], "absolute"),
        ([_file("top/../../pwn-dotdot")], r"'\.\.'|outside"),
        ([_file("../pwn-dotdot")], r"'\.\.'|outside"),
    ],
    ids=["relative-symlink-out", "absolute-symlink", "dotdot-nested", "dotdot-top"],
)
def test_paths_and_links_that_leave_are_refused(
    tmp_path: Path, into: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], match: str
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", [_file("top/ok"), *members])
    _refused(archive, into, match)
    _nothing_left(tmp_path, into)


def test_an_absolute_member_is_refused(tmp_path: Path, into: Path) -> None:
    target = tmp_path / "pwn-absolute"
    archive = _tar(tmp_path / "abs.tar.gz", [_file(str(target), b"owned")])
    _refused(archive, into, "absolute")
    assert not target.exists()
    _nothing_left(tmp_path, into)


@pytest.mark.parametrize("link", ["ABS", "../../secret", "top/s/../../../secret"])
def test_hard_links_out_of_the_destination_are_refused(tmp_path: Path, into: Path, link: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    link = str(secret) if link == "ABS" else link
    members = [
        (_info("top/s", tarfile.DIRTYPE, mode=0o755), None),
        (_info("top/h", tarfile.LNKTYPE, link), None),
    ]
    archive = _tar(tmp_path / "hard.tar", members, gz=False)
    _refused(archive, into, r"unsafe path 'top/h'")
    assert secret.stat().st_nlink == 1 and secret.read_text() == "root only"
    _nothing_left(tmp_path, into)


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (tarfile.CHRTYPE, "device|special"),
        (tarfile.BLKTYPE, "device|special"),
        (tarfile.FIFOTYPE, "FIFO|special"),
    ],
    ids=["char", "block", "fifo"],
)
def test_device_nodes_and_fifos_are_refused(tmp_path: Path, into: Path, kind: bytes, word: str) -> None:
    ti = _info("top/pwn-dev", kind, mode=0o666)
    ti.devmajor, ti.devminor = 1, 3  # /dev/null's numbers: as root, tarfile would mknod it
    archive = _tar(tmp_path / "dev.tar.gz", [_file("top/ok"), (ti, None)])
    _refused(archive, into, word)
    _nothing_left(tmp_path, into)


@pytest.mark.parametrize(("name", "mode"), [("top/bin/su", 0o4755), ("top/bin/sg", 0o2777)])
def test_setuid_and_setgid_files_are_refused(tmp_path: Path, into: Path, name: str, mode: int) -> None:
    """As root, a kept setuid bit would hand out root: such a member is refused, and nothing is left."""
    archive = _tar(tmp_path / "suid.tar.gz", [_file("top/ok"), _file(name, b"#!x", mode=mode)])
    _refused(archive, into, "setuid or setgid")
    _nothing_left(tmp_path, into)


def test_sticky_and_write_bits_and_archive_owners_are_not_kept(tmp_path: Path, into: Path) -> None:
    exe, _ = _file("top/bin/tool", b"#!x", mode=0o777, uid=4242, gid=4242)
    exe.uname = exe.gname = "nobody"
    sticky = _info("top/tmp", tarfile.DIRTYPE, mode=0o1777)
    setgid_dir = _info("top/shared", tarfile.DIRTYPE, mode=0o2775)  # group inheritance: dropped, not refused
    archive = _tar(tmp_path / "modes.tar.gz", [(exe, b"#!x"), (sticky, None), (setgid_dir, None)])
    top = extract_archive(archive, into, ArtifactError)
    for name in ("bin/tool", "tmp", "shared"):
        st = (top / name).lstat()
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), name
        assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), name
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f"{name} kept the archive's owner"
    assert stat.S_IMODE((top / "bin" / "tool").stat().st_mode) == 0o755


def test_size_caps_per_member_total_and_count(tmp_path: Path, into: Path) -> None:
    big = _tar(tmp_path / "big.tar.gz", [_file("top/a", b"a" * 2000)])
    _refused(big, into, "per-member cap", Limits(max_member=1000))
    _nothing_left(tmp_path, into)
    many = _tar(tmp_path / "many.tar.gz", [_file(f"top/f{i}", b"b" * 600) for i in range(3)])
    _refused(many, into, "cap of 1000 bytes", Limits(max_total=1000))
    _nothing_left(tmp_path, into)
    _refused(many, into, "cap of 2 members", Limits(max_members=2))
    _nothing_left(tmp_path, into)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


_BOMB = 24 << 20  # 24 MiB of zeros: ~25 KB of gzip, a ratio near 1000
_BOMB_LIMITS = Limits(max_ratio=100, ratio_floor=4 << 20)


def _bomb_tar(raw: IO[bytes]) -> None:
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        tar.addfile(_info("top/zeros", size=_BOMB), _Zeros(_BOMB))


def test_a_gzip_bomb_is_stopped_by_the_ratio_cap(tmp_path: Path, into: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_info("top/zeros", size=_BOMB), _Zeros(_BOMB))
    assert archive.stat().st_size < _BOMB / 500
    _refused(archive, into, "decompression bomb", _BOMB_LIMITS)
    _nothing_left(tmp_path, into)
    # The same archive under the default caps is an honest (if silly) archive: it unpacks.
    top = extract_archive(archive, into, ArtifactError, limits=Limits(ratio_floor=64 << 20))
    assert (top / "zeros").stat().st_size == _BOMB


def test_a_zstd_bomb_is_stopped_by_the_ratio_cap(tmp_path: Path, into: Path) -> None:
    archive = tmp_path / "bomb.tar.zst"
    with archive.open("wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as zw:
        _bomb_tar(cast(IO[bytes], zw))
    assert archive.stat().st_size < _BOMB / 500
    _refused(archive, into, "decompression bomb", _BOMB_LIMITS)
    _nothing_left(tmp_path, into)


def test_unreadable_archives_are_typed_errors(tmp_path: Path, into: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip at all")
    with pytest.raises(ArtifactError, match="not a readable artifact"):
        extract_archive(bad, into, ArtifactError, what="artifact")
    _nothing_left(tmp_path, into)


def test_an_artifact_without_its_manifest_is_a_clean_artifact_error(tmp_path: Path, into: Path) -> None:
    meta = json.dumps({"schema": artifacts.ARTIFACT_SCHEMA}).encode()
    archive = _tar(tmp_path / "nomanifest.tar.gz", [_file("cpu-0123456789ab/artifact.json", meta)])
    with pytest.raises(ArtifactError, match="no build manifest"):
        artifacts._extract(archive, into)
    _nothing_left(tmp_path, into)
    # A manifest that is a link (to a file the installer would then read) is no manifest either.
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    linked = _tar(
        tmp_path / "linked.tar.gz",
        [
            _file("cpu-0123456789ab/artifact.json", meta),
            _sym("cpu-0123456789ab/manifest.json", "artifact.json"),
        ],
    )
    with pytest.raises(ArtifactError, match="no build manifest"):
        artifacts._extract(linked, into)
    _nothing_left(tmp_path, into)


@pytest.mark.parametrize("kind", ["source", "artifact"])
def test_both_callers_refuse_the_chain_with_their_own_error(tmp_path: Path, kind: str) -> None:
    """The same extractor serves `build --tarball` (exit 5) and artifacts (exit 14)."""
    archive = _tar(tmp_path / "chain.tar.gz", _CHAIN)
    cls: type[NativeLLMError] = SourceError if kind == "source" else ArtifactError
    with pytest.raises(cls, match="unsafe path") as info:
        if kind == "source":
            resolve_tarball(str(archive), None, tmp_path / "cache")
        else:
            artifacts._extract(archive, tmp_path / "unpacked")
    assert info.value.exit_code == (5 if kind == "source" else 14)
    assert not list(tmp_path.rglob("pwn*"))
    assert not list(tmp_path.rglob("*.extract-*"))
