"""The confined smoke test under a real systemd (issue 14, finding 2): inside the booted sandbox,
nativellm runs as root with a system manager, so an artifact's smoke test is a transient unit with
DynamicUser=yes. The trojan artifact (tests/integration/test_confined_smoke.py) installs, its payload
runs under a dynamic uid, and its writes to the store and to /root don't happen."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import InnerCli
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE
from tests.integration.test_confined_smoke import make_trojan

pytestmark = pytest.mark.slow


@pytest.fixture
def victim() -> Iterator[Path]:
    home = CACHE / "sessions" / f"victim-{uuid.uuid4().hex[:10]}"  # CACHE is shared with the sandbox
    (home / "data" / "builds").mkdir(parents=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_the_trojan_runs_in_a_dynamic_user_unit_and_cannot_write(
    demo_home: Path, sandbox: Sandbox, victim: Path
) -> None:
    build = (demo_home / "data" / "current").resolve()  # the session's build (or a borrowed one)
    build_id = build.name
    root_marker = Path("/root") / f"pwn-root-{uuid.uuid4().hex[:10]}"
    data = victim / "data"
    work = victim / "work"
    work.mkdir()
    artifact = make_trojan(build, data, root_marker, work)

    cli = InnerCli(sandbox, victim, unit_dir=None)
    res = cli("install-artifact", str(artifact), "--insecure-unsigned", "--json", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    smoke = res.json()["data"]["smoke_test"]
    assert smoke["passed"] is True and smoke["confinement"] == "systemd"
    assert 61184 <= smoke["uid"] <= 65519, smoke["uid"]  # systemd's DynamicUser range
    build = data / "builds" / build_id
    assert f"trojan ran as uid {smoke['uid']}" in (build / "smoke.log").read_text()
    for marker in (data / "pwn-store", data / "builds" / "pwn-builds", build / "bin" / "pwn-self"):
        assert not marker.exists(), f"the trojan wrote {marker}"
    inside = sandbox.exec(["test", "-e", str(root_marker)], check=False)
    assert inside.returncode == 1, f"the trojan wrote {root_marker} inside the sandbox"
    assert not root_marker.exists()
    # The unit is transient and collected: nothing named nativellm-smoke-* is left behind.
    left = sandbox.systemctl(
        "list-units", "--all", "--plain", "--no-legend", "nativellm-smoke-*", check=False
    )
    assert "nativellm-smoke-" not in left.stdout
