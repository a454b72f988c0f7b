"""`nativellm upgrade` and `builds rollback` under the real systemd (issue 5, acceptance 2).

The new builds are real artifacts made from the session's build, installed by `upgrade
--artifact` (which smoke-tests them on this host like any artifact):

- "good": the same binaries under a new build id, so the rollout really moves instances;
- "broken": bin/llama-server is a wrapper that execs the real server for every argv except
  one carrying `--metrics`, which only instances pass (the smoke test does not): the build
  passes its smoke test and then fails at start with the instance's real flags.

Both are signed with a test key that the sandbox's home trusts (issue 14); an unsigned copy of
"good" is refused before anything moves.

The tests run in file order and share two instances, up1 and up2, that follow `current`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nativellm.build.signing import generate_key
from nativellm.fsutil import sha256_file
from tests.e2e.conftest import InnerCli
from tests.e2e.test_instances import _record, chat, healthy, port_of, unit
from tests.helpers import CACHE, nativellm

WRAPPER = """#!/bin/sh
# nativellm test: a llama-server that passes the smoke test but refuses an instance's flags.
for a in "$@"; do
  if [ "$a" = "--metrics" ]; then echo "error: this broken build refuses --metrics" >&2; exit 1; fi
done
exec "$(dirname "$0")/llama-server.real" "$@"
"""


def _derive_artifact(base_home: Path, tag: str, out: Path, *, broken: bool, key: Path | None) -> Path:
    """Copy the current build under a new id (optionally with the wrapper) and pack it."""
    src = (base_home / "data" / "current").resolve()
    scratch = out / f"home-{tag}"
    new_id = f"{src.name}-{tag}"
    dest = scratch / "data" / "builds" / new_id
    shutil.copytree(src, dest, symlinks=True)
    if broken:
        server = dest / "bin" / "llama-server"
        os.replace(server, server.with_name("llama-server.real"))
        server.write_text(WRAPPER)
        server.chmod(0o755)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["id"] = new_id
    manifest["requested_ids"] = [new_id]
    manifest["binaries"] = {
        str(p.relative_to(dest)): sha256_file(p)
        for p in sorted(dest.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.parent.name in ("bin", "lib")
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sign = ["--sign-key", str(key)] if key else []
    res = nativellm("pack", new_id, "-o", str(out), *sign, "--json", home=scratch, timeout=600)
    assert res.returncode == 0, res.stderr
    return Path(res.json()["data"]["file"])


@pytest.fixture(scope="module")
def artifacts(cli: InnerCli) -> Iterator[dict[str, Any]]:
    out = CACHE / "upgrade-artifacts" / uuid.uuid4().hex[:8]  # visible inside the sandbox
    out.mkdir(parents=True)
    old = (cli.home / "data" / "current").resolve().name
    key = generate_key(out / "upgrade-key", "upgrade test")
    trusted = cli.home / "config" / "trusted-keys"
    trusted.parent.mkdir(parents=True, exist_ok=True)
    trusted.write_text(key.public_line + "\n")
    unsigned = out / "unsigned"
    unsigned.mkdir()
    try:
        yield {
            "old": old,
            "good": _derive_artifact(cli.home, "good", out, broken=False, key=key.private),
            "broken": _derive_artifact(cli.home, "broken", out, broken=True, key=key.private),
            "unsigned": _derive_artifact(cli.home, "unsigned", unsigned, broken=False, key=None),
        }
    finally:
        trusted.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _instances(cli: InnerCli, artifacts: dict[str, Any]) -> Iterator[None]:
    for name in ("up1", "up2"):
        cli("instance", "add", name, "--model", "demo", "--ctx", "1024", check=True)
        cli("start", name, check=True)
    yield
    for name in ("up1", "up2"):
        cli("instance", "rm", name)
    cli("builds", "use", artifacts["old"])


def _pid(cli: InnerCli, name: str) -> int:
    return int(unit(cli.sb, name)["MainPID"])


def _build_of(cli: InnerCli, name: str) -> str:
    """The build the running server was started from, read from inside the sandbox."""
    pid = _pid(cli, name)
    exe = cli.sb.exec(["readlink", f"/proc/{pid}/exe"]).stdout.strip()
    return Path(exe).parts[-3]


def _current(cli: InnerCli) -> str:
    return str(cli.json("builds", "list")["current"])


def test_upgrade_refuses_an_unsigned_artifact_before_touching_anything(
    cli: InnerCli, artifacts: dict[str, Any]
) -> None:
    old = artifacts["old"]
    pids = {name: _pid(cli, name) for name in ("up1", "up2")}
    builds = sorted(cli.json("builds", "list")["builds"], key=lambda b: b["id"])
    res = cli("upgrade", "--artifact", str(artifacts["unsigned"]))
    assert res.returncode == 14, res.stdout + res.stderr
    assert "is not signed" in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr
    assert (
        _current(cli) == old and sorted(cli.json("builds", "list")["builds"], key=lambda b: b["id"]) == builds
    )
    assert {name: _pid(cli, name) for name in ("up1", "up2")} == pids  # nothing was restarted
    assert not list((cli.home / "data" / "work").glob(".artifact-*"))


def test_upgrade_to_a_broken_server_build_rolls_back_and_keeps_serving(
    cli: InnerCli, artifacts: dict[str, Any]
) -> None:
    old = artifacts["old"]
    assert _current(cli) == old and _build_of(cli, "up1") == old
    t0 = time.monotonic()
    res = cli("upgrade", "--artifact", str(artifacts["broken"]), "--json")
    _record("upgrade_broken_with_rollback_s", time.monotonic() - t0)
    assert res.returncode == 16, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert (
        doc["ok"] is False and doc["error"]["kind"] == "upgrade" and "rolled back" in doc["error"]["message"]
    )
    data = doc["data"]
    assert data["rolled_back"] is True and "refuses --metrics" in data["reason"], data
    # The first instance failed, nothing else was touched; it was restarted on the old build.
    assert [(s["instance"], s["result"]) for s in data["steps"]] == [
        ("up1", "failed"),
        ("up1", "rolled back"),
    ]
    assert {"instance": "up2", "why": "not reached: the rollout stopped"} in data["skipped"]
    _record("rollback_after_failed_upgrade_s", data["rollback_s"])
    assert _current(cli) == old
    for name in ("up1", "up2"):
        assert _build_of(cli, name) == old
        assert healthy(port_of(cli, name))
        chat(port_of(cli, name))
    # The broken build stays installed (it passed its smoke test) but is not current.
    ids = {b["id"]: b for b in cli.json("builds", "list")["builds"]}
    assert ids[f"{old}-broken"]["smoke_test_passed"] is True and not ids[f"{old}-broken"]["current"]


def test_canary_upgrade_touches_one_instance_then_the_rest_follow(
    cli: InnerCli, artifacts: dict[str, Any]
) -> None:
    old, new = artifacts["old"], f"{artifacts['old']}-good"
    pid2 = _pid(cli, "up2")
    t0 = time.monotonic()
    doc = cli.json("upgrade", "--artifact", str(artifacts["good"]), "--canary", "up1")
    _record("upgrade_canary_s", time.monotonic() - t0)
    assert doc["changed"] is True and doc["data"]["current"] == new
    assert [(s["instance"], s["result"]) for s in doc["data"]["steps"]] == [("up1", "upgraded")]
    assert any("without --canary to roll the rest" in n for n in doc["data"]["notes"])
    assert _build_of(cli, "up1") == new
    assert _pid(cli, "up2") == pid2 and _build_of(cli, "up2") == old  # untouched
    chat(port_of(cli, "up1"))

    # The same command without --canary moves the rest (the artifact is already installed).
    t0 = time.monotonic()
    doc = cli.json("upgrade", "--artifact", str(artifacts["good"]))
    _record("upgrade_one_instance_s", time.monotonic() - t0)
    assert [(s["instance"], s["result"]) for s in doc["data"]["steps"]] == [("up2", "upgraded")]
    assert {"instance": "up1", "why": "already runs the new build"} in doc["data"]["skipped"]
    assert _build_of(cli, "up2") == new
    # Idempotent: nothing left to move.
    again = cli.json("upgrade", "--artifact", str(artifacts["good"]))
    assert again["changed"] is False and again["data"]["steps"] == []


def test_builds_rollback_restarts_the_instances_that_follow_current(
    cli: InnerCli, artifacts: dict[str, Any]
) -> None:
    old, new = artifacts["old"], f"{artifacts['old']}-good"
    assert _current(cli) == new
    pids = {n: _pid(cli, n) for n in ("up1", "up2")}
    t0 = time.monotonic()
    doc = cli.json("builds", "rollback")
    _record("builds_rollback_with_restarts_s", time.monotonic() - t0)
    assert doc["data"]["current"] == old and doc["data"]["previous"] == new
    assert sorted(doc["data"]["restarted"]) == ["up1", "up2"] and doc["data"]["systemd"] is True
    for name in ("up1", "up2"):
        assert _pid(cli, name) != pids[name]
        assert _build_of(cli, name) == old
        chat(port_of(cli, name))
    human = cli("builds", "use", new, check=True)
    assert human.returncode == 0
    text = cli("builds", "rollback", check=True).stdout
    assert "restarted up1, up2" in text
