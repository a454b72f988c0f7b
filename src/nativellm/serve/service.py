"""The service-manager interface the instance use cases talk to (serve/manager.py has the systemd
adapter and picks one; serve/launchd.py has the launchd one). A leaf: both managers import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nativellm.serve.dropins import Resolved
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec


@dataclass(frozen=True)
class Installed:
    """What `ServiceManager.install` wrote, and whether the service's own definition changed among it
    (a running server then needs a restart to run it)."""

    written: tuple[str, ...]
    service_changed: bool


class ServiceManager(Protocol):
    kind: str  # "systemd" | "launchd"

    @property
    def files_only(self) -> bool:
        """True when there is no manager to tell (`--no-systemd`): files are written, nothing loaded."""
        ...

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

    def install(self, spec: InstanceSpec, r: Resolved, *, check: bool = True) -> Installed:
        """Render the service's files for `spec` and write those that differ. With `check` (add, edit)
        the manager is first asked whether it is there and will read them: nothing is written when
        not. Without it (re-rendering after `current` moved) they are only written."""
        ...

    def rendered(self, spec: InstanceSpec, r: Resolved) -> dict[str, str]:
        """The instance's own files as `install` writes them: path relative to the unit dir (or
        absolute) -> text. Pure."""
        ...

    def reload(self) -> None:
        """Have the manager read the files `install` changed."""
        ...

    def uninstall(self, name: str, *, last: bool) -> tuple[str, ...]:
        """Stop and disable the service and remove its files (`last`: the last instance, the shared
        files too). The removed paths."""
        ...
