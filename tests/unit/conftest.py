"""Unit tier fence: nothing here may start a process or open a bus."""

from __future__ import annotations

import subprocess
from typing import Any, NoReturn

import pytest


def _forbidden(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError(f"unit tests must not start processes: {args[:1]}")


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _forbidden)
    monkeypatch.setattr(subprocess, "run", _forbidden)
    try:
        import pystemd.dbuslib
    except ImportError:
        return
    monkeypatch.setattr(pystemd.dbuslib, "DBus", _forbidden)
    monkeypatch.setattr(pystemd.dbuslib, "DBusAddress", _forbidden)
