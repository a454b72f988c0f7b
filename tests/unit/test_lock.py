"""The environment the suite runs in is the locked set (constraints.txt), unless it says otherwise."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[2] / "constraints.txt"


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions only: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_dependency_is_locked() -> None:
    """Each runtime and test requirement of pyproject.toml has a pin."""
    requires = metadata.requires("nativellm") or []
    names = {re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]).lower() for r in requires}
    names -= {"tomli"}  # Python < 3.11 only
    missing = sorted(names - set(locked()))
    assert not missing, f"not pinned in constraints.txt: {missing}; run scripts/lock.sh"


def test_the_installed_set_is_the_locked_set() -> None:
    if os.environ.get("NATIVELLM_UNLOCKED"):
        pytest.skip("scripts/check-latest.sh runs the newest releases on purpose")
    wrong = {}
    for name, version in locked().items():
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            got = "not installed"
        if got != version:
            wrong[name] = f"{got} (locked {version})"
    assert not wrong, f"installed versions differ from constraints.txt: {wrong}; run scripts/bootstrap.sh"
