"""`build --single-binary` and `pack --single-binary`, for real: one llama-server that needs only glibc.

The proof is the scp-and-run host itself. The packed llama-server goes alone into an empty directory
of a root that holds nothing but the host's glibc (the loader and the libraries ldd names, at the
paths ldd names) and a model file: no /usr, no /etc, no /dev, no /proc, no libstdc++, no libgomp.
Inside it (chroot) it loads the model, answers /health and generates tokens over loopback HTTP.

The static build is a second full compile (~10 minutes cold on 2 cores; ccache cannot reuse the
shared build's objects: other flags), done once per session. `-m "not single_binary"` leaves it out.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nativellm import run
from nativellm.build.elf import GLIBC_SONAMES, find_needed
from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from nativellm.client import complete, free_port, wait_ready
from nativellm.fsutil import sha256_file
from tests.helpers import CliResult, cannot_run, nativellm

pytestmark = [pytest.mark.slow, pytest.mark.single_binary]

VDSO = "linux-vdso.so.1"
LOADER = {"x86_64": "ld-linux-x86-64.so.2", "aarch64": "ld-linux-aarch64.so.1"}.get(platform.machine(), "?")
# Exactly what ldd shows for a binary that needs only the C library: the vDSO, the loader, libc.so.6
# and libm.so.6. libm is glibc's math library, in the same package (libc6) as libc and the loader;
# libstdc++, linked in statically, calls into it. Before glibc 2.34, libpthread, libdl and librt were
# files of their own (of that package too); since then they are part of libc.so.6 (Debian 12: 2.36).
GLIBC_LDD = frozenset({VDSO, LOADER, "libc.so.6", "libm.so.6"})
_GLIBC = tuple(int(x) for x in (os.confstr("CS_GNU_LIBC_VERSION") or "glibc 0.0").split()[1].split(".")[:2])
OLD_GLIBC_LDD = frozenset({"libpthread.so.0", "libdl.so.2", "librt.so.1"} if _GLIBC < (2, 34) else ())
_LDD_LINE = re.compile(r"^\s*(\S+)(?:\s+=>\s+(\S+))?\s+\(0x[0-9a-f]+\)$")


@dataclass(frozen=True)
class SingleBuild:
    home: Path
    build_id: str
    shared_id: str
    result: CliResult

    @property
    def build(self) -> Path:
        return self.home / "data" / "builds" / self.build_id


@pytest.fixture(scope="session")
def single_build(auto_build: CliResult, session_home: Path, llama_source: Path) -> SingleBuild:
    """`nativellm build --single-binary`, once per session, in the session's store next to the shared
    build (so `bench builds` compares the two); the shared build is made current again at once."""
    res = nativellm("build", "--single-binary", "--source", str(llama_source), "--json", home=session_home)
    shared_id = auto_build.json()["data"]["build_id"]
    restored = nativellm("builds", "use", shared_id, home=session_home)
    assert res.returncode == 0, f"single-binary build failed:\n{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
    assert restored.returncode == 0, restored.stderr
    return SingleBuild(session_home, res.json()["data"]["build_id"], shared_id, res)


def ldd(binary: Path) -> dict[str, str | None]:
    """soname (or loader path's name) -> the file it resolves to, as ldd prints it."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs: dict[str, str | None] = {}
    for line in out.splitlines():
        m = _LDD_LINE.match(line)
        assert m, f"unexpected ldd line {line!r} in:\n{out}"
        name, path = m.group(1), m.group(2)
        libs[Path(name).name] = path if path else (name if name.startswith("/") else None)
    return libs


def test_single_binary_build_needs_only_glibc(single_build: SingleBuild) -> None:
    if shutil.which("ldd") is None:
        cannot_run("ldd is not installed (Debian package libc-bin)")
    doc = single_build.result.json()
    assert doc["ok"] and doc["data"]["activated"]
    plan = doc["data"]["plan"]
    assert single_build.build_id.startswith("cpu-single-") and single_build.build_id != single_build.shared_id
    assert plan["backend"] == "cpu"
    assert {k: plan["cmake_defines"][k] for k in ("BUILD_SHARED_LIBS", "GGML_BACKEND_DL", "GGML_OPENMP")} == {
        "BUILD_SHARED_LIBS": "OFF", "GGML_BACKEND_DL": "OFF", "GGML_OPENMP": "OFF"}  # fmt: skip
    build = single_build.build
    # No lib/ to carry: llama and ggml are inside each executable.
    assert not any((build / "lib").glob("*.so*"))
    server = build / "bin" / "llama-server"
    libs = ldd(server)
    print(f"ldd {server}:\n" + "\n".join(f"  {k} => {v}" for k, v in sorted(libs.items())))
    assert set(libs) - OLD_GLIBC_LDD == GLIBC_LDD, f"llama-server needs more than glibc: {sorted(libs)}"
    # ldd follows the loader; DT_NEEDED is what the file itself asks for. Both agree, and the manifest
    # records it.
    needed = find_needed(server)
    assert needed is not None and set(needed) <= GLIBC_SONAMES and "libc.so.6" in needed
    recorded = json.loads((build / "manifest.json").read_text())
    assert recorded["single_binary"] == {"file": "bin/llama-server", "needed": list(needed)}
    assert recorded["smoke_test"]["passed"] is True
    # The shared build really is different: its server needs libllama and libggml from lib/.
    shared = ldd(single_build.home / "data" / "builds" / single_build.shared_id / "bin" / "llama-server")
    assert any(name.startswith(("libllama", "libggml")) for name in shared)
    size = server.stat().st_size
    print(f"single llama-server: {size / 1e6:.1f} MB; the shared build's bin/ and lib/ together: "
          f"{_tree_size(single_build.home / 'data' / 'builds' / single_build.shared_id) / 1e6:.1f} MB")  # fmt: skip


def _tree_size(build: Path) -> int:
    return sum(
        p.stat().st_size
        for d in ("bin", "lib")
        for p in (build / d).rglob("*")
        if p.is_file() and not p.is_symlink()
    )


@pytest.fixture
def demo_model(single_build: SingleBuild, llama_source: Path, tmp_path: Path) -> Path:
    """A real GGUF (random weights, real llama tokenizer), quantized to Q4_0 by the single build itself."""
    f16 = write_synthetic_llama(tmp_path / "f16.gguf", find_vocab(llama_source), SynthSize.TINY, seed=12)
    q4 = tmp_path / "model-q4_0.gguf"
    quantize = single_build.build / "bin" / "llama-quantize"
    subprocess.run([str(quantize), str(f16), str(q4), "Q4_0"], check=True, capture_output=True)
    return q4


def glibc_root(root: Path, binary: Path) -> list[str]:
    """A root with only the files ldd says `binary` loads, at the same paths, copied (not linked)."""
    copied = []
    for name, path in ldd(binary).items():
        if name == VDSO:
            continue
        assert path is not None, f"ldd did not resolve {name}"
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(path).resolve(), dest)
        copied.append(path)
    return copied


