"""NATIVELLM_HOME moves the state, never the units (issue 13): under a real user manager,
`instance add` with the state on "another disk" writes units where systemd reads them, and
`systemctl --user start` serves; a unit directory the manager does not read is refused."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import USER_UNIT_DIR, InnerCli
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE, borrow_build


@pytest.fixture
def elsewhere(demo_home: Path, sandbox: Sandbox) -> Iterator[InnerCli]:
    """A second store, as on a big data disk, with the session's build; no NATIVELLM_UNIT_DIR."""
    home = CACHE / "relocated" / uuid.uuid4().hex[:8]
    borrow_build(demo_home, home)
    cli = InnerCli(sandbox, home, unit_dir=None)
    cli("model", "demo", check=True)
    yield cli
    shutil.rmtree(home, ignore_errors=True)


def test_moved_state_keeps_units_where_systemd_reads_them(elsewhere: InnerCli, sandbox: Sandbox) -> None:
    doc = elsewhere.json("instance", "add", "moved", "--model", "demo", "--ctx", "512")
    dropin = f"{USER_UNIT_DIR}/llama@moved.service.d/50-nativellm.conf"
    assert dropin in doc["data"]["files"], doc["data"]["files"]
    assert not (elsewhere.home / "systemd").exists()
    assert (elsewhere.home / "config" / "instances" / "moved.toml").is_file()
    port = doc["data"]["spec"]["port"]
    try:
        sandbox.systemctl("--user", "start", "llama@moved")  # returns once /health is 200
        assert sandbox.show("llama@moved.service", "ActiveState")["ActiveState"] == "active"
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                          json={"prompt": "Hello", "max_tokens": 4, "temperature": 0}, timeout=60)  # fmt: skip
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] > 0, resp.text
    finally:
        elsewhere("instance", "rm", "moved", check=True)
    assert sandbox.exec(["test", "-e", dropin], check=False).returncode == 1


def test_a_unit_dir_the_manager_does_not_read_is_refused(elsewhere: InnerCli, sandbox: Sandbox) -> None:
    hidden = "/root/units-nobody-reads"
    res = elsewhere("instance", "add", "hidden", "--model", "demo", extra_env={"NATIVELLM_UNIT_DIR": hidden})
    assert res.returncode == 10, (res.stdout, res.stderr)
    lines = [line.strip() for line in res.stderr.strip().splitlines()]
    assert lines[0] == (
        f"error: systemd's user manager does not read units from {hidden}; nothing was written"
    )
    assert lines[1] == f"hint: unset NATIVELLM_UNIT_DIR (units then go to {USER_UNIT_DIR})"
    assert "Traceback" not in res.stderr
    assert sandbox.exec(["test", "-e", hidden], check=False).returncode == 1
    assert elsewhere("instance", "show", "hidden").returncode == 3  # no spec either
