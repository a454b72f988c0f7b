"""launchd: golden plists rendered from the instance spec, atomic writes read back with plistlib, the
API key kept out of the plist, and the launchctl adapter on recorded (reconstructed) outputs,
tests/fixtures/launchd/README.md. No macOS here: launchctl itself is never run."""

from __future__ import annotations

import json
import os
import plistlib
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nativellm import run
from nativellm.errors import InstanceError
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import ROUTER_CACHE, Resolved, render_instance_files, server_argv
from nativellm.serve.launchd import (
    Launchctl,
    LaunchdManager,
    ServicePrint,
    check_key_file,
    label,
    parse_print,
    plist_dir,
    plist_text,
    preset_file,
    render_plist,
    render_router_preset,
    unit_state,
    write_plist,
)
from nativellm.serve.router import PRESET_NAME, router_argv
from nativellm.serve.server_flags import ServerFlags
from nativellm.specs import InstanceSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "launchd"
UPDATE = os.environ.get("NATIVELLM_UPDATE_GOLDEN") == "1"
ALICE = Path("/Users/alice")
DATA = ALICE / ".local/share/nativellm"
KEY = str(ALICE / ".config/nativellm/keys/q4.key")


def _resolved(scope: Scope, home: Path, backend: str) -> Resolved:
    if backend == "mlx":  # as serve/mlx_instance.resolve makes it
        from nativellm.mlx.engine import mlx_environment
        from nativellm.paths import Paths

        paths = Paths(scope=scope, home=home, units=ALICE / "Library/LaunchAgents", config=home / "config")
        return Resolved(
            scope=scope, server_binary=home / "runtimes/mlx/current/venv/bin/python",
            model_path=home / "models/qwen-mlx-4bit", backend="mlx", python="/usr/bin/python3",
            healthcheck=home / "libexec/nativellm-healthcheck.py", systemctl="/bin/false", spec_path=home / "mq.toml",
            workdir=home / "mlx/instances/mq", engine_env=mlx_environment(paths, "mq"),
        )  # fmt: skip
    return Resolved(
        scope=scope,
        server_binary=home / "current/bin/llama-server",
        model_path=home / "models/qwen2.5-0.5b-q4_k_m.gguf",
        backend=backend,
        python="/usr/bin/python3",
        healthcheck=home / "libexec/nativellm-healthcheck.py",
        systemctl="/bin/false",
        spec_path=home / "q4.toml",
    )


CASES: dict[str, tuple[InstanceSpec, Scope, Path, str]] = {
    "user_metal": (
        InstanceSpec(
            "q4",
            "qwen-q4",
            8080,
            ctx=8192,
            threads=10,
            gpu_layers=99,
            api_key_file=KEY,
            env={"HF_HUB_OFFLINE": "1"},
        ),
        Scope.USER,
        DATA,
        "metal",
    ),
    "system_metal": (
        InstanceSpec(
            "q4",
            "qwen-q4",
            8080,
            host="0.0.0.0",
            gpu_layers=99,
            parallel=4,
            enable=True,
            api_key_file="/etc/nativellm/keys/q4.key",
        ),
        Scope.SYSTEM,
        Path("/var/lib/nativellm"),
        "metal",
    ),
    "cpu_fallback": (
        InstanceSpec("tiny", "qwen-q4", 8081, gpu_layers=0, threads=4, enable=True),
        Scope.USER,
        DATA,
        "cpu",
    ),
    # --engine mlx: the runtime's Python runs mlx_lm.server on the alias NAME in its alias directory.
    "user_mlx": (
        InstanceSpec("mq", "qwen-mlx-4bit", 8082, engine="mlx", enable=True),
        Scope.USER,
        DATA,
        "mlx",
    ),
}


def _job(case: str) -> dict[str, Any]:
    spec, scope, home, backend = CASES[case]
    return render_plist(spec, _resolved(scope, home, backend), log=home / "logs" / f"llama-{spec.name}.log",
                        workdir=home)  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_plist(case: str) -> None:
    golden = FIXTURES / f"{case}.plist"
    text = plist_text(_job(case))
    if UPDATE:
        golden.write_text(text)
    assert golden.read_text() == text
    assert plistlib.loads(golden.read_bytes()) == _job(case)  # a valid plist, and exactly the job