@pytest.fixture
def chroot_argv() -> Iterator[list[str]]:
    """How to enter a root: chroot as root, or in a new user namespace where we are root."""
    if shutil.which("chroot") is None:
        cannot_run("chroot is not installed (Debian package coreutils)")
    if os.geteuid() == 0:
        yield ["chroot"]
    elif shutil.which("unshare") is not None:
        yield ["unshare", "--map-root-user", "chroot"]
    else:
        cannot_run("entering a root needs root or unshare (util-linux) with user namespaces")


def test_packed_single_binary_serves_alone_in_a_glibc_only_root(
    single_build: SingleBuild, demo_model: Path, chroot_argv: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = nativellm("pack", single_build.build_id, "--single-binary", "-o", str(out), "--json",
                    home=single_build.home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    data = res.json()["data"]
    archive = Path(data["file"])
    assert archive.name.startswith(f"llama-server-{single_build.build_id}-") and archive.name.endswith(
        ".tar.gz"
    )
    assert sha256_file(archive) == data["sha256"]
    # What the ops engineer does on the target: unpack, check the sums, keep the one file.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data") if sys.version_info >= (3, 12) else tar.extractall(unpacked)
    top = unpacked / single_build.build_id
    assert sorted(p.name for p in top.iterdir()) == ["SHA256SUMS", "llama-server", "manifest.json"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=top, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.splitlines() == ["llama-server: OK", "manifest.json: OK"]
    assert sha256_file(top / "llama-server") == sha256_file(single_build.build / "bin" / "llama-server")

    root = tmp_path / "root"
    libs = glibc_root(root, top / "llama-server")
    (root / "srv").mkdir()
    shutil.copy2(top / "llama-server", root / "srv" / "llama-server")  # alone in an empty directory
    (root / "models").mkdir()
    shutil.copy(demo_model, root / "models" / "model.gguf")
    everything = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    print("the root holds only:\n  " + "\n  ".join(everything))
    assert len(everything) == len(libs) + 2

    port = free_port()
    argv = [*chroot_argv, str(root), "/srv/llama-server", "-m", "/models/model.gguf", "--host", "127.0.0.1",
            "--port", str(port), "-t", "2", "-c", "256", "--no-webui"]  # fmt: skip
    proc = run.Process(argv, log_file=tmp_path / "server.log")
    try:
        base = f"http://127.0.0.1:{port}"
        h = wait_ready(base, 120, alive=lambda: proc.poll() is None)
        assert h.status == "ok", f"llama-server in the root is not ready ({h}):\n{proc.output()[-3000:]}"
        answer = complete(base, "Once upon a time", n_predict=8)
    finally:
        proc.stop()
    assert int(answer["tokens_predicted"]) >= 1 and answer["content"]
    print(f"served from the glibc-only root: {answer['tokens_predicted']} tokens, {answer['content']!r}")


def test_bench_builds_compares_single_and_shared(single_build: SingleBuild, demo_model: Path) -> None:
    res = nativellm("bench", "builds", single_build.shared_id, single_build.build_id, "--model", str(demo_model),
                    "-r", "2", "--pp", "32", "--tg", "8", "--json", home=single_build.home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    shared, single = res.json()["builds"]
    assert (shared["build_id"], single["build_id"]) == (single_build.shared_id, single_build.build_id)
    assert shared["crashed"] is None and single["crashed"] is None
    assert all(x > 0 for b in (shared, single) for k in ("pp", "tg") for x in b[k]["samples"])
    print(f"tg t/s shared {shared['tg']['median']:.1f}, single {single['tg']['median']:.1f} "
          f"(ratio {single['tg_ratio']:.2f}); pp ratio {single['pp_ratio']:.2f}")  # fmt: skip
