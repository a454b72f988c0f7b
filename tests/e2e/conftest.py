"""E2E tier: a real systemd (PID 1 of fresh namespaces over an overlay of /), DESIGN.md §6.

One sandbox per test session. The build (tests/integration's `auto_build`) and the demo model
are made on the host first, under `session_home` in ~/.cache, which the sandbox sees through
its overlay. nativellm itself then runs *inside* the sandbox (nsenter), exactly as a user
would, against the real user manager of user@0.service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.sandbox import Sandbox, find_unavailable_reason
from tests.helpers import CACHE, CliResult, borrow_build, cannot_run, nativellm

USER_UNIT_DIR = "/root/.config/systemd/user"
CHECKOUT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The README's quickstart runs first in this tier: it promises a clean machine, and its curl
    names port 8080, which later tests' instances may hold while their session sandbox lives."""
    slots = [i for i, item in enumerate(items) if "/e2e/" in str(item.fspath)]
    e2e = [items[i] for i in slots]
    e2e.sort(key=lambda item: 0 if item.fspath.basename == "test_quickstart.py" else 1)
    for i, item in zip(slots, e2e, strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def sandbox_reason() -> str | None:
    return find_unavailable_reason()


@contextmanager
def booted_sandbox(name: str, binds: list[Path]) -> Iterator[Sandbox]:
    """A fresh systemd sandbox with a running user manager, killed and removed on exit.

    The checkout and the interpreter's prefix are always shared: a CI clone (and its .venv) may
    live under /tmp, which is a fresh tmpfs inside the sandbox.
    """
    reason = find_unavailable_reason()
    if reason:
        cannot_run(f"no systemd sandbox: {reason}")
    workdir = CACHE / "sandboxes" / f"{name}{uuid.uuid4().hex[:8]}"
    try:
        shared = list(dict.fromkeys([*binds, CHECKOUT, Path(sys.prefix).resolve()]))
        sb = Sandbox.boot(workdir, binds=[b for b in shared if b != Path("/")])
        try:
            sb.start_user_manager()
            yield sb
        finally:
            sb.kill()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with booted_sandbox("", [CACHE]) as sb:
        yield sb


@dataclass
class InnerCli:
    """The nativellm CLI run inside the sandbox, with state under `home` and units in
    `unit_dir` (None: nativellm's default, which is where the user manager reads them)."""

    sb: Sandbox
    home: Path
    unit_dir: str | None = USER_UNIT_DIR

    def __call__(
        self, *args: str, check: bool = False, timeout: float = 600, extra_env: dict[str, str] | None = None
    ) -> CliResult:
        env = {
            "NATIVELLM_HOME": str(self.home),
            **({"NATIVELLM_UNIT_DIR": self.unit_dir} if self.unit_dir else {}),
            "PYTHONPATH": str(CHECKOUT / "src"),
            **(extra_env or {}),
        }
        res = self.sb.exec(
            [sys.executable, "-m", "nativellm", *args],
            env=env,
            check=False,
            timeout=timeout,
            cwd=str(CHECKOUT),
        )
        out = CliResult(res.returncode, res.stdout, res.stderr, 0.0)
        if check:
            assert res.returncode == 0, (
                f"nativellm {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
            )
        return out

    def json(
        self, *args: str, timeout: float = 600, extra_env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        res = self(*args, "--json", timeout=timeout, extra_env=extra_env)
        assert res.returncode == 0, (
            f"nativellm {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc


@pytest.fixture(scope="session")
def demo_home(request: pytest.FixtureRequest, session_home: Path) -> Path:
    """session_home with a smoke-tested current build and the `demo` model registered.

    NATIVELLM_E2E_BUILD_HOME=<a NATIVELLM_HOME with a current build> borrows that build
    instead of running the session's auto build (for quick iterations on this tier).
    """
    borrowed = os.environ.get("NATIVELLM_E2E_BUILD_HOME")
    if borrowed:
        borrow_build(Path(borrowed), session_home)
    else:
        request.getfixturevalue("auto_build")
    res = nativellm("model", "demo", "--json", home=session_home, timeout=600)
    assert res.returncode == 0, res.stderr
    return session_home


@pytest.fixture(scope="session")
def cli(demo_home: Path, sandbox: Sandbox) -> InnerCli:
    return InnerCli(sandbox, demo_home)


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """What a controller hands its fleet, made by the script users run (scripts/wheelhouse.sh):
    nativellm and every dependency as wheels at the locked versions, plus pystemd's sdist and
    its build requirements, so hosts install offline."""
    d = CACHE / "wheelhouse" / uuid.uuid4().hex[:8]
    subprocess.run([str(CHECKOUT / "scripts" / "wheelhouse.sh"), str(d)], check=True,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)  # fmt: skip
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ansible_installed() -> None:
    """The Ansible tests need ansible-playbook beside this interpreter (the `test` extra)."""
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        cannot_run("ansible-core is not installed (pip install -e '.[test]')")
