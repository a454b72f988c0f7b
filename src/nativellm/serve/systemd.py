"""The only importer of pystemd: a small typed adapter over systemd's D-Bus API.

Everything it returns is a frozen dataclass of Python values (never pystemd's bytes). The
bus address is injectable so tests can drive a systemd booted in namespaces
(`unix:path=/proc/<pid>/root/run/user/0/bus`); `NATIVELLM_BUS_ADDRESS` does the same for a
CLI run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm.errors import InstanceError
from nativellm.paths import Scope

_NO_SYSTEMD_HINT = "run the instance in the foreground instead: `nativellm run NAME`"
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class UnitState:
    """What systemd says about one unit right now."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str
    main_pid: int
    n_restarts: int
    memory_bytes: int | None
    cpu_ns: int | None
    active_since_us: int  # CLOCK_REALTIME microseconds; 0 when never active
    job_pending: bool
    unit_file_state: str
    start_limit_burst: int = 0

    @property
    def running(self) -> bool:
        """Up, or on its way up or reloading: the one definition of "the unit is running"."""
        return self.active_state in ("active", "activating", "reloading")

    @property
    def stopped(self) -> bool:
        return self.active_state in ("inactive", "failed")

    @property
    def start_limit_hit(self) -> bool:
        """Failed after as many automatic restarts as the start limit allows.

        systemd 252 keeps the last attempt's Result (exit-code, signal...) rather than
        reporting start-limit-hit when an automatic restart hits the limit.
        """
        if self.active_state != "failed":
            return False
        return self.result == "start-limit-hit" or (
            self.start_limit_burst > 0 and self.n_restarts >= self.start_limit_burst
        )

    @property
    def uptime_s(self) -> float | None:
        if self.active_state != "active" or not self.active_since_us:
            return None
        return max(0.0, time.time() - self.active_since_us / 1e6)


def default_bus_address(scope: Scope) -> str:
    explicit = os.environ.get("NATIVELLM_BUS_ADDRESS")
    if explicit:
        return explicit
    if scope is Scope.SYSTEM:
        return "unix:path=/run/dbus/system_bus_socket"
    session = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if session:
        return session
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix:path={runtime}/bus"


def _socket_of(address: str) -> Path | None:
    for part in address.split(";")[0].split(":", 1)[-1].split(","):
        if part.startswith("path="):
            return Path(part[5:])
    return None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    number = int(value)
    return None if number == _UINT64_MAX else number


