"""Where nativellm keeps its state: user scope (XDG), system scope (FHS), or NATIVELLM_HOME."""

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
    def lock(self) -> Path:
        return self.home / "build.lock"


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def resolve_paths(scope: Scope = Scope.USER) -> Paths:
    """NATIVELLM_HOME puts everything under one directory (tests, containers).

    NATIVELLM_UNIT_DIR overrides only the unit directory. Tests that drive a real systemd
    set both: state under NATIVELLM_HOME, units where that systemd reads them
    (`~/.config/systemd/user` or `/etc/systemd/system` inside the sandbox).
    """
    override = os.environ.get("NATIVELLM_HOME")
    unit_dir = os.environ.get("NATIVELLM_UNIT_DIR")
    if override:
        root = Path(override)
        paths = Paths(scope, root / "data", root / "config", root / "systemd")
    elif scope is Scope.SYSTEM:
        paths = Paths(scope, Path("/var/lib/nativellm"), Path("/etc/nativellm"), Path("/etc/systemd/system"))
    else:
        paths = Paths(
            scope,
            _xdg("XDG_DATA_HOME", ".local/share") / "nativellm",
            _xdg("XDG_CONFIG_HOME", ".config") / "nativellm",
            _xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user",
        )
    if unit_dir:
        paths = Paths(paths.scope, paths.home, paths.config, Path(unit_dir))
    return paths


def package_data(name: str) -> Path:
    """Locate shipped data (`cpp`, `systemd`): installed wheel first, then the source checkout."""
    installed = Path(str(resources.files("nativellm"))) / "_data" / name
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise NotFoundError(f"nativellm's {name}/ data is missing", "reinstall nativellm")
