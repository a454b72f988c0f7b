"""Artifacts for real: pack the session's auto build, install it into other stores (from a file,
over HTTP on loopback, and through `build --from-index`), smoke-tested on this host; refusals.

The artifact and its index are signed (issue 14) with a key made by `artifacts keygen`; a fresh
home trusts it through its `config/trusted-keys` unless a test says otherwise."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
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
def sign_key(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 signing key (KEY, KEY.pub) from `artifacts keygen`."""
    key = tmp_path_factory.mktemp("keys") / "fleet"
    res = nativellm("artifacts", "keygen", str(key), "--comment", "test fleet", "--json", home=session_home)
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["public_line"] == key.with_name("fleet.pub").read_text().strip()
    return key


@pytest.fixture(scope="module")
def packed(
    auto_build: CliResult, session_home: Path, tmp_path_factory: pytest.TempPathFactory, sign_key: Path
) -> dict[str, Any]:
    """The session's auto build, packed and signed once into a directory with its signed index."""
    out = tmp_path_factory.mktemp("artifacts")
    build_id = auto_build.json()["data"]["build_id"]  # by id: other tests may move `current`
    res = nativellm(
        "pack", build_id, "-o", str(out), "--sign-key", str(sign_key), "--json", home=session_home
    )
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["ok"] and doc["data"]["build_id"] == build_id and doc["data"]["signed_by"]
    idx = nativellm(
        "artifacts",
        "index",
        str(out),
        "--json",
        home=session_home,
        env={"NATIVELLM_SIGNING_KEY": str(sign_key)},
    )
    assert idx.returncode == 0, idx.stderr
    assert idx.json()["data"]["signed_by"] == doc["data"]["signed_by"]
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


@pytest.fixture(scope="module")
def trusted_line(sign_key: Path) -> str:
    return sign_key.with_name(sign_key.name + ".pub").read_text()


_TRUSTED: list[str] = []


@pytest.fixture(autouse=True)
def _trust(trusted_line: str) -> None:
    _TRUSTED[:] = [trusted_line]


def fresh_home(tmp_path: Path, name: str, trusted: str | None = "fleet") -> Path:
    """A new NATIVELLM_HOME; `trusted`: its config/trusted-keys holds the fleet key (None: no file)."""
    home = tmp_path / name
    home.mkdir()
    if trusted == "fleet":
        (home / "config").mkdir()
        (home / "config" / "trusted-keys").write_text("# the test fleet\n" + _TRUSTED[0])
    elif trusted is not None:
        (home / "config").mkdir()
        (home / "config" / "trusted-keys").write_text(trusted)
    return home


def refused(res: CliResult, home: Path, *words: str) -> None:
    """Exit 14 with one error line and a hint, and nothing fetched into or unpacked in the store."""
    assert res.returncode == 14, (res.returncode, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hint:" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in errors[0], res.stderr
    data = home / "data"
    assert not (data / "builds").exists() or not list((data / "builds").iterdir())
    assert not (data / "current").exists()
    assert not list((data / "work").glob(".artifact-*")) if (data / "work").exists() else True


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
    bad_home = fresh_home(tmp_path, "bad")
    bad = nativellm("install-artifact", url, "--sha256", "0" * 64, home=bad_home)
    refused(bad, bad_home, "is not the signed sha256")
    home = fresh_home(tmp_path, "http")
    res = nativellm("install-artifact", url, "--json", home=home)  # sha256 from URL.sig
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["sha256"] == packed["sha256"] and res.json()["data"]["installed"]
    assert res.json()["data"]["signed_by"] == packed["signed_by"] and "warning" not in res.stderr


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
    assert res.json()["data"]["signed_by"] is None  # not about trust: installed with the opt-out

    home = fresh_home(tmp_path, "victim")
    bad = nativellm("install-artifact", res.json()["data"]["file"], home=home)
    refused(bad, home, "is not signed")  # first of all: unsigned
    bad = nativellm("install-artifact", res.json()["data"]["file"], "--insecure-unsigned", home=home)
    assert "warning: --insecure-unsigned" in bad.stderr
    assert bad.returncode == 7, bad.stderr
    assert "failed its smoke test on this host" in bad.stderr and "SIGILL" in bad.stderr
    assert not (home / "data" / "builds").exists() or not list((home / "data" / "builds").iterdir())
    assert not (home / "data" / "current").exists()


# --------------------------------------------------------------------------- signatures (issue 14)
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_keys_are_openssh_keys(sign_key: Path, tmp_path: Path, session_home: Path) -> None:
    """A key id is what `ssh-keygen -l` prints, and an `ssh-keygen -t ed25519` key signs too."""
    pub = sign_key.with_name(sign_key.name + ".pub")
    shown = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    from nativellm.build.signing import load_signing_key

    assert shown.stdout.split()[1] == load_signing_key(sign_key).id
    assert oct(sign_key.stat().st_mode & 0o777) == "0o600"
    again = nativellm("artifacts", "keygen", str(sign_key), home=session_home)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites a key
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "s")], check=True)
    assert load_signing_key(tmp_path / "s").id.startswith("SHA256:")


