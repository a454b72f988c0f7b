"""Artifacts for real: pack the session's auto build, install it into other stores (from a file,
over HTTP on loopback, and through `build --from-index`), smoke-tested on this host; refusals."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nativellm.fsutil import sha256_file
from tests.helpers import CliResult, nativellm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed(
    auto_build: CliResult, session_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The session's auto build, packed once into a directory with its index."""
    out = tmp_path_factory.mktemp("artifacts")
    build_id = auto_build.json()["data"]["build_id"]  # by id: other tests may move `current`
    res = nativellm("pack", build_id, "-o", str(out), "--json", home=session_home)
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["ok"] and doc["data"]["build_id"] == build_id
    idx = nativellm("artifacts", "index", str(out), "--json", home=session_home)
    assert idx.returncode == 0, idx.stderr
    print(f"\npack: {res.seconds:.1f}s for {doc['data']['size'] / 1e6:.1f} MB")
    return {**doc["data"], "dir": out, "pack_seconds": res.seconds}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_dir(packed: dict[str, Any]) -> Iterator[str]:
    """The artifact directory served by a plain HTTP server on loopback."""
    handler = functools.partial(_QuietHandler, directory=str(packed["dir"]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fresh_home(tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    home.mkdir()
    return home


def test_pack_prints_sha256_and_is_reproducible(packed: dict[str, Any], session_home: Path) -> None:
    path = Path(packed["file"])
    assert path.name == f"nativellm-{packed['build_id']}-{packed['variant']}.tar.zst"
    sidecar = path.with_name(path.name + ".sha256").read_text().split()
    assert sidecar == [packed["sha256"], path.name]
    again = nativellm("pack", packed["build_id"], "-o", str(path.parent), home=session_home)
    assert again.returncode == 0, again.stderr
    assert f"sha256 {packed['sha256']}  {path.name}" in again.stdout
    assert again.stdout.startswith("unchanged")
    # The auto build was planned for this host, so the artifact carries this host's fingerprint.
    fp = nativellm("fingerprint", home=session_home)
    assert fp.returncode == 0 and fp.stdout.strip() == packed["fingerprint"]
    index = json.loads((path.parent / "index.json").read_text())
    assert index["fingerprints"][packed["fingerprint"]]  # {fingerprint: {version: [{file, sha256, size}]}}


def test_install_artifact_into_another_store(packed: dict[str, Any], tmp_path: Path) -> None:
    home = fresh_home(tmp_path, "host2")
    res = nativellm("install-artifact", packed["file"], "--json", home=home)
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["changed"] is True and doc["data"]["installed"] and doc["data"]["activated"]
    assert doc["data"]["smoke_test"]["passed"] is True
    print(f"\ninstall-artifact (with smoke test): {res.seconds:.1f}s; pack: {packed['pack_seconds']:.1f}s")

    listed = nativellm("builds", "list", "--json", home=home).json()
    assert listed["current"] == packed["build_id"]
    build = Path(listed["builds"][0]["path"])
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["artifact"]["sha256"] == packed["sha256"]
    assert manifest["smoke_test"]["passed"] is True and (build / "smoke.log").is_file()
    assert not (build / "build.log").exists()  # nothing was compiled here
    assert not list((home / "data" / "work").glob(".artifact-*"))  # the temp dir is gone

    again = nativellm("install-artifact", packed["file"], "--json", home=home)
    assert again.returncode == 0, again.stderr
    assert again.json()["changed"] is False and "already installed" in again.json()["data"]["notes"][0]
    use = nativellm("builds", "use", packed["build_id"], "--json", home=home)
    assert use.returncode == 0 and use.json()["changed"] is False  # selectable, and already current


def test_install_refuses_a_host_that_lacks_a_required_flag(
    packed: dict[str, Any], tmp_path: Path, session_home: Path
) -> None:
    needed = packed["requirements"]["cpu_flags"]
    if not needed:
        pytest.skip("this host's auto build needs no ISA extension beyond the baseline")
    flag = "avx512f" if "avx512f" in needed else needed[-1]
    profile = json.loads(nativellm("detect", "--json", home=session_home).stdout)
    profile["cpu"]["flags"] = [f for f in profile["cpu"]["flags"] if f != flag]
    (tmp_path / "weaker.json").write_text(json.dumps(profile))
    home = fresh_home(tmp_path, "weak")
    res = nativellm("install-artifact", packed["file"], "--profile", str(tmp_path / "weaker.json"), home=home)
    assert res.returncode == 14, res.stderr
    assert f"this build needs {flag}, this CPU lacks it" in res.stderr
    assert not (home / "data" / "builds").exists() and not (home / "data" / "current").exists()


def test_install_over_http_checks_the_sha256(packed: dict[str, Any], http_dir: str, tmp_path: Path) -> None:
    url = f"{http_dir}/{Path(packed['file']).name}"
    bad = nativellm("install-artifact", url, "--sha256", "0" * 64, home=fresh_home(tmp_path, "bad"))
    assert bad.returncode == 14 and "sha256 mismatch" in bad.stderr
    home = fresh_home(tmp_path, "http")
    res = nativellm("install-artifact", url, "--json", home=home)  # sha256 from URL.sha256
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["sha256"] == packed["sha256"] and res.json()["data"]["installed"]


def test_build_from_index_installs_instead_of_compiling(
    packed: dict[str, Any], http_dir: str, llama_source: Path, tmp_path: Path
) -> None:
    home = fresh_home(tmp_path, "fleet")
    argv = ("build", "--auto", "--source", str(llama_source), "--from-index", http_dir, "--json")
    res = nativellm(*argv, home=home)
    assert res.returncode == 0, res.stderr
    data = res.json()["data"]
    assert data["build_id"] == packed["build_id"] and data["activated"]
    assert "instead of compiling" in data["notes"][0]
    work = home / "data" / "work"
    assert not list(work.glob("*/build.log")) and not list(work.glob("*/build"))  # no compile happened
    assert not (home / "data" / "builds" / packed["build_id"] / "build.log").exists()
    print(f"\nbuild --from-index: {res.seconds:.1f}s (artifact install with smoke test, no compile)")

    again = nativellm(*argv, home=home)
    assert again.returncode == 0 and again.json()["changed"] is False and again.json()["data"]["cached"]


def test_build_from_index_falls_back_when_nothing_matches(
    packed: dict[str, Any], llama_source: Path, tmp_path: Path
) -> None:
    home = fresh_home(tmp_path, "nomatch")
    # --baseline plans differently from the packed auto build, so the index has no match.
    argv = ("build", "--baseline", "--source", str(llama_source), "--from-index", str(packed["dir"]))
    res = nativellm(*argv, "--dry-run", "--json", home=home)
    assert res.returncode == 0, res.stderr
    assert "matches this host" in res.stderr and "compiling" in res.stderr
    assert res.json()["data"]["build_id"] is None  # the normal dry run: it would compile
    assert "nothing was fetched or compiled" in res.json()["data"]["notes"][0]
    matching = nativellm(
        "build", "--auto", "--source", str(llama_source), "--from-index", str(packed["dir"]), "--dry-run", "--json",
        home=home,
    )  # fmt: skip
    assert matching.returncode == 0, matching.stderr
    assert "would install artifact" in matching.json()["data"]["notes"][0]
    assert not (home / "data" / "builds").exists()


def test_an_artifact_that_fails_its_smoke_test_here_is_not_installed(
    packed: dict[str, Any], session_home: Path, trap_binary: Path, tmp_path: Path
) -> None:
    # A consistent artifact (manifest sha256s match) whose llama-server dies with SIGILL on this host.
    builder = fresh_home(tmp_path, "builder")
    src = session_home / "data" / "builds" / packed["build_id"]
    dst = builder / "data" / "builds" / packed["build_id"]
    shutil.copytree(src, dst, symlinks=True)
    shutil.copy(trap_binary, dst / "bin" / "llama-server")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["binaries"]["bin/llama-server"] = sha256_file(dst / "bin" / "llama-server")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    out.mkdir()
    res = nativellm("pack", packed["build_id"], "-o", str(out), "--json", home=builder)
    assert res.returncode == 0, res.stderr

    home = fresh_home(tmp_path, "victim")
    bad = nativellm("install-artifact", res.json()["data"]["file"], home=home)
    assert bad.returncode == 7, bad.stderr
    assert "failed its smoke test on this host" in bad.stderr and "SIGILL" in bad.stderr
    assert not (home / "data" / "builds").exists() or not list((home / "data" / "builds").iterdir())
    assert not (home / "data" / "current").exists()
