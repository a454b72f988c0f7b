"""`nativellm doctor` on a copy of the session's real build: clean, then each injected problem found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CliResult, nativellm

pytestmark = pytest.mark.slow


def _doctor(home: Path) -> tuple[int, list[dict[str, Any]], str]:
    res = nativellm("doctor", "--json", home=home)
    assert res.returncode in (0, 15), res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is (res.returncode == 0)
    return res.returncode, [f for f in doc["findings"] if not f["ok"]], res.stderr


@pytest.fixture()
def home(auto_build: CliResult, session_home: Path, tmp_path: Path) -> Path:
    """A store of its own holding a copy of the session's build: the test may break it."""
    build = (session_home / "data" / "current").resolve()
    builds = tmp_path / "data" / "builds"
    shutil.copytree(build, builds / build.name, symlinks=True)
    (tmp_path / "data" / "current").symlink_to(f"builds/{build.name}")
    return tmp_path


def test_healthy_build_is_clean_and_lists_what_it_checked(home: Path) -> None:
    rc, problems, _ = _doctor(home)
    assert (rc, problems) == (0, [])
    checks = {f["check"] for f in json.loads(nativellm("doctor", "--json", home=home).stdout)["findings"]}
    assert {"store", "libs", "cpu", "disk", "models"} <= checks


def test_a_missing_shared_library_is_found(home: Path) -> None:
    lib = home / "data" / "current" / "lib" / "libggml-base.so.0"
    assert lib.is_symlink()
    lib.unlink()  # the SONAME link: every executable now fails to load
    rc, problems, stderr = _doctor(home)
    assert rc == 15 and "1 problem(s) found" in stderr and "Traceback" not in stderr
    (problem,) = problems
    assert problem["check"] == "libs" and "cannot load libggml-base.so.0" in problem["message"]
    assert "llama-server" in problem["message"] and "nativellm build --auto" in problem["fix"]


def test_a_tampered_binary_is_found(home: Path) -> None:
    server = home / "data" / "current" / "bin" / "llama-server"
    with server.open("ab") as f:
        f.write(b"\0")
    rc, problems, _ = _doctor(home)
    assert rc == 15
    (problem,) = problems
    assert (
        problem["check"] == "store"
        and "bin/llama-server does not match its manifest sha256" in problem["message"]
    )
    human = nativellm("doctor", home=home)
    assert human.returncode == 15 and "FAIL" in human.stdout and "fix:" in human.stdout