class Systemd:
    """One connection's worth of systemd operations for a scope (user or system manager)."""

    def __init__(self, scope: Scope, address: str | None = None) -> None:
        self.scope = scope
        self.address = address or default_bus_address(scope)

    @contextmanager
    def _bus(self) -> Iterator[Any]:
        from pystemd.dbuslib import DBusAddress

        sock = _socket_of(self.address)
        if sock is not None and not sock.exists():
            what = "user" if self.scope is Scope.USER else "system"
            raise InstanceError(
                f"no systemd {what} bus at {sock}: is systemd running here?", _NO_SYSTEMD_HINT
            )
        try:
            with DBusAddress(self.address.encode()) as bus:
                yield bus
        except OSError as exc:
            raise InstanceError(f"cannot reach systemd at {self.address}: {exc}", _NO_SYSTEMD_HINT) from exc

    @contextmanager
    def _manager(self) -> Iterator[Any]:
        from pystemd.systemd1 import Manager

        with self._bus() as bus:
            manager = Manager(bus=bus)
            manager.load()
            yield manager

    def available(self) -> bool:
        try:
            with self._manager() as m:
                return bool(m.Manager.Version)
        except Exception:
            return False

    def unit_path(self) -> tuple[Path, ...]:
        """The directories this manager loads unit files from, in its own order."""
        with self._manager() as m:
            return tuple(Path(_s(p)) for p in m.Manager.UnitPath)

    def daemon_reload(self) -> None:
        with self._manager() as m:
            m.Manager.Reload()

    def _job(self, method: str, unit: str, mode: str = "replace") -> None:
        with self._manager() as m:
            getattr(m.Manager, method)(unit.encode(), mode.encode())

    def start(self, unit: str) -> None:
        self._job("StartUnit", unit)

    def stop(self, unit: str) -> None:
        self._job("StopUnit", unit)

    def restart(self, unit: str) -> None:
        self._job("RestartUnit", unit)

    def reset_failed(self, unit: str) -> None:
        with self._manager() as m:
            try:
                m.Manager.ResetFailedUnit(unit.encode())
            except Exception:  # not loaded / not failed: nothing to reset
                pass

    def enable(self, unit_files: Sequence[str]) -> None:
        """Enable (symlinks per [Install]) and reload, so the new wants take effect."""
        with self._manager() as m:
            m.Manager.EnableUnitFiles([u.encode() for u in unit_files], False, True)
            m.Manager.Reload()

    def disable(self, unit_files: Sequence[str]) -> None:
        with self._manager() as m:
            m.Manager.DisableUnitFiles([u.encode() for u in unit_files], False)
            m.Manager.Reload()

    def state(self, unit: str) -> UnitState:
        from pystemd.systemd1 import Unit

        with self._bus() as bus:
            u = Unit(unit.encode(), bus=bus)
            u.load()
            props = u.Unit
            is_service = unit.endswith(".service")
            svc = u.Service if is_service else None
            job = props.Job
            return UnitState(
                name=unit,
                load_state=_s(props.LoadState),
                active_state=_s(props.ActiveState),
                sub_state=_s(props.SubState),
                result=_s(svc.Result) if svc is not None else "",
                main_pid=int(svc.MainPID) if svc is not None else 0,
                n_restarts=int(svc.NRestarts) if svc is not None else 0,
                memory_bytes=_opt_int(svc.MemoryCurrent) if svc is not None else None,
                cpu_ns=_opt_int(svc.CPUUsageNSec) if svc is not None else None,
                active_since_us=int(props.ActiveEnterTimestamp),
                job_pending=bool(job and int(job[0]) != 0),
                unit_file_state=_s(props.UnitFileState),
                start_limit_burst=int(props.StartLimitBurst),
            )

    def start_and_wait(
        self,
        unit: str,
        *,
        restart: bool,
        timeout: float,
        ready: Callable[[UnitState], bool] | None = None,
        interval: float = 0.2,
    ) -> UnitState:
        """Clear a failed state, (re)start, and follow the unit until it is active and `ready`, has
        failed for good, or `timeout` passes; returns the state it ended in.

        A start job ends at the first failed attempt while Restart=on-failure tries again, so an
        "activating" unit (auto-restart included) is followed until systemd settles it.
        """
        self.reset_failed(unit)
        (self.restart if restart else self.start)(unit)
        deadline = time.monotonic() + timeout
        st = self.wait_settled(unit, timeout=timeout)
        while time.monotonic() < deadline:
            if st.active_state == "active" and (ready is None or ready(st)):
                break
            if st.active_state not in ("active", "activating", "reloading"):
                break
            time.sleep(interval)
            st = self.wait_settled(unit, timeout=max(1.0, deadline - time.monotonic()))
        return st

    def wait_settled(self, unit: str, timeout: float, interval: float = 0.1) -> UnitState:
        """Wait until no job is pending on unit (a start job ends after ExecStartPost=)."""
        deadline = time.monotonic() + timeout
        st = self.state(unit)
        while st.job_pending and time.monotonic() < deadline:
            time.sleep(interval)
            st = self.state(unit)
        return st


def reachable(sd: Systemd | None) -> Systemd | None:
    """`sd` when its manager answers on the bus, else None: the one test of "is systemd there"."""
    return sd if sd is not None and sd.available() else None


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def require_reads_units_from(sd: Systemd, unit_dir: Path) -> None:
    """Refuse a unit directory the manager never loads from (asked of the manager, not guessed):
    units written there are "not found" by `systemctl start`."""
    searched = sd.unit_path()
    wanted = Path(os.path.abspath(unit_dir))
    if any(Path(os.path.abspath(d)) == wanted or _same_dir(d, wanted) for d in searched):
        return
    manager = "user" if sd.scope is Scope.USER else "system"
    usual = next((str(d) for d in searched if str(d).endswith(("/.config/systemd/user", "/etc/systemd/system"))),
                 str(searched[0]) if searched else "")  # fmt: skip
    raise InstanceError(
        f"systemd's {manager} manager does not read units from {unit_dir}; nothing was written",
        f"unset NATIVELLM_UNIT_DIR (units then go to {usual})" if usual else "unset NATIVELLM_UNIT_DIR",
    )


def require_reachable(sd: Systemd, hint: str) -> Systemd:
    """`sd`, or an InstanceError that names the bus and says what to do instead."""
    if not sd.available():
        raise InstanceError(f"systemd is not reachable on {sd.address}", hint)
    return sd
