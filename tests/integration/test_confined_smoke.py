"""A trojan artifact (issue 14, finding 2): the session's real build, packed with a llama-server that
first tries to write into the store, into /root and into its own bin/, then execs the real server.

Installed on a host, its smoke test runs confined (on this CI host, which has no systemd as PID 1:
uid 65534 in its own namespaces), so the install may pass, but none of the payload's writes happen.
A control run with the confinement turned off shows the payload is real: there it writes all three.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nativellm.fsutil import sha256_file
from tests.helpers import CACHE, CliResult, nativellm

pytestmark = pytest.mark.slow

_PAYLOAD = """#!/bin/sh
# The trojan: try to plant files where it must not, then behave.
touch {store}/pwn-store 2>/dev/null
touch {builds}/pwn-builds 2>/dev/null
touch {root_marker} 2>/dev/null
touch "$(dirname "$0")/pwn-self" 2>/dev/null
echo "trojan ran as uid $(id -u)" >&2
exec "$(dirname "$0")/llama-server.real" "$@"
"""


@pytest.fixture
def victim() -> Iterator[Path]:
    """The installing host's NATIVELLM_HOME, outside /tmp (a private /tmp would hide it anyway)."""
    home = CACHE / "sessions" / f"victim-{uuid.uuid4().hex[:10]}"
    home.mkdir(parents=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def make_trojan(build: Path, victim_data: Path, root_marker: Path, work: Path) -> Path:
    """Pack a copy of the installed `build` whose llama-server carries the payload; the artifact."""
    builder = work / "builder"
    dst = builder / "data" / "builds" / build.name
    shutil.copytree(build, dst, symlinks=True)
    server = dst / "bin" / "llama-server"
    server.rename(dst / "bin" / "llama-server.real")
    server.write_text(
        _PAYLOAD.format(store=victim_data, builds=victim_data / "builds", root_marker=root_marker)
    )
    server.chmod(0o755)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["binaries"]["bin/llama-server"] = sha256_file(server)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    out = work / "out"
    out.mkdir()
    res = nativellm("pack", build.name, "-o", str(out), "--json", home=builder)
    assert res.returncode == 0, res.stderr
    return Path(res.json()["data"]["file"])


@pytest.fixture
def trojan(
    auto_build: CliResult, session_home: Path, victim: Path, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    build_id = auto_build.json()["data"]["build_id"]
    root_marker = Path("/root") / f"pwn-root-{uuid.uuid4().hex[:10]}"
    data = victim / "data"
    artifact = make_trojan(session_home / "data" / "builds" / build_id, data, root_marker, tmp_path)
    markers = [data / "pwn-store", data / "builds" / "pwn-builds", root_marker]
    yield {"file": str(artifact), "build_id": build_id, "markers": markers}
    root_marker.unlink(missing_ok=True)


def _install(trojan: dict[str, Any], victim: Path, confine: str | None) -> CliResult:
    env = {"NATIVELLM_SMOKE_CONFINE": confine} if confine else {}
    # Not about trust (the signature checks are test_artifacts.py's): the opt-out lets it reach the smoke.
    return nativellm(
        "install-artifact", trojan["file"], "--insecure-unsigned", "--json", home=victim, env=env
    )


def test_a_trojan_artifact_cannot_write_to_the_store_or_root(trojan: dict[str, Any], victim: Path) -> None:
    (victim / "data" / "builds").mkdir(parents=True)  # the store exists, as on a real host
    res = _install(trojan, victim, None)
    print(f"\nconfined install-artifact: {res.seconds:.1f}s")
    for marker in trojan["markers"]:
        assert not marker.exists(), f"the trojan wrote {marker}"
    assert res.returncode == 0, res.stderr  # the real server behind it passes the smoke test
    smoke = res.json()["data"]["smoke_test"]
    assert smoke["passed"] is True
    assert smoke["confinement"] in ("namespaces", "systemd") and smoke["uid"] != 0
    build = victim / "data" / "builds" / trojan["build_id"]
    assert not (build / "bin" / "pwn-self").exists()
    log = (build / "smoke.log").read_text()
    assert f"trojan ran as uid {smoke['uid']}" in log  # the payload did run, and got nowhere
    assert not list((victim / "data" / "work").glob(".artifact-*"))


def test_the_payload_is_real_when_unconfined(trojan: dict[str, Any], victim: Path) -> None:
    """The control: NATIVELLM_SMOKE_CONFINE=none is the old behaviour, and the payload lands."""
    (victim / "data" / "builds").mkdir(parents=True)
    res = _install(trojan, victim, "none")
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["smoke_test"]["confinement"] == "none"
    assert any("ran unconfined" in n for n in res.json()["data"]["notes"])
    assert all(m.exists() for m in trojan["markers"]), [str(m) for m in trojan["markers"] if not m.exists()]


def test_install_artifact_refuses_a_symlink_chain_before_it_writes(
    auto_build: CliResult, session_home: Path, victim: Path, tmp_path: Path
) -> None:
    """Finding 1 end to end: a real artifact's artifact.json (so every earlier check passes), then
    links that are inside on paper and a member that, followed on disk, lands in the victim's home."""
    import io
    import tarfile

    from nativellm.build.artifacts import artifact_meta

    build_id = auto_build.json()["data"]["build_id"]
    manifest = json.loads((session_home / "data" / "builds" / build_id / "manifest.json").read_text())
    meta = json.dumps(artifact_meta(manifest)).encode()
    # Unpacked into <store>/work/.artifact-X/unpacked: a/c/b is top/b on disk, whose ../../..
    # is the store's work dir (on paper it is unpacked/, inside).
    evil = tmp_path / f"nativellm-{build_id}-evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        ti = tarfile.TarInfo(f"{build_id}/artifact.json")
        ti.size = len(meta)
        tar.addfile(ti, io.BytesIO(meta))
        for name, link in (("a", "."), ("a/c", "."), ("a/c/b", "../../..")):
            ti = tarfile.TarInfo(f"{build_id}/{name}")
            ti.type, ti.linkname = tarfile.SYMTYPE, link
            tar.addfile(ti)
        ti = tarfile.TarInfo(f"{build_id}/a/c/b/pwn-chain")
        ti.size = 5
        tar.addfile(ti, io.BytesIO(b"owned"))
    res = nativellm(
        "install-artifact", str(evil), "--sha256", sha256_file(evil), "--insecure-unsigned", home=victim
    )
    assert res.returncode == 14, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    hints = [ln for ln in res.stderr.splitlines() if ln.strip().startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, res.stderr
    assert "unsafe path" in errors[0] and "a/c/b" in errors[0] and "Traceback" not in res.stderr
    assert not list(victim.rglob("pwn-chain")) and not list(tmp_path.rglob("pwn-chain"))
    assert not (victim / "data" / "builds").exists() or not list((victim / "data" / "builds").iterdir())
    assert not list((victim / "data" / "work").glob(".artifact-*"))
