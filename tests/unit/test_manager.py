"""One service-manager interface: the instance use cases (start, stop, restart, enable, status, logs)
go through it, whichever manager is behind it; systemd and launchd both implement it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nativellm.errors import InstanceError
from nativellm.paths import Paths, Scope
from nativellm.serve.instances import Instances
from nativellm.serve.launchd import Launchctl, LaunchdManager
from nativellm.serve.manager import ServiceManager, SystemdManager, default_manager
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec, spec_path, write_spec
from tests.unit.test_launchd import TARGET, Recorder, _print, _recorded


def _state(name: str, active: str, pid: int = 0, enabled: bool = False) -> UnitState:
    return UnitState(name, "loaded", active, "running" if active == "active" else "dead", "success", pid, 0,
                     None, None, 0, False, "enabled" if enabled else "disabled")  # fmt: skip


class FakeManager:
    """A ServiceManager that records what the use cases ask of it."""

    kind = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.active = False
        self.enabled = False

    def service_name(self, name: str) -> str:
        return f"svc-{name}"

    def available(self) -> bool:
        return True

    def require_reachable(self, hint: str) -> FakeManager:
        return self

    def start(self, spec: InstanceSpec, *, restart: bool, timeout: float) -> UnitState:
        self.calls.append(("start", spec.name, restart))
        self.active = True
        return self.state(spec.name)

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.active = False

    def state(self, name: str) -> UnitState:
        return _state(self.service_name(name), "active" if self.active else "inactive", 7 if self.active else 0,
                      self.enabled)  # fmt: skip

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.calls.append(("enable" if enabled else "disable", name))
        self.enabled = enabled

    def is_enabled(self, name: str) -> bool:
        return self.enabled

    def logs_argv(self, name: str, *, follow: bool = False, lines: int = 50) -> list[str]:
        return ["show-logs", name, str(lines)]

    def recent_log(self, name: str, lines: int = 200) -> str | None:
        self.calls.append(("log", name))
        return "main: error: failed to load model\n"


def test_the_fake_and_both_real_managers_implement_the_protocol(tmp_path: Path) -> None:
    paths = Paths(Scope.USER, tmp_path, tmp_path, tmp_path)
    managers: list[ServiceManager] = [FakeManager(), SystemdManager(paths, None), LaunchdManager(paths)]
    assert [m.kind for m in managers] == ["fake", "systemd", "launchd"]


def test_default_manager_is_chosen_by_platform(tmp_path: Path) -> None:
    paths = Paths(Scope.USER, tmp_path, tmp_path, tmp_path)
    assert isinstance(default_manager(paths, None, platform="darwin"), LaunchdManager)
    assert isinstance(default_manager(paths, None, platform="linux"), SystemdManager)


@pytest.fixture()
def paths(tmp_path: Path) -> Paths:
    p = Paths(Scope.USER, tmp_path / "data", tmp_path / "config", tmp_path / "units")
    write_spec(p.config, InstanceSpec("q4", "m", 8080, gpu_layers=0))
    return p


def test_lifecycle_use_cases_go_through_the_injected_manager(paths: Paths) -> None:
    fake = FakeManager()
    inst = Instances(paths, None, manager=fake)  # no systemd at all
    assert inst.start("q4").message == "svc-q4 is ready at http://127.0.0.1:8080"
    assert inst.start("q4").changed is False  # already running: asked, not started again
    assert inst.restart("q4").restarted
    assert inst.stop("q4").message == "svc-q4 stopped"
    assert inst.set_enabled("q4", True).message == "svc-q4 enabled"
    assert inst.journal_argv("q4", lines=9) == ["show-logs", "q4", "9"]
    (row,) = inst.status("q4")
    assert row.unit is not None and row.unit.name == "svc-q4" and row.unit.unit_file_state == "enabled"
    assert inst.error_line("q4") == "main: error: failed to load model"
    # status reads the log of a stopped instance too (why it is down), then error_line does
    assert fake.calls == [("start", "q4", False), ("start", "q4", True), ("stop", "q4"), ("enable", "q4"),
                          ("log", "q4"), ("log", "q4")]  # fmt: skip


def test_without_a_manager_lifecycle_commands_are_refused(paths: Paths) -> None:
    with pytest.raises(InstanceError) as exc:
        Instances(paths, None).start("q4")  # Linux, --no-systemd: SystemdManager(None)
    assert "needs systemd" in exc.value.message and "nativellm run" in exc.value.hint


class FakeSystemd:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def available(self) -> bool:
        return True

    def start_and_wait(self, unit: str, *, restart: bool, timeout: float) -> UnitState:
        self.calls.append(("start_and_wait", unit, restart, timeout))
        return _state(unit, "active", 3)

    def stop(self, unit: str) -> None:
        self.calls.append(("stop", unit))

    def wait_settled(self, unit: str, timeout: float) -> UnitState:
        self.calls.append(("wait_settled", unit))
        return _state(unit, "inactive")

    def enable(self, units: list[str]) -> None:
        self.calls.append(("enable", *units))

    def disable(self, units: list[str]) -> None:
        self.calls.append(("disable", *units))

    def state(self, unit: str) -> UnitState:
        return _state(unit, "inactive", enabled=True)


def test_systemd_adapter_names_units_and_delegates(paths: Paths) -> None:
    sd = FakeSystemd()
    mgr = SystemdManager(paths, sd)  # type: ignore[arg-type]
    mgr.start(InstanceSpec("q4", "m", 8080), restart=True, timeout=9)
    mgr.stop("q4")
    mgr.set_enabled("q4", True)
    mgr.set_enabled("q4", False)
    assert mgr.is_enabled("q4")
    assert sd.calls == [("start_and_wait", "llama@q4.service", True, 9), ("stop", "llama@q4.service"),
                        ("wait_settled", "llama@q4.service"), ("enable", "llama@q4.service", "llama.target"),
                        ("disable", "llama@q4.service")]  # fmt: skip
    assert mgr.logs_argv("q4") == ["journalctl", "--no-pager", "--user-unit", "llama@q4.service", "-n", "50"]


def _launchd(paths: Paths, tmp_path: Path, rec: Recorder) -> LaunchdManager:
    binary = tmp_path / "launchctl"
    binary.write_text("")
    lc = Launchctl(Scope.USER, uid=501, runner=rec, binary=str(binary))
    mgr = LaunchdManager(paths, lc, home=tmp_path / "alice", health=lambda url: "ok", interval=0)
    mgr.dir.mkdir(parents=True)
    mgr.plist_path("q4").write_text("<plist/>")  # written by `instance add` (see test_launchd)
    return mgr


def test_instances_on_launchd_start_and_status(paths: Paths, tmp_path: Path) -> None:
    rec = Recorder({f"print {TARGET}": [_recorded("print_not_loaded_reconstructed.json"),
                                        _recorded("print_not_loaded_reconstructed.json"),
                                        _print("print_running_reconstructed.txt")]})  # fmt: skip
    inst = Instances(paths, None, manager=_launchd(paths, tmp_path, rec))
    out = inst.start("q4")
    assert out.changed and out.message.startswith("org.nativellm.llama.q4 is ready")
    (row,) = inst.status("q4")
    assert row.unit is not None and (row.unit.active_state, row.unit.main_pid) == ("active", 4242)


def test_instances_on_launchd_a_launchctl_failure_changes_nothing(paths: Paths, tmp_path: Path) -> None:
    rec = Recorder({f"print {TARGET}": [_recorded("print_not_loaded_reconstructed.json")],
                    "bootstrap": [_recorded("bootstrap_bad_domain_reconstructed.json")]})  # fmt: skip
    mgr = _launchd(paths, tmp_path, rec)
    inst = Instances(paths, None, manager=mgr)
    before = (spec_path(paths.config, "q4").read_bytes(), mgr.plist_path("q4").read_bytes())
    with pytest.raises(InstanceError) as exc:
        inst.start("q4")
    assert exc.value.exit_code == 10 and "no such launchd domain" in exc.value.message
    assert "log in" in exc.value.hint
    assert (spec_path(paths.config, "q4").read_bytes(), mgr.plist_path("q4").read_bytes()) == before
    assert not any(op.startswith("kickstart") for op in rec.ops())
