"""Instances under a real systemd: the acceptance points of the instances issue.

The tests share one sandbox and one store and run in file order: q4 is added and started
first, later tests reuse it. Timings are printed (run with -s) and kept in
~/.cache/nativellm-test/e2e-timings.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI  # imported up front: its import time is not start-up time

from tests.e2e.conftest import CHECKOUT, USER_UNIT_DIR, InnerCli
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE

TIMINGS: dict[str, float] = {}


def _record(key: str, seconds: float) -> None:
    TIMINGS[key] = round(seconds, 2)
    print(f"\n[timing] {key}: {seconds:.2f}s")
    path = CACHE / "e2e-timings.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    path.write_text(json.dumps({**old, **TIMINGS}, indent=2, sort_keys=True))


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def unit(sb: Sandbox, name: str) -> dict[str, str]:
    return sb.show(
        f"llama@{name}.service", "MainPID", "NRestarts", "ActiveState", "SubState", "Result", "LoadState"
    )


def port_of(cli: InnerCli, name: str) -> int:
    doc = cli.json("instance", "show", name)
    return int(doc["spec"]["port"])


def chat(port: int, api_key: str = "none", max_tokens: int = 8) -> str:
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, timeout=60, max_retries=0)
    resp = client.chat.completions.create(
        model="q4", messages=[{"role": "user", "content": "Say hello"}], max_tokens=max_tokens, temperature=0
    )
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    return resp.choices[0].message.content or ""


def ensure_started(cli: InnerCli, name: str) -> None:
    """Lets a test run on its own (-k): add the instance if an earlier test did not."""
    if cli("instance", "show", name).returncode == 3:
        cli("instance", "add", name, "--model", "demo", "--ctx", "1024", check=True)
    if unit(cli.sb, name)["ActiveState"] != "active":
        cli("start", name, check=True)


# -- 1. end to end ------------------------------------------------------------------------------
def test_add_then_systemctl_start_serves_chat_completions(cli: InnerCli, sandbox: Sandbox) -> None:
    doc = cli.json("instance", "add", "q4", "--model", "demo", "--ctx", "1024")
    assert doc["changed"] is True
    assert any("lingering is off" in w for w in doc["data"]["warnings"]), doc["data"]["warnings"]
    port = doc["data"]["spec"]["port"]
    assert doc["data"]["spec"]["build"] == "current"
    # `systemctl cat` shows exactly what runs: template + drop-in with the ExecStart argv.
    cat = sandbox.systemctl("--user", "cat", "llama@q4.service").stdout
    assert "50-nativellm.conf" in cat and f"--port {port}" in cat and "ProtectSystem=strict" in cat

    t0 = time.monotonic()
    sandbox.systemctl("--user", "start", "llama@q4")  # returns only once /health is 200
    t_ready = time.monotonic() - t0
    assert healthy(port), "systemctl start returned before /health answered 200"
    # The instance serves the web UI the build embedded (issue 12): a browser opening the port gets it.
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.status_code
    text = chat(port)
    t_first = time.monotonic() - t0
    _record("systemctl_start_to_ready_s", t_ready)
    _record("systemctl_start_to_first_completion_s", t_first)
    assert isinstance(text, str)

    status = cli.json("status", "q4")["instances"][0]
    assert status["active_state"] == "active" and status["sub_state"] == "running"
    assert status["health"] == "ok" and status["healthy"] is True
    assert (status["pid"] and status["memory_bytes"] is not None) or status["pid"]
    assert status["model"] == "demo"


def test_nativellm_start_waits_for_readiness(cli: InnerCli, sandbox: Sandbox) -> None:
    port = port_of(cli, "q4")
    cli("stop", "q4", check=True)
    assert not healthy(port)
    t0 = time.monotonic()
    res = cli("start", "q4", check=True)
    t_ready = time.monotonic() - t0
    assert healthy(port), res.stdout
    chat(port)
    _record("nativellm_start_to_ready_s", t_ready)
    _record("nativellm_start_to_first_completion_s", time.monotonic() - t0)


def test_readding_unchanged_reports_unchanged(cli: InnerCli, sandbox: Sandbox) -> None:
    doc = cli.json("instance", "add", "q4", "--model", "demo", "--ctx", "1024", "--linger")
    assert doc["changed"] is False and doc["data"]["warnings"] == []
    linger = sandbox.exec(["loginctl", "show-user", "root", "--property=Linger", "--value"]).stdout.strip()
    assert linger == "yes"
    again = cli("instance", "add", "q4", "--model", "demo", "--ctx", "2048")
    assert again.returncode == 10 and "already exists" in again.stderr


# -- 3. supervision -----------------------------------------------------------------------------
def test_kill_9_restarts_within_10s_and_counts(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q4")
    port = port_of(cli, "q4")
    before = unit(sandbox, "q4")
    pid = int(before["MainPID"])
    sandbox.exec(["kill", "-9", str(pid)])
    t0 = time.monotonic()
    back = wait_until(lambda: int(unit(sandbox, "q4")["MainPID"]) not in (0, pid) and healthy(port), 10)
    elapsed = time.monotonic() - t0
    assert back, f"not healthy 10 s after kill -9: {unit(sandbox, 'q4')}"
    _record("kill9_to_healthy_s", elapsed)
    assert int(unit(sandbox, "q4")["NRestarts"]) == int(before["NRestarts"]) + 1


def test_sigstop_hang_is_detected_and_restarted_within_60s(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q4")
    port = port_of(cli, "q4")
    pid = int(unit(sandbox, "q4")["MainPID"])
    sandbox.exec(["kill", "-STOP", str(pid)])
    t0 = time.monotonic()
    back = wait_until(lambda: int(unit(sandbox, "q4")["MainPID"]) not in (0, pid) and healthy(port), 60, 0.5)
    elapsed = time.monotonic() - t0
    if not back:
        sandbox.exec(["kill", "-CONT", str(pid)], check=False)
    assert back, sandbox.journal("--user-unit", "llama-watchdog@q4.service", "-n", "30")
    _record("sigstop_to_healthy_s", elapsed)
    log = sandbox.journal("--user-unit", "llama-watchdog@q4.service", "-n", "50", "-o", "cat")
    assert "hung" in log


# -- 2. two instances and llama.target ----------------------------------------------------------
def test_two_instances_side_by_side_and_target_restarts_both(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q4")
    doc = cli.json("instance", "add", "q8", "--model", "demo", "--ctx", "512")
    assert doc["changed"] is True
    cli("start", "q8", check=True)
    p4, p8 = port_of(cli, "q4"), port_of(cli, "q8")
    assert p4 != p8 and healthy(p4) and healthy(p8)
    pids = {n: int(unit(sandbox, n)["MainPID"]) for n in ("q4", "q8")}
    t0 = time.monotonic()
    sandbox.systemctl("--user", "restart", "llama.target")
    _record("llama_target_restart_two_instances_s", time.monotonic() - t0)
    for n in ("q4", "q8"):
        st = unit(sandbox, n)
        assert st["ActiveState"] == "active" and int(st["MainPID"]) != pids[n], (n, st)
    assert healthy(p4) and healthy(p8)
    rows = {r["name"]: r for r in cli.json("status")["instances"]}
    assert rows["q4"]["healthy"] and rows["q8"]["healthy"]


# -- 6. changes and removal ---------------------------------------------------------------------
def test_edit_restarts_only_the_edited_instance(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q4")
    ensure_started(cli, "q8")
    pids = {n: int(unit(sandbox, n)["MainPID"]) for n in ("q4", "q8")}
    doc = cli.json("instance", "edit", "q4", "--ctx", "8192")
    assert doc["changed"] is True and doc["data"]["restarted"] is True
    assert "--ctx-size 8192" in sandbox.systemctl("--user", "cat", "llama@q4.service").stdout
    assert int(unit(sandbox, "q4")["MainPID"]) != pids["q4"]
    assert int(unit(sandbox, "q8")["MainPID"]) == pids["q8"]
    assert healthy(port_of(cli, "q4"))
    same = cli.json("instance", "edit", "q4", "--ctx", "8192")
    assert same["changed"] is False and same["data"]["restarted"] is False
    assert int(unit(sandbox, "q8")["MainPID"]) == pids["q8"]


def test_rm_leaves_nothing_behind(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q8")
    port = port_of(cli, "q8")
    pid = int(unit(sandbox, "q8")["MainPID"])
    doc = cli.json("instance", "rm", "q8")
    assert doc["changed"] is True
    units = sandbox.host_path(USER_UNIT_DIR)
    assert not (units / "llama@q8.service.d").exists()
    assert not (units / "llama-watchdog@q8.service.d").exists()
    assert not (cli.home / "config" / "instances" / "q8.toml").exists()
    assert not Path(f"/proc/{pid}").exists() or "llama-server" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert not healthy(port)
    st = unit(sandbox, "q8")
    assert st["ActiveState"] == "inactive", st
    ps = sandbox.exec(["ps", "-eo", "args"]).stdout
    assert "--alias q8" not in ps
    assert cli("instance", "show", "q8").returncode == 3


# -- 3. crash loop and load failure -------------------------------------------------------------
def _fake_build(home: Path, build_id: str, script: str) -> None:
    bdir = home / "data" / "builds" / build_id
    (bdir / "bin").mkdir(parents=True, exist_ok=True)
    exe = bdir / "bin" / "llama-server"
    exe.write_text(script)
    exe.chmod(0o755)
    manifest = {"schema": "nativellm.build/1", "id": build_id, "created": "2000-01-01T00:00:00Z",
                "plan": {"backend": "cpu"}, "smoke_test": {"passed": True}}  # fmt: skip
    (bdir / "manifest.json").write_text(json.dumps(manifest))


def test_binary_that_exits_at_once_stops_at_the_start_limit(cli: InnerCli, sandbox: Sandbox) -> None:
    _fake_build(
        cli.home, "cpu-exits-at-once", "#!/bin/sh\necho 'fake llama-server: exiting at once' >&2\nexit 1\n"
    )
    cli.json("instance", "add", "crash", "--model", "demo", "--build", "cpu-exits-at-once")
    t0 = time.monotonic()
    res = cli("start", "crash")
    elapsed = time.monotonic() - t0
    assert res.returncode == 10, res.stdout + res.stderr
    st = unit(sandbox, "crash")
    assert st["ActiveState"] == "failed", st
    assert "start limit" in res.stderr and "fake llama-server: exiting at once" in res.stderr
    journal = sandbox.journal("--user-unit", "llama@crash.service", "-o", "cat")
    assert "Start request repeated too quickly" in journal
    _record("crash_loop_to_start_limit_s", elapsed)
    status = cli.json("status", "crash")["instances"][0]
    assert status["active_state"] == "failed" and status["start_limit_hit"] is True
    assert status["error"] == "fake llama-server: exiting at once"
    cli.json("instance", "rm", "crash")


def test_model_that_cannot_load_fails_start_with_its_error(cli: InnerCli, sandbox: Sandbox) -> None:
    bad = cli.home / "bad-model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    cli.json("instance", "add", "badmodel", "--model", str(bad))
    res = cli("start", "badmodel")
    assert res.returncode == 10
    assert "failed to start" in res.stderr
    err = res.stderr.lower()
    assert "gguf" in err or "model" in err, res.stderr
    status = cli.json("status", "badmodel")["instances"][0]
    assert status["active_state"] == "failed" and status["error"]
    print(f"\n[error line] {status['error']}")
    cli.json("instance", "rm", "badmodel")


# -- 4. API key ---------------------------------------------------------------------------------
def test_api_key_reaches_only_llama_server_and_is_enforced(cli: InnerCli, sandbox: Sandbox) -> None:
    secret = "nllm-" + os.urandom(12).hex()
    keyfile = cli.home / "keyed.key"
    keyfile.write_text(secret + "\n")
    keyfile.chmod(0o600)
    doc = cli.json("instance", "add", "keyed", "--model", "demo", "--api-key-file", str(keyfile))
    port = doc["data"]["spec"]["port"]
    cli("start", "keyed", check=True)
    pid = int(unit(sandbox, "keyed")["MainPID"])

    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=30)  # fmt: skip
    assert r.status_code == 401
    assert chat(port, api_key=secret)

    cmdline = sandbox.host_path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    environ = sandbox.host_path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    units = sandbox.host_path(USER_UNIT_DIR)
    unit_texts = "".join(p.read_text() for p in units.rglob("*") if p.is_file())
    shown = sandbox.systemctl("--user", "show", "llama@keyed.service").stdout
    shown += sandbox.systemctl("--user", "cat", "llama@keyed.service").stdout
    ps = sandbox.exec(["ps", "-eww", "-o", "args"]).stdout + sandbox.exec(["ps", "eww", "-e"]).stdout
    spec = (cli.home / "config" / "instances" / "keyed.toml").read_text()
    for where, text in (("cmdline", cmdline), ("environ", environ), ("unit files", unit_texts),
                        ("systemctl show/cat", shown), ("ps", ps), ("spec", spec)):  # fmt: skip
        assert secret not in text, f"the API key leaked into {where}"
    assert "--api-key-file" in cmdline and "credentials" in cmdline
    cli.json("instance", "rm", "keyed")


def _can_raise_rlimits() -> bool:
    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), 16)
    return bool(cap_eff & (1 << 24))  # CAP_SYS_RESOURCE


# -- hardening does not get in llama-server's way -----------------------------------------------
def test_hardened_server_runs_with_threads_mlock_numa_limits_and_metrics(
    cli: InnerCli, sandbox: Sandbox
) -> None:
    doc = cli.json("instance", "add", "tuned", "--model", "demo", "--ctx", "1024", "--threads", "2",
                   "--parallel", "2", "--mlock", "--numa-node", "0", "--memory-max", "2G", "--cpus", "1.5")  # fmt: skip
    port = doc["data"]["spec"]["port"]
    cli("start", "tuned", check=True)
    chat(port, max_tokens=16)
    shown = sandbox.show("llama@tuned.service", "LimitMEMLOCK", "NUMAPolicy", "MemoryMax", "CPUQuotaPerSecUSec",
                         "ProtectSystem", "PrivateDevices", "NoNewPrivileges", "SystemCallFilter")  # fmt: skip
    assert shown["LimitMEMLOCK"] == "infinity" and shown["NUMAPolicy"] == "bind"
    assert shown["MemoryMax"] == str(2 * 2**30) and shown["CPUQuotaPerSecUSec"] == "1.500000s"
    assert (
        shown["ProtectSystem"] == "strict"
        and shown["PrivateDevices"] == "yes"
        and shown["NoNewPrivileges"] == "yes"
    )
    log = sandbox.journal("--user-unit", "llama@tuned.service", "-o", "cat")
    assert "SIGSYS" not in log and "Operation not permitted" not in log  # nothing blocked by seccomp
    if _can_raise_rlimits():
        assert "failed to mlock" not in log
    else:
        # Root here lacks CAP_SYS_RESOURCE, so no manager can raise RLIMIT_MEMLOCK above 8 MiB:
        # mlock is reached (the syscall filter allows it) and refused only by the rlimit.
        assert "failed to mlock" not in log or "Cannot allocate memory" in log
    row = cli.json("status", "tuned")["instances"][0]
    assert row["healthy"] and row["metrics"].get("tokens_per_s", 0) > 0, row
    cli.json("instance", "rm", "tuned")


def test_system_scope_runs_as_an_unprivileged_dynamic_user(cli: InnerCli, sandbox: Sandbox) -> None:
    # The store lives under /root/.cache here; let the dynamic user traverse /root (in the
    # sandbox's overlay only). A real system-scope store is /var/lib/nativellm.
    sandbox.exec(["chmod", "711", "/root"])
    env_unit_dir = {"NATIVELLM_UNIT_DIR": "/etc/systemd/system"}
    doc = cli.json(
        "instance", "add", "sys", "--model", "demo", "--ctx", "512", "--system", extra_env=env_unit_dir
    )
    port = doc["data"]["spec"]["port"]
    res = cli("start", "sys", "--system", extra_env=env_unit_dir)
    assert res.returncode == 0, res.stderr + sandbox.journal(
        "-u", "llama@sys.service", "-n", "40", "-o", "cat"
    )
    assert chat(port) is not None
    pid = int(sandbox.show("llama@sys.service", "MainPID", user=False)["MainPID"])
    uid_line = [
        ln
        for ln in sandbox.host_path(f"/proc/{pid}/status").read_text().splitlines()
        if ln.startswith("Uid:")
    ]
    assert uid_line and uid_line[0].split()[1] != "0", uid_line
    assert sandbox.show("llama@sys.service", "DynamicUser", user=False)["DynamicUser"] == "yes"
    cli.json("instance", "rm", "sys", "--system", extra_env=env_unit_dir)
    assert not sandbox.host_path("/etc/systemd/system/llama@sys.service.d").exists()


def test_status_human_output_and_logs(cli: InnerCli) -> None:
    ensure_started(cli, "q4")
    res = cli("status", check=True)
    assert "q4" in res.stdout and "ok" in res.stdout
    logs = cli("logs", "q4", "-n", "200", check=True)
    assert "Started llama@q4.service" in logs.stdout and "llama@q4[" in logs.stdout


def test_run_uses_the_same_argv_in_the_foreground(cli: InnerCli, sandbox: Sandbox) -> None:
    """`nativellm run` without systemd: exec()s llama-server itself, with the unit's argv."""
    from nativellm.run import Process

    ensure_started(cli, "q4")
    unit_argv = (
        sandbox.host_path(f"/proc/{unit(sandbox, 'q4')['MainPID']}/cmdline").read_bytes().split(b"\0")[:-1]
    )
    cli("stop", "q4", check=True)
    port = port_of(cli, "q4")
    log = cli.home / "run-q4.log"
    proc = Process([sys.executable, "-m", "nativellm", "run", "q4"], log_file=log,
                   env={"NATIVELLM_HOME": str(cli.home), "PYTHONPATH": str(CHECKOUT / "src")})  # fmt: skip
    try:
        assert wait_until(lambda: healthy(port), 60), proc.output()
        fg_argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert fg_argv == unit_argv  # exec() replaced python: the pid is llama-server's
    finally:
        proc.stop()


@pytest.fixture(scope="module", autouse=True)
def _cleanup(cli: InnerCli) -> Any:
    yield
    for spec in cli.json("instance", "list")["instances"]:
        cli("instance", "rm", spec["name"])


def test_enable_and_disable_through_llama_target(cli: InnerCli, sandbox: Sandbox) -> None:
    ensure_started(cli, "q4")
    doc = cli.json("enable", "q4")
    assert doc["changed"] is True
    assert sandbox.systemctl("--user", "is-enabled", "llama@q4.service").stdout.strip() == "enabled"
    assert sandbox.systemctl("--user", "is-enabled", "llama.target").stdout.strip() == "enabled"
    assert cli.json("enable", "q4")["changed"] is False
    assert cli.json("instance", "show", "q4")["spec"]["enable"] is True
    assert cli.json("disable", "q4")["changed"] is True
    res = sandbox.systemctl("--user", "is-enabled", "llama@q4.service", check=False)
    assert res.stdout.strip() == "disabled"
