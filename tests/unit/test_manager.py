"""One service-manager interface: the instance use cases (add, edit, rm, start, stop, restart, enable,
status, logs) go through it, whichever manager is behind it; systemd and launchd both implement it."""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

import pytest
from ggufs import write_gguf

from nativellm.errors import InstanceError
from nativellm.models.registry import add_model
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import ROUTER_CACHE, Resolved
from nativellm.serve.instances import InstanceOptions, Instances
from nativellm.serve.launchd import Launchctl, LaunchdManager
from nativellm.serve.manager import Installed, ServiceManager, SystemdManager, default_manager
from nativellm.serve.router import PRESET_NAME, router_argv
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec, spec_path, write_spec
from tests.unit.test_instances import _profile, make_paths
from tests.unit.test_launchd import TARGET, Recorder, _print, _recorded
from tests.unit.test_router import NEW


def _state(name: str, active: str, pid: int = 0, enabled: bool = False) -> UnitState:
    return UnitState(name, "loaded", active, "running" if active == "active" else "dead", "success", pid, 0,
                     None, None, 0, False, "enabled" if enabled else "disabled")  # fmt: skip


class FakeManager:
    """A ServiceManager that records what the use cases ask of it."""

    kind = "fake"
    files_only = False

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

    def install(self, spec: InstanceSpec, r: Resolved, *, check: bool = True) -> Installed:
        self.calls.append(("install", spec.name, check))
        return Installed((f"svc-{spec.name}.def",), True)

    def rendered(self, spec: InstanceSpec, r: Resolved) -> dict[str, str]:
        return {f"svc-{spec.name}.def": spec.name}

    def reload(self) -> None:
        self.calls.append(("reload",))

    def uninstall(self, name: str, *, last: bool) -> tuple[str, ...]:
        self.calls.append(("uninstall", name, last))
        return (f"svc-{name}.def",)


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


