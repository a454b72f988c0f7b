"""Where nativellm keeps its state (XDG, FHS or NATIVELLM_HOME) and its units (NATIVELLM_UNIT_DIR)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nativellm.errors import NotFoundError


class Scope(str, enum.Enum):
    USER = "user"
    SYSTEM = "system"


@dataclass(frozen=True)
class Paths:
    """Every location nativellm writes to, for one scope."""

    scope: Scope
    home: Path  # data root: builds, sources, models
    config: Path  # instance specs
    units: Path  # systemd unit directory
    ui_cache_dir: Path | None = None  # NATIVELLM_UI_CACHE; None: <home>/ui-cache

    @property
    def builds(self) -> Path:
        return self.home / "builds"

    @property
    def current(self) -> Path:
        return self.home / "current"

    @property
    def sources(self) -> Path:
        return self.home / "sources"

    @property
    def work(self) -> Path:
        return self.home / "work"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def ui_cache(self) -> Path:
        """Built web UI assets, one directory per hash of a tree's UI sources (build/ui.py)."""
        return self.ui_cache_dir or self.home / "ui-cache"

    @property
    def lock(self) -> Path:
        return self.home / "build.lock"


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def _unit_dir(scope: Scope) -> Path:
    if scope is Scope.SYSTEM:
        return Path("/etc/systemd/system")
    return _xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user"


def resolve_paths(scope: Scope = Scope.USER) -> Paths:
    """Where state and units live; state and units move independently.

    NATIVELLM_HOME relocates the state only (`<home>/data`, `<home>/config`: builds, models,
    specs), for example onto a large disk. Units stay where the service manager reads them
    (`~/.config/systemd/user`, or `/etc/systemd/system` for --system), because systemd never
    looks anywhere else. NATIVELLM_UNIT_DIR is the one way to move units; `instance add` asks
    the manager whether it reads that directory before writing there. NATIVELLM_UI_CACHE moves the
    built web UI cache (default `<data>/ui-cache`), so several homes can share one npm build.
    """
    override = os.environ.get("NATIVELLM_HOME")
    unit_dir = os.environ.get("NATIVELLM_UNIT_DIR")
    units = Path(unit_dir) if unit_dir else _unit_dir(scope)
    ui_cache = os.environ.get("NATIVELLM_UI_CACHE")
    ui = Path(ui_cache) if ui_cache else None
    if override:
        root = Path(override)
        return Paths(scope, root / "data", root / "config", units, ui)
    if scope is Scope.SYSTEM:
        return Paths(scope, Path("/var/lib/nativellm"), Path("/etc/nativellm"), units, ui)
    return Paths(
        scope,
        _xdg("XDG_DATA_HOME", ".local/share") / "nativellm",
        _xdg("XDG_CONFIG_HOME", ".config") / "nativellm",
        units,
        ui,
    )


def package_data(name: str) -> Path:
    """Locate shipped data (`cpp`, `systemd`): installed wheel first, then the source checkout."""
    installed = Path(str(resources.files("nativellm"))) / "_data" / name
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise NotFoundError(f"nativellm's {name}/ data is missing", "reinstall nativellm")