def test_a_host_without_the_key_refuses_before_unpacking(packed: dict[str, Any], tmp_path: Path) -> None:
    no_keys = fresh_home(tmp_path, "no-keys", trusted=None)
    refused(nativellm("install-artifact", packed["file"], home=no_keys), no_keys, "not a trusted key")
    other = tmp_path / "other-key"
    assert nativellm("artifacts", "keygen", str(other), home=no_keys).returncode == 0
    wrong = fresh_home(tmp_path, "wrong", trusted=other.with_name("other-key.pub").read_text())
    refused(nativellm("install-artifact", packed["file"], home=wrong), wrong, "not a trusted key")
    refused(nativellm("build", "--auto", "--from-index", str(packed["dir"]), home=wrong), wrong, "index.json")


@pytest.fixture
def forged_dir(packed: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the artifact directory: the archive with one byte changed, and its .sha256 and the
    index rewritten to match (all on the same server), next to the genuine signatures."""
    d = tmp_path / "forged"
    shutil.copytree(packed["dir"], d)
    archive = d / Path(packed["file"]).name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    sha = sha256_file(archive)
    archive.with_name(archive.name + ".sha256").write_text(f"{sha}  {archive.name}\n")
    index = d / "index.json"
    index.write_text(index.read_text().replace(packed["sha256"], sha))
    return d


def serve(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_tampered_artifacts_and_indexes_are_refused_over_http(
    packed: dict[str, Any], forged_dir: Path, tmp_path: Path, llama_source: Path
) -> None:
    server, url = serve(forged_dir)
    try:
        home = fresh_home(tmp_path, "victim")
        name = Path(packed["file"]).name
        res = nativellm("install-artifact", f"{url}/{name}", home=home)
        refused(res, home, "sha256 mismatch")  # the signed sha256 is the genuine one
        res = nativellm("build", "--auto", "--source", str(llama_source), "--from-index", url, home=home)
        refused(res, home, "not the index its signature signs")
        # without the signatures: refused, and over plain http even with --insecure-unsigned
        (forged_dir / f"{name}.sig").unlink()
        (forged_dir / "index.json.sig").unlink()
        res = nativellm("install-artifact", f"{url}/{name}", home=home)
        refused(res, home, "is not signed")
        res = nativellm("install-artifact", f"{url}/{name}", "--insecure-unsigned", home=home)
        refused(res, home, "plain http")
        argv = ("build", "--auto", "--source", str(llama_source), "--from-index", url, "--insecure-unsigned")
        refused(nativellm(*argv, home=home), home, "plain http")
    finally:
        server.shutdown()
        server.server_close()


def test_a_forged_local_artifact_is_refused_even_with_the_opt_out(forged_dir: Path, tmp_path: Path) -> None:
    home = fresh_home(tmp_path, "local")
    (archive,) = [p for p in forged_dir.iterdir() if p.name.startswith("nativellm-") and p.suffix == ".zst"]
    refused(nativellm("install-artifact", str(archive), home=home), home, "sha256 of")
    sig = archive.with_name(archive.name + ".sig")
    sig.write_text(sig.read_text().replace('"sha256": "', '"sha256": "0'))
    res = nativellm("install-artifact", str(archive), "--insecure-unsigned", home=home)
    refused(res, home)
