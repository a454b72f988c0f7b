"""An --engine mlx instance under a real systemd (issue 17, acceptance 3): the MLX runtime installed
by nativellm (mlx[cpu] + mlx-lm from PyPI's wheels, cached in the test cache), a tiny MLX-format
llama registered, `instance add --engine mlx`, started (readiness: a real generation), a chat
completion through the official openai client, `kill -9` and a hang recovered by systemd and the
watchdog, and `bench` against it."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.conftest import InnerCli
from tests.e2e.sandbox import Sandbox
from tests.e2e.test_instances import wait_until
from tests.helpers import CACHE
from tests.mlxkit import mlx_wheels, write_tiny_mlx

pytestmark = pytest.mark.slow
NAME = "mq"


@pytest.fixture(scope="module")
def mlx_cli(sandbox: Sandbox) -> Iterator[InnerCli]:
    """A fresh home under the test cache (the sandbox sees it), with the runtime installed inside
    the sandbox by the real CLI, from the cached wheels."""
    home = CACHE / "mlx-e2e" / uuid.uuid4().hex[:8]
    home.mkdir(parents=True)
    cli = InnerCli(sandbox, home)
    try:
        cli("mlx", "install", "--offline-wheels", str(mlx_wheels()), timeout=1200, check=True)
        yield cli
    finally:
        cli("instance", "rm", NAME)
        shutil.rmtree(home, ignore_errors=True)


def _unit(sb: Sandbox) -> dict[str, str]:
    return sb.show(f"llama@{NAME}.service", "MainPID", "NRestarts", "ActiveState", "SubState", "Result")


def _chat(port: int) -> str:
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
    resp = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0
    )
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    assert resp.model == NAME  # served under the instance's name: the alias, not a reload
    return resp.choices[0].message.content or ""


def _back(sb: Sandbox, old_pid: int, timeout: float) -> dict[str, str] | None:
    """Readiness through systemd: `active` only after ExecStartPost saw a real generation."""

    def ready() -> dict[str, str] | None:
        st = _unit(sb)
        ok = st["ActiveState"] == "active" and int(st["MainPID"]) not in (0, old_pid)
        return st if ok else None

    return wait_until(ready, timeout)  # type: ignore[no-any-return]


def test_mlx_instance_serves_recovers_and_benches(mlx_cli: InnerCli, sandbox: Sandbox) -> None:
    python = mlx_cli.home / "data" / "runtimes" / "mlx" / "current" / "venv" / "bin" / "python"
    model = write_tiny_mlx(mlx_cli.home / "tiny-mlx", python)
    mlx_cli("model", "add", str(model), check=True)
    added = mlx_cli.json("instance", "add", NAME, "--engine", "mlx", "--model", "tiny-mlx")
    assert added["data"]["spec"]["engine"] == "mlx"
    port = int(added["data"]["spec"]["port"])
    t0 = time.monotonic()
    started = mlx_cli("start", NAME)
    print(f"mlx start to ready: {time.monotonic() - t0:.1f}s")
    journal = sandbox.journal("--user-unit", f"llama@{NAME}.service", "-n", "40", "-o", "cat")
    assert started.returncode == 0, f"{started.stderr}\n{journal}"
    st = _unit(sandbox)
    assert st["ActiveState"] == "active", (st, journal)
    cmdline = sandbox.host_path(f"/proc/{st['MainPID']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:6] == [b"-m", b"mlx_lm", b"server", b"--model", NAME.encode()]
    assert isinstance(_chat(port), str)

    # kill -9: Restart=on-failure brings it back, ready again only once it generates.
    pid = int(st["MainPID"])
    sandbox.exec(["kill", "-9", str(pid)])
    t0 = time.monotonic()
    back = _back(sandbox, pid, 60)
    print(f"mlx kill -9 to ready: {time.monotonic() - t0:.1f}s")
    assert back, (
        _unit(sandbox),
        sandbox.journal("--user-unit", f"llama@{NAME}.service", "-n", "30", "-o", "cat"),
    )
    assert int(back["NRestarts"]) == int(st["NRestarts"]) + 1
    assert isinstance(_chat(port), str)

    # A hung server (SIGSTOP: alive, not answering /health) is killed by the watchdog and restarted.
    pid = int(back["MainPID"])
    sandbox.exec(["kill", "-STOP", str(pid)])
    t0 = time.monotonic()
    again = _back(sandbox, pid, 90)
    print(f"mlx SIGSTOP to ready: {time.monotonic() - t0:.1f}s")
    if not again:
        sandbox.exec(["kill", "-CONT", str(pid)], check=False)
    assert again, sandbox.journal("--user-unit", f"llama-watchdog@{NAME}.service", "-n", "30")
    assert "hung" in sandbox.journal("--user-unit", f"llama-watchdog@{NAME}.service", "-n", "50", "-o", "cat")

    rows = {r["name"]: r for r in mlx_cli.json("status")["instances"]}
    assert rows[NAME]["healthy"], rows[NAME]

    # bench speaks OpenAI to it, like to llama-server.
    report = mlx_cli.json("bench", NAME, "--concurrency", "1,2", "--requests", "2", "--prompt-tokens", "16",
                          "--max-tokens", "4", "--duration", "60")  # fmt: skip
    assert report["schema"] == "nativellm.bench/1"
    levels = report["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    assert all(lv["errors"] == 0 and lv["requests"] >= 2 for lv in levels), levels
    print("mlx bench:", [(lv["concurrency"], round(lv["aggregate_tps"], 1)) for lv in levels])
    assert Path(model).is_dir()
