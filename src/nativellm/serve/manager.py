"""One service-manager interface for the instance use cases: systemd on Linux, launchd on macOS.

`ServiceManager` is what serve/instances.py asks of a service manager by instance name: install the
service's files for a spec (and remove them), make the manager read them again, (re)start and wait,
stop, state, enable/disable at boot or login, where its logs are. Each manager names its services its
own way (`llama@NAME.service`, `org.nativellm.llama.NAME`), writes its own files (systemd: the shared
templates, the instance's drop-ins, a router's preset and the health helper; launchd: one plist and a
router's preset) and reports state as a `UnitState`, the shape `status` shows. `SystemdManager` is a
thin adapter over serve/systemd.py and serve/dropins.py; `LaunchdManager` lives in serve/launchd.py.
`default_manager` picks by platform; tests inject one. The use cases do not branch on the OS.
The interface itself (`ServiceManager`, `Installed`) is in serve/service.py, a leaf both managers
import, and is re-exported here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nativellm import run
from nativellm.errors import InstanceError
from nativellm.paths import Paths, Scope
from nativellm.serve import healthcheck
from nativellm.serve.dropins import (
    DROPIN_NAME,
    Resolved,
    render_instance_files,
    template_files,
    unit_name,
    watchdog_unit,
)
from nativellm.serve.router import PRESET_NAME
from nativellm.serve.service import Installed as Installed
from nativellm.serve.service import ServiceManager as ServiceManager
from nativellm.serve.systemd import Systemd, UnitState, require_reachable, require_reads_units_from
from nativellm.serve.units import write_unit
from nativellm.specs import InstanceSpec

HEALTHCHECK = "libexec/nativellm-healthcheck.py"  # under the data home; written with the units
# What a manager that is not there says when `instance add/edit/rm` would change its files.
WRITE_HINT = "nothing was written; on a machine without systemd use `instance add --no-systemd` and `nativellm run NAME`"


class SystemdManager:
    """serve/systemd.py behind the ServiceManager interface; `systemd=None`: no manager (files only)."""

    kind = "systemd"

    def __init__(self, paths: Paths, systemd: Systemd | None) -> None:
        self.paths = paths
        self.systemd = systemd

    @property
    def files_only(self) -> bool:
        return self.systemd is None

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

    def definition_files(self, spec: InstanceSpec, r: Resolved) -> dict[Path, str]:
        """The shared templates, the health helper's copy, the instance's drop-ins and a router's preset."""
        files = {self.paths.units / rel: text for rel, text in template_files().items()}
        files[self.paths.home / HEALTHCHECK] = Path(healthcheck.__file__).read_text(encoding="utf-8")
        files.update({self.paths.units / rel: text for rel, text in render_instance_files(spec, r).items()})
        return files

    def rendered(self, spec: InstanceSpec, r: Resolved) -> dict[str, str]:
        return render_instance_files(spec, r)

    def _writable(self, *, adds_units: bool) -> Systemd | None:
        """The reachable manager that will read what is written (None: files only), else an error."""
        if self.systemd is None:
            return None
        sd = require_reachable(self.systemd, WRITE_HINT)
        if adds_units:
            require_reads_units_from(sd, self.paths.units)
        return sd

    def install(self, spec: InstanceSpec, r: Resolved, *, check: bool = True) -> Installed:
        files = self.definition_files(spec, r)
        if check:
            self._writable(adds_units=True)
        written = tuple(str(p) for p, text in files.items() if write_unit(p, text))
        ours = (unit_name(spec.name), watchdog_unit(spec.name), "@.")
        return Installed(written, any(u in w for w in written for u in ours))

    def reload(self) -> None:
        if self.systemd is not None:
            self.systemd.daemon_reload()

    def uninstall(self, name: str, *, last: bool) -> tuple[str, ...]:
        sd = self._writable(adds_units=False)  # a unit in the wrong place can still go
        if sd is not None:
            for unit in (f"llama-watchdog@{name}.timer", unit_name(name)):
                sd.stop(unit)
            sd.wait_settled(unit_name(name), timeout=60)
            sd.disable([unit_name(name)])
        removed = []
        for unit in (unit_name(name), watchdog_unit(name)):
            dropin_dir = self.paths.units / f"{unit}.d"
            for generated in (DROPIN_NAME, PRESET_NAME):
                if (dropin_dir / generated).exists():
                    (dropin_dir / generated).unlink()
                    removed.append(str(dropin_dir / generated))
            if dropin_dir.is_dir() and not any(dropin_dir.iterdir()):
                dropin_dir.rmdir()
        if last:
            # The last instance takes the shared templates with it: nothing stays behind.
            for tmpl in template_files():
                path = self.paths.units / tmpl
                if path.exists():
                    path.unlink()
                    removed.append(str(path))
            wants = self.paths.units / "default.target.wants" / "llama.target"
            if sd is not None and wants.is_symlink():
                sd.disable(["llama.target"])
        if sd is not None:
            sd.daemon_reload()
            for unit in (unit_name(name), watchdog_unit(name)):
                sd.reset_failed(unit)
        return tuple(removed)


def default_manager(paths: Paths, systemd: Systemd | None, platform: str = sys.platform) -> ServiceManager:
    """launchd on macOS, else systemd (`systemd=None`: files only, lifecycle commands refused)."""
    if platform == "darwin":
        from nativellm.serve.launchd import LaunchdManager

        return LaunchdManager(paths)
    return SystemdManager(paths, systemd)
