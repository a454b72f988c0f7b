"""`--single-binary` without processes: reading DT_NEEDED from ELF files, and `pack --single-binary`.

The ELF files are written here byte by byte (header, .dynstr, .dynamic, section headers), so the
reader is checked against exactly the layout the ELF specification gives, on any host.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import tarfile
from pathlib import Path

import pytest

from nativellm.build.artifacts import PackOptions, pack
from nativellm.build.elf import GLIBC_SONAMES, beyond_glibc, find_needed
from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import _Builder
from nativellm.build.plan import PlanOptions, plan_build
from nativellm.build.single import pack_single_binary
from nativellm.build.store import Store
from nativellm.errors import ArtifactError, BuildError, NotFoundError, UsageError
from nativellm.fsutil import sha256_file
from nativellm.paths import Paths, Scope
from nativellm.progress import SilentReporter
from tests.unit.test_artifacts import load, manifest_for, with_flags

SINGLE_ID = "cpu-single-0123456789ab"


def elf(needed: list[str], *, machine: int = 62) -> bytes:
    """A 64-bit little-endian ELF file whose only sections are .dynstr and .dynamic."""
    dynstr = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    offsets = [1 + sum(len(n) + 1 for n in needed[:i]) for i in range(len(needed))]
    dynstr_off = 64
    dynamic_off = (dynstr_off + len(dynstr) + 7) & ~7
    # A DT_NEEDED after DT_NULL must not count: the loader stops at DT_NULL too.
    entries = [(1, o) for o in offsets] + [(0, 0), (1, offsets[0] if offsets else 0)]
    dynamic = b"".join(struct.pack("<qQ", tag, val) for tag, val in entries)
    shoff = dynamic_off + len(dynamic)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, shoff, 0, 64, 56, 0, 64, 3, 0)
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, dynstr_off, len(dynstr), 0, 0, 1, 0),  # SHT_STRTAB
        struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dynamic_off, len(dynamic), 1, 0, 8, 16),  # SHT_DYNAMIC
    ]
    body = header + dynstr
    body += bytes(dynamic_off - len(body)) + dynamic
    return body + b"".join(sections)


def test_find_needed_reads_dt_needed_in_order(tmp_path: Path) -> None:
    f = tmp_path / "a.out"
    f.write_bytes(elf(["libm.so.6", "libgomp.so.1", "libc.so.6"]))
    assert find_needed(f) == ("libm.so.6", "libgomp.so.1", "libc.so.6")
    f.write_bytes(elf([]))
    assert find_needed(f) == ()


def test_find_needed_is_none_for_what_it_cannot_read(tmp_path: Path) -> None:
    assert find_needed(tmp_path / "missing") is None
    (tmp_path / "script").write_bytes(b"#!/bin/sh\n")
    assert find_needed(tmp_path / "script") is None
    (tmp_path / "elf32").write_bytes(b"\x7fELF" + bytes([1, 1, 1]) + bytes(64))
    assert find_needed(tmp_path / "elf32") is None
    (tmp_path / "cut").write_bytes(elf(["libc.so.6"])[:80])  # section headers missing
    assert find_needed(tmp_path / "cut") is None


def test_find_needed_agrees_with_this_pythons_own_executable() -> None:
    needed = find_needed(Path(sys.executable).resolve())
    assert needed is not None and "libc.so.6" in needed


def test_only_glibc_is_allowed() -> None:
    assert beyond_glibc(("libc.so.6", "libm.so.6", "libpthread.so.0", "ld-linux-x86-64.so.2")) == ()
    assert beyond_glibc(("libstdc++.so.6", "libc.so.6", "libgomp.so.1")) == ("libstdc++.so.6", "libgomp.so.1")
    assert "libstdc++.so.6" not in GLIBC_SONAMES and "libgcc_s.so.1" not in GLIBC_SONAMES


# --------------------------------------------------------------------------- pack --single-binary
def single_store(tmp_path: Path, server: bytes, *, single: bool = True) -> Paths:
    paths = Paths(Scope.USER, tmp_path / "home", tmp_path / "config", tmp_path / "units")
    stage = tmp_path / "stage"
    (stage / "bin").mkdir(parents=True)
    (stage / "bin" / "llama-server").write_bytes(server)
    (stage / "bin" / "llama-server").chmod(0o755)
    (stage / "bin" / "llama-quantize").write_bytes(b"quantize")
    xeon = with_flags(load("ivybridge-avx-only-xeon"))
    manifest = manifest_for(xeon, PlanOptions(single_binary=single))
    manifest["id"] = SINGLE_ID if single else "cpu-0123456789ab"
    binaries = {f"bin/{n}": sha256_file(stage / "bin" / n) for n in ("llama-server", "llama-quantize")}
    rec = Store(paths).install(stage, {**manifest, "binaries": binaries})
    Store(paths).set_current(rec.id)
    return paths


def test_pack_single_binary_ships_the_server_its_manifest_and_sha256sums(tmp_path: Path) -> None:
    server = elf(["libm.so.6", "libc.so.6"])
    paths = single_store(tmp_path, server)
    out = tmp_path / "out"
    out.mkdir()
    res = pack_single_binary(paths, PackOptions(None, out))
    assert res.path.name == f"llama-server-{SINGLE_ID}-x86_64-avx.tar.gz" and res.changed
    assert res.path.with_name(res.path.name + ".sha256").read_text() == f"{res.sha256}  {res.path.name}\n"
    assert res.meta["single_binary"] == {"file": "llama-server", "sha256": hashlib.sha256(server).hexdigest(),
                                         "size": len(server), "needed": ["libm.so.6", "libc.so.6"]}  # fmt: skip
    with tarfile.open(res.path, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [f"{SINGLE_ID}/{n}" for n in ("llama-server", "manifest.json", "SHA256SUMS")]
        assert members[f"{SINGLE_ID}/llama-server"].mode == 0o755
        files = {n.split("/")[1]: tar.extractfile(m).read() for n, m in members.items()}  # type: ignore[union-attr]
    assert files["llama-server"] == server
    assert json.loads(files["manifest.json"])["id"] == SINGLE_ID
    # The format `sha256sum -c` reads, for both other members.
    assert files["SHA256SUMS"].decode().splitlines() == [
        f"{hashlib.sha256(files[n]).hexdigest()}  {n}" for n in ("llama-server", "manifest.json")
    ]
    again = pack_single_binary(paths, PackOptions(SINGLE_ID, out))
    assert (again.sha256, again.changed) == (res.sha256, False)  # reproducible


def test_pack_single_binary_refuses_a_shared_build(tmp_path: Path) -> None:
    paths = single_store(tmp_path, elf(["libllama.so", "libc.so.6"]), single=False)
    with pytest.raises(UsageError) as info:
        pack_single_binary(paths, PackOptions())
    assert "is not a single binary" in info.value.message and "build --single-binary" in info.value.hint
    assert info.value.exit_code == 2
    assert pack(paths, PackOptions(None, tmp_path)).path.is_file()  # the shared build packs as before


def test_pack_single_binary_refuses_a_server_that_needs_more_than_glibc(tmp_path: Path) -> None:
    paths = single_store(tmp_path, elf(["libgomp.so.1", "libc.so.6"]))
    with pytest.raises(ArtifactError, match="needs libgomp.so.1 besides glibc"):
        pack_single_binary(paths, PackOptions())


def test_pack_single_binary_refuses_a_server_changed_since_the_build(tmp_path: Path) -> None:
    paths = single_store(tmp_path, elf(["libc.so.6"]))
    server = Store(paths).get(SINGLE_ID).binary("llama-server")
    server.write_bytes(elf(["libc.so.6", "libm.so.6"]))
    with pytest.raises(ArtifactError, match="does not match the sha256 in its manifest"):
        pack_single_binary(paths, PackOptions())


def test_pack_single_binary_is_gzip_and_needs_a_build(tmp_path: Path) -> None:
    paths = single_store(tmp_path, elf(["libc.so.6"]))
    with pytest.raises(UsageError, match=r"\.tar\.gz"):
        pack_single_binary(paths, PackOptions(compression="zst"))
    empty = Paths(Scope.USER, tmp_path / "none", tmp_path / "c", tmp_path / "u")
    with pytest.raises(NotFoundError, match="no current build"):
        pack_single_binary(empty, PackOptions())


def test_a_single_binary_plan_is_what_pack_checks() -> None:
    plan = plan_build(load("zen4-epyc"), PlanOptions(single_binary=True))
    assert plan.to_dict()["cmake_defines"]["BUILD_SHARED_LIBS"] == "OFF" and plan.single_binary


# --------------------------------------------------------------------------- the build's own check
def test_the_build_refuses_a_single_binary_that_needs_more_than_glibc(tmp_path: Path) -> None:
    paths = Paths(Scope.USER, tmp_path / "home", tmp_path / "config", tmp_path / "units")
    builder = _Builder(paths, BuildOptions(), SilentReporter())
    (tmp_path / "stage" / "bin").mkdir(parents=True)
    server = tmp_path / "stage" / "bin" / "llama-server"
    server.write_bytes(elf(["libm.so.6", "libc.so.6", "ld-linux-x86-64.so.2"]))
    assert builder.check_single_binary(tmp_path / "stage", tmp_path / "build.log") == {
        "file": "bin/llama-server", "needed": ["libm.so.6", "libc.so.6", "ld-linux-x86-64.so.2"]}  # fmt: skip
    # What a shared build, or one with OpenMP, would have asked for.
    server.write_bytes(elf(["libllama.so.0", "libgomp.so.1", "libstdc++.so.6", "libc.so.6"]))
    with pytest.raises(BuildError) as info:
        builder.check_single_binary(tmp_path / "stage", tmp_path / "build.log")
    assert "still needs libllama.so.0, libgomp.so.1, libstdc++.so.6" in info.value.message
    assert info.value.exit_code == 6 and str(tmp_path / "build.log") in info.value.hint
    server.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(BuildError, match="not a readable 64-bit ELF"):
        builder.check_single_binary(tmp_path / "stage", tmp_path / "build.log")