def test_plist_semantics() -> None:
    user, system, cpu = _job("user_metal"), _job("system_metal"), _job("cpu_fallback")
    assert user["Label"] == "org.nativellm.llama.q4"
    assert user["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash or kill -9
    assert user["ThrottleInterval"] == 10 and user["ProcessType"] == "Interactive"
    assert (user["RunAtLoad"], system["RunAtLoad"]) == (False, True)  # RunAtLoad is `enable`
    assert user["StandardOutPath"] == user["StandardErrorPath"] == str(DATA / "logs/llama-q4.log")
    assert user["EnvironmentVariables"] == {"HF_HUB_OFFLINE": "1"}
    assert "LimitLoadToSessionType" in user and "LimitLoadToSessionType" not in system
    assert cpu["ProgramArguments"][cpu["ProgramArguments"].index("--n-gpu-layers") + 1] == "0"
    assert "EnvironmentVariables" not in cpu


@pytest.mark.parametrize("case", sorted(CASES))
def test_program_arguments_are_the_systemd_units_argv(case: str) -> None:
    """One argv for both managers: dropins.server_argv, with the key file read by llama-server (for
    --engine mlx, the unit's mlx_argv on the alias, and the unit's working directory and environment)."""
    from nativellm.serve.dropins import render_dropin

    spec, scope, home, backend = CASES[case]
    r = _resolved(scope, home, backend)
    if spec.engine == "mlx":
        unit = render_dropin(spec, r)
        exec_start = [
            line for line in unit.splitlines() if line.startswith("ExecStart=") and line != "ExecStart="
        ]
        assert exec_start == ["ExecStart=" + " ".join(_job(case)["ProgramArguments"])]
        assert f"WorkingDirectory={_job(case)['WorkingDirectory']}" in unit
        assert all(f"{k}={v}" in unit for k, v in _job(case)["EnvironmentVariables"].items())
        return
    want = server_argv(spec, r.server_binary, r.model_path, api_key_path=spec.api_key_file, backend=backend)
    assert _job(case)["ProgramArguments"] == want


ROUTER = InstanceSpec("multi", "", 8090, models=("q4", "chat"), models_max=1, load_on_start=("chat",),
                      api_key_file=KEY, env={"HF_HUB_OFFLINE": "1"}).validate()  # fmt: skip


def _router_resolved() -> Resolved:
    r = _resolved(Scope.USER, DATA, "metal")
    models = {"q4": DATA / "models/q4.gguf", "chat": DATA / "models/chat.gguf"}
    return Resolved(**{**r.__dict__, "model_paths": models, "flags": ServerFlags()})


def test_golden_router_plist_runs_the_systemd_units_router_argv_and_preset() -> None:
    """A router's job: the router argv its systemd unit runs, with the same preset INI, kept under the
    data home (launchd has no drop-in folder), and the same empty model cache."""
    r = _router_resolved()
    preset = preset_file(Paths(Scope.USER, DATA, ALICE / ".config/nativellm", ALICE / "units"), "multi")
    assert preset == DATA / "launchd" / "multi" / PRESET_NAME
    job = render_plist(ROUTER, r, log=DATA / "logs/llama-multi.log", workdir=DATA, preset=preset)
    golden = FIXTURES / "user_router.plist"
    if UPDATE:
        golden.write_text(plist_text(job))
    assert golden.read_text() == plist_text(job) and plistlib.loads(golden.read_bytes()) == job
    argv = job["ProgramArguments"]
    assert argv == router_argv(ROUTER, r.server_binary, preset, api_key_path=KEY)
    assert argv[argv.index("--models-preset") + 1] == str(preset)
    assert job["EnvironmentVariables"] == {"HF_HUB_OFFLINE": "1", "LLAMA_CACHE": ROUTER_CACHE}
    systemd_preset = render_instance_files(ROUTER, r)[f"llama@multi.service.d/{PRESET_NAME}"]
    assert render_router_preset(ROUTER, r) == systemd_preset
    with pytest.raises(ValueError):
        render_plist(ROUTER, r, log=DATA / "x.log", workdir=DATA)  # a router's job names its preset


def _recorded(name: str) -> run.Completed:
    data = json.loads((FIXTURES / name).read_text())
    return run.Completed(
        ("/bin/launchctl", *data["argv"]), data["returncode"], data["stdout"], data["stderr"]
    )


class Recorder:
    """A runner answering launchctl calls from recorded outputs, by subcommand (and target), in order."""

    def __init__(self, answers: dict[str, list[run.Completed]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], *, timeout: float | None = 60) -> run.Completed:
        self.calls.append(list(argv))
        key = " ".join(argv[1:3]) if " ".join(argv[1:3]) in self.answers else argv[1]  # "print TARGET" first
        queue = self.answers.get(key) or [run.Completed(tuple(argv), 0, "", "")]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def ops(self) -> list[str]:
        return [" ".join(c[1:]) for c in self.calls]


def _ok(text: str = "") -> run.Completed:
    return run.Completed(("/bin/launchctl",), 0, text, "")


def _print(name: str) -> run.Completed:
    return _ok((FIXTURES / name).read_text())


TARGET = "gui/501/org.nativellm.llama.q4"


def test_parse_print_running() -> None:
    got = parse_print((FIXTURES / "print_running_reconstructed.txt").read_text())
    assert got == ServicePrint("running", 4242, None, None, 1,
                               "/Users/alice/Library/LaunchAgents/org.nativellm.llama.q4.plist")  # fmt: skip
    st = unit_state("org.nativellm.llama.q4", got, enabled=True)
    assert (st.active_state, st.main_pid, st.running, st.unit_file_state) == ("active", 4242, True, "enabled")


def test_parse_print_after_kill_9_and_after_an_error_exit() -> None:
    killed = parse_print((FIXTURES / "print_killed_spawn_scheduled_reconstructed.txt").read_text())
    assert (killed.state, killed.pid, killed.signal, killed.runs) == ("spawn scheduled", None, "Killed: 9", 2)
    st = unit_state("x", killed, enabled=False)
    assert (st.active_state, st.result, st.n_restarts, st.running) == ("activating", "signal", 1, True)
    exited = parse_print((FIXTURES / "print_exited_error_reconstructed.txt").read_text())
    assert (exited.state, exited.last_exit) == ("not running", 1)
    st = unit_state("x", exited, enabled=False)
    assert (st.active_state, st.result, st.stopped) == ("failed", "exit-code", True)


@pytest.mark.parametrize(
    "text", ["", "garbage", "x = {\n\tstate = \n\tpid = twelve\n}\n", "}\n}\n\tstate = running\n"]
)
def test_parse_print_is_total(text: str) -> None:
    got = parse_print(text)
    assert got.pid is None and got.last_exit is None


def test_nested_blocks_do_not_leak_into_the_service_keys() -> None:
    text = "svc = {\n\tnested = {\n\t\tstate = active\n\t\tpid = 9\n\t}\n\tstate = waiting\n}\n"
    assert (parse_print(text).state, parse_print(text).pid) == ("waiting", None)


def test_print_not_loaded_is_none() -> None:
    rec = Recorder({"print": [_recorded("print_not_loaded_reconstructed.json")]})
    lc = Launchctl(Scope.USER, uid=501, runner=rec)
    assert lc.print_service("org.nativellm.llama.q4") is None
    assert rec.ops() == [f"print {TARGET}"]
    assert unit_state("l", None, enabled=False).active_state == "inactive"


def test_domains() -> None:
    assert Launchctl(Scope.USER, uid=501).target("l") == "gui/501/l"
    assert Launchctl(Scope.SYSTEM, uid=0).target("l") == "system/l"
    assert plist_dir(Scope.USER, ALICE) == ALICE / "Library/LaunchAgents"
    assert plist_dir(Scope.SYSTEM) == Path("/Library/LaunchDaemons")


@pytest.mark.parametrize(
    ("fixture", "scope", "says", "hint"),
    [
        ("bootstrap_already_loaded_reconstructed.json", Scope.USER, "already loaded",
         f"launchctl bootout {TARGET}"),
        ("bootstrap_service_already_loaded_legacy_reconstructed.json", Scope.USER, "already loaded",
         "nativellm restart q4"),
        ("bootstrap_bad_domain_reconstructed.json", Scope.USER, "no such launchd domain", "--system"),
        ("bootstrap_system_not_root_reconstructed.json", Scope.SYSTEM, "not permitted", "sudo"),
    ],
)  # fmt: skip
def test_bootstrap_failures_are_one_line_with_a_hint(
    fixture: str, scope: Scope, says: str, hint: str
) -> None:
    rec = Recorder({"bootstrap": [_recorded(fixture)]})
    lc = Launchctl(scope, uid=501, runner=rec)
    with pytest.raises(InstanceError) as exc:
        lc.bootstrap(plist_dir(scope, ALICE) / "org.nativellm.llama.q4.plist")
    assert says in exc.value.message and hint in exc.value.hint
    assert "\n" not in exc.value.message and "\n" not in exc.value.hint
    assert exc.value.exit_code == 10  # InstanceError: README "Exit codes"


def test_bootout_of_a_job_that_is_not_loaded_is_not_an_error() -> None:
    rec = Recorder({"bootout": [_recorded("bootout_not_loaded_reconstructed.json")]})
    assert Launchctl(Scope.USER, uid=501, runner=rec).bootout("org.nativellm.llama.q4") is False


# -- files -------------------------------------------------------------------------------------------


def test_write_plist_is_atomic_idempotent_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "LaunchAgents" / "org.nativellm.llama.q4.plist"
    job = _job("user_metal")
    assert write_plist(path, job) is True
    assert plistlib.loads(path.read_bytes()) == job
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert write_plist(path, job) is False  # unchanged: no write
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_check_key_file(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("sk-secret\n")
    key.chmod(0o600)
    check_key_file(str(key))
    key.chmod(0o640)
    with pytest.raises(InstanceError) as exc:
        check_key_file(str(key))
    assert "readable by others" in exc.value.message and f"chmod 600 {key}" in exc.value.hint
    with pytest.raises(InstanceError):
        check_key_file(str(tmp_path / "missing"))
    with pytest.raises(InstanceError):
        check_key_file(str(tmp_path))


@pytest.fixture()
def mac(tmp_path: Path) -> tuple[Paths, Path]:
    """A user-scope layout under tmp_path: data home, config, and a fake launchctl binary path."""
    paths = Paths(Scope.USER, tmp_path / "data", tmp_path / "config", tmp_path / "units")
    launchctl = tmp_path / "launchctl"
    launchctl.write_text("")
    return paths, launchctl


def _manager(mac: tuple[Paths, Path], rec: Recorder, health: str = "ok") -> LaunchdManager:
    paths, binary = mac
    lc = Launchctl(Scope.USER, uid=501, runner=rec, binary=str(binary))
    return LaunchdManager(
        paths, lc, home=paths.home.parent / "Users-alice", health=lambda url: health, interval=0
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_keeps_the_key_out_of_the_plist(mac: tuple[Paths, Path], tmp_path: Path) -> None:
    key = tmp_path / "q4.key"
    key.write_text("sk-very-secret-42\n")
    key.chmod(0o600)
    spec = InstanceSpec("q4", "m", 8080, api_key_file=str(key))
    rec = Recorder({})
    mgr = _manager(mac, rec)
    installed = mgr.install(spec, _resolved(Scope.USER, mac[0].home, "metal"))
    plist = mgr.plist_path("q4")
    assert installed.written == (str(plist),) and installed.service_changed
    assert rec.ops() == ["print gui/501"]  # the domain is checked first
    assert b"sk-very-secret-42" not in plist.read_bytes()
    argv = plistlib.loads(plist.read_bytes())["ProgramArguments"]
    assert argv[argv.index("--api-key-file") + 1] == str(key)
    assert (mac[0].home / "logs").is_dir()
    again = mgr.install(spec, _resolved(Scope.USER, mac[0].home, "metal"))  # idempotent
    assert again.written == () and not again.service_changed


@pytest.mark.parametrize("problem", ["loose key", "bad domain"])
def test_install_refuses_before_writing_anything(
    mac: tuple[Paths, Path], tmp_path: Path, problem: str
) -> None:
    key = tmp_path / "q4.key"
    key.write_text("sk\n")
    key.chmod(0o644 if problem == "loose key" else 0o600)
    rec = Recorder({"print gui/501": [_recorded("print_domain_missing_reconstructed.json")]})
    mgr = _manager(mac, rec)
    before = _files(tmp_path)
    with pytest.raises(InstanceError) as exc:
        mgr.install(
            InstanceSpec("q4", "m", 8080, api_key_file=str(key)), _resolved(Scope.USER, mac[0].home, "metal")
        )
    assert ("chmod 600" if problem == "loose key" else "log in") in exc.value.hint
    assert _files(tmp_path) == before
    assert rec.ops() == ([] if problem == "loose key" else ["print gui/501"])


def _installed(mac: tuple[Paths, Path], rec: Recorder) -> tuple[LaunchdManager, InstanceSpec]:
    mgr = _manager(mac, rec)
    spec = InstanceSpec("q4", "m", 8080, gpu_layers=0)
    mgr.install(spec, _resolved(Scope.USER, mac[0].home, "cpu"))
    rec.calls.clear()
    return mgr, spec


def test_start_bootstraps_kickstarts_and_waits_for_health(mac: tuple[Paths, Path]) -> None:
    rec = Recorder({f"print {TARGET}": [_recorded("print_not_loaded_reconstructed.json"),
                                        _print("print_running_reconstructed.txt")]})  # fmt: skip
    mgr, spec = _installed(mac, rec)
    st = mgr.start(spec, restart=False, timeout=5)
    assert (st.active_state, st.main_pid) == ("active", 4242)
    assert rec.ops() == [f"print {TARGET}", f"bootstrap gui/501 {mgr.plist_path('q4')}", f"kickstart {TARGET}",
                         f"print {TARGET}"]  # fmt: skip


def test_restart_of_a_loaded_job_reloads_its_plist(mac: tuple[Paths, Path]) -> None:
    rec = Recorder({f"print {TARGET}": [_print("print_running_reconstructed.txt")]})
    mgr, spec = _installed(mac, rec)
    mgr.start(spec, restart=True, timeout=5)
    assert rec.ops() == [f"print {TARGET}", f"bootout {TARGET}", f"bootstrap gui/501 {mgr.plist_path('q4')}",
                         f"kickstart {TARGET}", f"print {TARGET}"]  # fmt: skip


def test_start_follows_a_crashing_server_to_its_failure(mac: tuple[Paths, Path]) -> None:
    rec = Recorder({f"print {TARGET}": [_print("print_running_reconstructed.txt"),
                                        _print("print_exited_error_reconstructed.txt")]})  # fmt: skip
    _, spec = _installed(mac, rec)
    st = _manager(mac, rec, health="down").start(spec, restart=True, timeout=5)
    assert (st.active_state, st.result) == ("failed", "exit-code")


def test_start_when_bootstrap_says_already_loaded_changes_nothing(
    mac: tuple[Paths, Path], tmp_path: Path
) -> None:
    rec = Recorder({f"print {TARGET}": [_recorded("print_not_loaded_reconstructed.json")],
                    "bootstrap": [_recorded("bootstrap_already_loaded_reconstructed.json")]})  # fmt: skip
    mgr, spec = _installed(mac, rec)
    before = _files(tmp_path)
    with pytest.raises(InstanceError) as exc:
        mgr.start(spec, restart=False, timeout=5)
    assert "already loaded" in exc.value.message
    assert _files(tmp_path) == before
    assert not any(op.startswith("kickstart") for op in rec.ops())


def test_stop_enable_logs_and_remove(mac: tuple[Paths, Path]) -> None:
    rec = Recorder({"bootout": [_recorded("bootout_not_loaded_reconstructed.json")]})
    mgr, _ = _installed(mac, rec)
    mgr.stop("q4")
    mgr.set_enabled("q4", True)
    assert mgr.is_enabled("q4")  # RunAtLoad follows: the job loads at login
    mgr.set_enabled("q4", False)
    assert not mgr.is_enabled("q4") and not plistlib.loads(mgr.plist_path("q4").read_bytes())["RunAtLoad"]
    assert rec.ops() == [f"bootout {TARGET}", f"enable {TARGET}", f"disable {TARGET}"]
    log = mac[0].home / "logs" / "llama-q4.log"
    assert mgr.logs_argv("q4", follow=True, lines=20) == ["tail", "-n", "20", "-F", str(log)]
    assert mgr.recent_log("q4") is None  # no log yet: nothing to read
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    assert mgr.recent_log("q4", 2) == "line 498\nline 499\n"
    assert (
        mgr.uninstall("q4", last=True) == (str(mgr.plist_path("q4")),) and not mgr.plist_path("q4").exists()
    )


def test_label() -> None:
    assert label("q4") == "org.nativellm.llama.q4"
