"""Shared test configuration: tiers are chosen by directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


VULKAN_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")  # Mesa's software device, lavapipe


@dataclass(frozen=True)
class VulkanBuild:
    """A smoke-tested `build --backend vulkan` (on lavapipe here) in its own NATIVELLM_HOME."""

    home: Path
    result: dict[str, Any]
    seconds: float


def vulkan_unavailable_reason() -> str | None:
    for tool, package in (("vulkaninfo", "vulkan-tools"), ("glslc", "glslc")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package}; scripts/bootstrap.sh installs it)"
    if not Path("/usr/include/vulkan/vulkan_core.h").is_file():
        return "the Vulkan headers are not installed (Debian package libvulkan-dev)"
    out = subprocess.run(["vulkaninfo", "--summary"], capture_output=True, text=True, timeout=60)
    if "deviceName" not in out.stdout:
        return "vulkaninfo lists no Vulkan device (Debian package mesa-vulkan-drivers has lavapipe)"
    return None


def vulkan_header_defines(tree: Path) -> list[str]:
    """--define arguments for the Vulkan headers this tree needs: none when the system's suffice;
    else newer ones in a private prefix (scripts/vulkan-headers.sh, cached across sessions).
    Trees from late 2026 use vk::LayerSettingEXT, which Debian 12's 1.3.239 headers lack."""
    source = (tree / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp").read_text(errors="replace")
    stock = Path("/usr/include/vulkan/vulkan_structs.hpp")
    if "LayerSettingEXT" not in source or "struct LayerSettingEXT" in stock.read_text(errors="replace"):
        return []
    script = TESTS.parent / "scripts" / "vulkan-headers.sh"
    done = subprocess.run([str(script), str(CACHE / "vulkan-headers")], capture_output=True, text=True)
    if done.returncode != 0:
        cannot_run(f"newer Vulkan headers could not be fetched: {done.stderr.strip()[-500:]}")
    return done.stdout.split()


@pytest.fixture(scope="session")
def vulkan_build(llama_source: Path) -> Iterator[VulkanBuild]:
    """`nativellm build --backend vulkan` on the software device, once per test session, shared by
    the integration and e2e tiers. Its own home (a second build would replace session_home's
    current one), at session_home's depth so ccache hits across sessions; no web UI (not under
    test here, and one npm build less). NATIVELLM_VULKAN_BUILD_HOME=<home> borrows a build instead."""
    reason = vulkan_unavailable_reason()
    if reason:
        cannot_run(reason)
    borrowed = os.environ.get("NATIVELLM_VULKAN_BUILD_HOME")
    if borrowed:  # iterating on the tests: a NATIVELLM_HOME whose current build is a Vulkan build
        yield VulkanBuild(Path(borrowed), {"data": {}}, 0.0)
        return
    home = CACHE / "sessions" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    try:
        argv = ["build", "--backend", "vulkan", "--no-ui", "--source", str(llama_source)]
        res = nativellm(*argv, *vulkan_header_defines(llama_source), "--json", home=home)
        assert res.returncode == 0, f"vulkan build failed:\n{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
        print(f"\n[timing] vulkan build (compile + smoke test): {res.seconds:.1f}s")
        yield VulkanBuild(home, res.json(), res.seconds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
