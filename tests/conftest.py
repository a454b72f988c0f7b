"""Shared test configuration: tiers are chosen by directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CACHE, CliResult, _fetch_sdist, cannot_run, nativellm

TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    """NATIVELLM_HOME moves state, not units: a test that sets only NATIVELLM_HOME would write
    units into this machine's real ~/.config/systemd/user. Every process this session starts
    inherits a throwaway unit directory instead (the systemd sandbox sets its own)."""
    if "NATIVELLM_UNIT_DIR" not in os.environ:
        os.environ["NATIVELLM_UNIT_DIR"] = tempfile.mkdtemp(prefix="nativellm-test-units-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ["NATIVELLM_UNIT_DIR"], ignore_errors=True))
    # Every build of the session, in every fresh NATIVELLM_HOME, shares one web UI cache across
    # sessions, as ccache shares objects: npm runs only when the tree's UI sources change.
    os.environ.setdefault("NATIVELLM_UI_CACHE", str(CACHE / "ui-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if tier in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def llama_source() -> Path:
    """The llama.cpp tree vendored in the llama-cpp-python sdist (downloaded once, cached)."""
    return _fetch_sdist()


@pytest.fixture(scope="session")
def session_home() -> Iterator[Path]:
    """A fresh NATIVELLM_HOME for this test session, shared by the integration and e2e tiers.

    Outside /tmp on purpose: the systemd sandbox gets a fresh /tmp and must see the store.
    Every session's home sits at the same depth, so ccache hits across sessions.
    """
    home = CACHE / "sessions" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def auto_build(llama_source: Path, session_home: Path) -> CliResult:
    """`nativellm build --auto --source <sdist tree>`, once per test session."""
    res = nativellm("build", "--auto", "--source", str(llama_source), "--json", home=session_home)
    assert res.returncode == 0, f"auto build failed:\n{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
    return res


@pytest.fixture(scope="session")
def trap_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real executable that dies with SIGILL at once: the shape of an ISA crash."""
    d = tmp_path_factory.mktemp("trap")
    (d / "trap.c").write_text("int main(void) { __builtin_trap(); }\n")
    subprocess.run(["cc", "-O0", "-o", str(d / "trap"), str(d / "trap.c")], check=True)
    return d / "trap"


@pytest.fixture
def systemd_analyze() -> None:
    """Tests that grade unit files with the real `systemd-analyze security --offline`."""
    if shutil.which("systemd-analyze") is None:
        cannot_run("systemd-analyze is not installed (Debian package systemd)")