# -- add / edit / rm through the manager ---------------------------------------------------------
@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A store with a current build and three registered models (tests/unit/test_router.py's)."""
    p = make_paths(tmp_path, monkeypatch)
    for name, layers in (("q4", 2), ("q8", 4), ("chat", 3)):
        add_model(p, write_gguf(tmp_path / "models" / f"{name}.gguf", n_layer=layers), name=name)
    return p


def _mac(store: Paths, tmp_path: Path, rec: Recorder) -> tuple[Instances, LaunchdManager]:
    binary = tmp_path / "launchctl"
    binary.write_text("")
    lc = Launchctl(Scope.USER, uid=501, runner=rec, binary=str(binary))
    mgr = LaunchdManager(store, lc, home=tmp_path / "alice", health=lambda url: "ok", interval=0)
    inst = Instances(store, None, profile=_profile, port_in_use=lambda p, h: False, server_flags=lambda b: NEW,
                     manager=mgr)  # fmt: skip
    return inst, mgr


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _job(mgr: LaunchdManager, name: str) -> dict[str, Any]:
    job: dict[str, Any] = plistlib.loads(mgr.plist_path(name).read_bytes())
    return job


def test_add_edit_rm_on_launchd_write_the_plist_not_systemd_units(store: Paths, tmp_path: Path) -> None:
    rec = Recorder({f"print {TARGET}": [_recorded("print_not_loaded_reconstructed.json")]})
    inst, mgr = _mac(store, tmp_path, rec)
    out = inst.add("q4", InstanceOptions(model="q4", gpu_layers=0))
    plist = mgr.plist_path("q4")
    assert out.changed and out.files == (str(plist),)
    assert out.message.startswith("instance q4 added: org.nativellm.llama.q4 on port 8080")
    assert rec.ops() == ["print gui/501"]  # the domain is checked before anything is written
    argv = _job(mgr, "q4")["ProgramArguments"]
    assert (
        argv[argv.index("--model") + 1] == str(tmp_path / "models" / "q4.gguf")
        and not _job(mgr, "q4")["RunAtLoad"]
    )
    assert not store.units.exists()  # no systemd unit, template or health helper copy
    assert not (store.home / "libexec").exists()
    assert not inst.add("q4", InstanceOptions(model="q4", gpu_layers=0)).changed  # rerun: unchanged

    rec.calls.clear()
    out = inst.edit("q4", InstanceOptions(port=8091, enable=True))
    assert out.changed and not out.restarted and out.files == (str(plist),)
    job = _job(mgr, "q4")
    assert job["ProgramArguments"][job["ProgramArguments"].index("--port") + 1] == "8091" and job["RunAtLoad"]
    # enabled at login (launchctl enable), asked whether it runs (not loaded: no restart)
    assert rec.ops() == ["print gui/501", f"enable {TARGET}", f"print {TARGET}"]

    rec.calls.clear()
    out = inst.remove("q4")
    assert out.files == (str(plist),) and rec.ops() == [f"bootout {TARGET}"]
    assert not plist.exists() and not spec_path(store.config, "q4").exists()


def test_edit_on_launchd_restarts_a_running_instance_with_its_new_plist(store: Paths, tmp_path: Path) -> None:
    rec = Recorder({f"print {TARGET}": [_print("print_running_reconstructed.txt")]})
    inst, mgr = _mac(store, tmp_path, rec)
    inst.add("q4", InstanceOptions(model="q4", gpu_layers=0))
    rec.calls.clear()
    assert inst.edit("q4", InstanceOptions(ctx=4096)).restarted
    assert rec.ops() == ["print gui/501", f"print {TARGET}", f"print {TARGET}", f"bootout {TARGET}",
                         f"bootstrap gui/501 {mgr.plist_path('q4')}", f"kickstart {TARGET}",
                         f"print {TARGET}"]  # fmt: skip


def test_a_router_on_launchd_gets_the_systemd_units_preset_and_argv(store: Paths, tmp_path: Path) -> None:
    rec = Recorder({})
    inst, mgr = _mac(store, tmp_path, rec)
    opts = InstanceOptions(models=("q4", "q8", "chat"), models_max=2, load_on_start=("chat",), ctx=2048,
                           model_settings={"q8": {"ctx-size": "8192", "n-gpu-layers": "0"}})  # fmt: skip
    out = inst.add("multi", opts)
    preset = store.home / "launchd" / "multi" / PRESET_NAME
    assert out.files == (str(preset), str(mgr.plist_path("multi")))
    # The same preset text as the systemd unit's (tests/fixtures/units/router-multi.ini, test_router.py)
    root = str(store.home.parents[1])
    golden = (Path(__file__).parents[1] / "fixtures" / "units" / "router-multi.ini").read_text()
    assert preset.read_text().replace(root, "/ROOT") == golden
    argv = _job(mgr, "multi")["ProgramArguments"]
    assert argv == router_argv(
        inst.get("multi"), store.current / "bin" / "llama-server", preset, api_key_path=None
    )
    assert argv[argv.index("--models-preset") + 1] == str(preset)
    assert _job(mgr, "multi")["EnvironmentVariables"] == {"LLAMA_CACHE": ROUTER_CACHE}
    # `instance show` shows the plist and the preset; `nativellm run` runs the job's argv, preset rewritten
    assert inst.rendered("multi") == {str(mgr.plist_path("multi")): mgr.plist_path("multi").read_text(),
                                      str(preset): preset.read_text()}  # fmt: skip
    text = preset.read_text()
    preset.unlink()
    assert inst.foreground_argv("multi") == argv and preset.read_text() == text

    out = inst.remove("multi")
    assert set(out.files) == {str(preset), str(mgr.plist_path("multi"))}
    assert not preset.parent.exists() and not mgr.plist_path("multi").exists()


def test_add_and_rm_on_launchd_change_nothing_when_launchctl_fails(store: Paths, tmp_path: Path) -> None:
    rec = Recorder({"print gui/501": [_recorded("print_domain_missing_reconstructed.json")]})
    inst, _ = _mac(store, tmp_path, rec)
    before = _tree(tmp_path)
    with pytest.raises(InstanceError) as exc:
        inst.add("q4", InstanceOptions(model="q4", gpu_layers=0))
    assert (
        exc.value.exit_code == 10
        and "no such launchd domain" in exc.value.message
        and "log in" in exc.value.hint
    )
    assert _tree(tmp_path) == before  # no spec, no plist, no log folder

    rec = Recorder({"bootout": [_recorded("bootout_bad_domain_reconstructed.json")]})
    inst, _ = _mac(store, tmp_path, rec)
    inst.add("q4", InstanceOptions(model="q4", gpu_layers=0))
    before = _tree(tmp_path)
    with pytest.raises(InstanceError) as exc:
        inst.remove("q4")
    assert "launchctl bootout" in exc.value.message and "log in" in exc.value.hint
    assert _tree(tmp_path) == before and inst.get("q4").name == "q4"  # the spec and the plist stay


def test_add_edit_rm_on_systemd_without_a_bus_write_the_units_through_the_manager(store: Paths) -> None:
    """--no-systemd: SystemdManager(None) writes the units (files only) and tells no manager."""
    inst = Instances(
        store, None, profile=_profile, port_in_use=lambda p, h: False, server_flags=lambda b: NEW
    )
    assert isinstance(inst.manager, SystemdManager) and inst.manager.files_only
    out = inst.add("q4", InstanceOptions(model="q4", gpu_layers=0, enable=True))
    assert str(store.units / "llama@q4.service.d" / "50-nativellm.conf") in out.files
    assert str(store.home / "libexec" / "nativellm-healthcheck.py") in out.files
    assert out.message.startswith("instance q4 added: llama@q4.service on port")
    inst.remove("q4")
    assert not [p for p in store.units.rglob("*") if p.is_file()]  # the last instance takes the templates


def test_add_edit_rm_ask_the_injected_manager_only(store: Paths) -> None:
    fake = FakeManager()
    inst = Instances(store, None, profile=_profile, port_in_use=lambda p, h: False, server_flags=lambda b: NEW,
                     manager=fake)  # fmt: skip
    assert inst.add("q4", InstanceOptions(model="q4", enable=True)).message.startswith(
        "instance q4 added: svc-q4"
    )
    inst.add("q8", InstanceOptions(model="q8"))
    fake.active = True
    assert inst.edit("q4", InstanceOptions(ctx=4096, enable=False)).restarted
    assert inst.remove("q4").files == ("svc-q4.def",)
    inst.remove("q8")
    assert fake.calls == [("install", "q4", True), ("reload",), ("enable", "q4"),
                          ("install", "q8", True), ("reload",),
                          ("install", "q4", True), ("reload",), ("disable", "q4"), ("start", "q4", True),
                          ("uninstall", "q4", False), ("uninstall", "q8", True)]  # fmt: skip
    assert not store.units.exists() and not inst.specs()


def test_doctor_checks_the_plist_of_a_launchd_instance(store: Paths, tmp_path: Path) -> None:
    from nativellm.ops.doctor import check_instances

    inst, mgr = _mac(store, tmp_path, Recorder({}))
    inst.add("q4", InstanceOptions(model="q4", gpu_layers=0))
    kw: dict[str, Any] = {"linger": lambda: True, "port_in_use": lambda p, h: False}
    assert not [f for f in check_instances(inst, **kw) if not f.ok]
    mgr.plist_path("q4").write_text(mgr.plist_path("q4").read_text().replace("8080", "9090"))
    (bad,) = [f for f in check_instances(inst, **kw) if not f.ok]
    assert f"{mgr.plist_path('q4')} was edited by hand" in bad.message
