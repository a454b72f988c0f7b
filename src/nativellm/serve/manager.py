"""One service-manager interface for the instance use cases: systemd on Linux, launchd on macOS.

`ServiceManager` is what serve/instances.py asks of a service manager by instance name: is it there,
(re)start and wait, stop, state, enable/disable at boot or login, where its logs are. Each manager
names its services its own way (`llama@NAME.service`, `org.nativellm.llama.NAME`) and reports state
as a `UnitState`, the shape `status` shows. `SystemdManager` is a thin adapter over serve/systemd.py;
`LaunchdManager` lives in serve/launchd.py. `default_manager` picks by platform; tests inject one.

Left to do: `instance add/edit/rm` and `refresh_units` still write systemd units and call serve/systemd.py
directly (templates, drop-ins, daemon-reload, llama.target). Moving them here means an
`install(spec, resolved)` / `remove(name)` pair on this interface (LaunchdManager has both already)
with the systemd side taking over instances.py's `_files`/`_apply`/daemon-reload steps.
"""

from __future__ import annotations

import sys
from typing import Protocol

from nativellm import run
from nativellm.errors import InstanceError
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import unit_name
from nativellm.serve.systemd import Systemd, UnitState, require_reachable
from nativellm.specs import InstanceSpec


class ServiceManager(Protocol):
    kind: str  # "systemd" | "launchd"

    def service_name(self, name: str) -> str: ...

    def available(self) -> bool: ...

    def require_reachable(self, hint: str) -> ServiceManager:
        """Self, or an InstanceError that says the manager is not there and what to do (`hint`)."""
        ...

    def start(self, spec: InstanceSpec, *, restart: bool, timeout: float) -> UnitState:
        """(Re)start and follow the service until it is ready, has failed for good, or `timeout`."""
        ...

    def stop(self, name: str) -> None:
        """Stop and wait until it is down."""
        ...

    def state(self, name: str) -> UnitState: ...

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Start at boot (system) or login (user), or not."""
        ...

    def is_enabled(self, name: str) -> bool: ...

    def logs_argv(self, name: str, *, follow: bool = False, lines: int = 50) -> list[str]: ...

    def recent_log(self, name: str, lines: int = 200) -> str | None:
        """The server's latest log lines as plain text; None when they cannot be read."""
        ...


class SystemdManager:
    """serve/systemd.py behind the ServiceManager interface; `systemd=None`: no manager (files only)."""

    kind = "systemd"

    def __init__(self, paths: Paths, systemd: Systemd | None) -> None:
        self.paths = paths
        self.systemd = systemd

    def service_name(self, name: str) -> str:
        return unit_name(name)

    def available(self) -> bool:
        return self.systemd is not None and self.systemd.available()

    def _sd(self) -> Systemd:
        if self.systemd is None:
            raise InstanceError("this command needs systemd", "use `nativellm run NAME` without systemd")
        return self.systemd

    def require_reachable(self, hint: str) -> SystemdManager:
        require_reachable(self._sd(), hint)
        return self

    def start(self, spec: InstanceSpec, *, restart: bool, timeout: float) -> UnitState:
        return self._sd().start_and_wait(unit_name(spec.name), restart=restart, timeout=timeout)

    def stop(self, name: str) -> None:
        self._sd().stop(unit_name(name))
        self._sd().wait_settled(unit_name(name), timeout=120)

    def state(self, name: str) -> UnitState:
        return self._sd().state(unit_name(name))

    def set_enabled(self, name: str, enabled: bool) -> None:
        sd = self._sd()
        (sd.enable if enabled else sd.disable)([unit_name(name), *(["llama.target"] if enabled else [])])

    def is_enabled(self, name: str) -> bool:
        return self.state(name).unit_file_state == "enabled"

    def logs_argv(self, name: str, *, follow: bool = False, lines: int = 50) -> list[str]:
        unit = unit_name(name)
        match = ["--user-unit", unit] if self.paths.scope is Scope.USER else ["--unit", unit]
        return ["journalctl", "--no-pager", *match, "-n", str(lines), *(["-f"] if follow else [])]

    def recent_log(self, name: str, lines: int = 200) -> str | None:
        argv = [*self.logs_argv(name, lines=lines), "--identifier", f"llama@{name}", "-o", "cat"]
        res = run.probe(argv, timeout=10)
        return res.stdout if res is not None else None


def default_manager(paths: Paths, systemd: Systemd | None, platform: str = sys.platform) -> ServiceManager:
    """launchd on macOS, else systemd (`systemd=None`: files only, lifecycle commands refused)."""
    if platform == "darwin":
        from nativellm.serve.launchd import LaunchdManager

        return LaunchdManager(paths)
    return SystemdManager(paths, systemd)
