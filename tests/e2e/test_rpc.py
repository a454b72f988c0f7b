"""A llama.cpp RPC worker and a head instance under the real systemd (issue 5, acceptance 5).

The RPC build is compiled once per session (`nativellm build --rpc`, ccache makes it a few
minutes) into the session's store; `current` is put back afterwards, and the worker and the
head pin that build. The head offloads every layer (`--gpu-layers 99`) to the RPC device, so
the weights go to the worker at load, the completion's graphs go to it (the bytes on its TCP
connections grow), and stopping the worker breaks the head's completions.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nativellm.client import free_port
from nativellm.paths import Scope
from nativellm.serve.rpc import RpcWorkerSpec, render_rpc_dropin, rpc_template
from tests.e2e.conftest import InnerCli
from tests.e2e.test_instances import _record, chat, healthy, port_of
from tests.e2e.test_security_offline import TARGET, _exposure
from tests.helpers import nativellm


@pytest.fixture(scope="session")
def rpc_build(demo_home: Path, llama_source: Path) -> str:
    """`nativellm build --rpc` once into the session store, leaving `current` where it was."""
    before = (demo_home / "data" / "current").resolve().name
    t0 = time.monotonic()
    res = nativellm("build", "--rpc", "--source", str(llama_source), "--json", home=demo_home)
    assert res.returncode == 0, f"rpc build failed:\n{res.stderr[-4000:]}"
    _record("build_rpc_s", time.monotonic() - t0)
    build_id = str(res.json()["data"]["build_id"])
    restore = nativellm("builds", "use", before, home=demo_home)
    assert restore.returncode == 0, restore.stderr
    assert (demo_home / "data" / "builds" / build_id / "bin" / "rpc-server").is_file()
    return build_id


def _rpc_bytes(port: int) -> int:
    """Bytes the worker received on its RPC connections (tcp_info; the sandbox shares our netns)."""
    res = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", res.stdout))


@pytest.fixture
def worker_and_head(cli: InnerCli, rpc_build: str) -> Iterator[tuple[int, int]]:
    wport = free_port()
    try:
        doc = cli.json(
            "instance", "add-rpc-worker", "w1", "--port", str(wport), "--build", rpc_build, "--start"
        )
        assert doc["changed"] is True and doc["data"]["started"] is True
        assert doc["data"]["warnings"] == []  # loopback: no risk warning
        cli("instance", "add", "head", "--model", "demo", "--ctx", "1024", "--build", rpc_build,
            "--gpu-layers", "99", "--rpc", f"127.0.0.1:{wport}", check=True)  # fmt: skip
        cli("start", "head", check=True)
        yield wport, port_of(cli, "head")
    finally:
        cli("instance", "rm", "head")
        cli("instance", "rm-rpc-worker", "w1")


@pytest.mark.slow
def test_head_instance_gets_a_completion_through_a_loopback_rpc_worker(
    cli: InnerCli, worker_and_head: tuple[int, int]
) -> None:
    wport, hport = worker_and_head
    unit = cli.sb.systemctl("--user", "cat", "llama-rpc@w1.service").stdout
    assert f"--host 127.0.0.1 --port {wport}" in unit
    assert "IPAddressDeny=any" in unit and "IPAddressAllow=localhost" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    head = cli.sb.systemctl("--user", "cat", "llama@head.service").stdout
    assert f"--rpc 127.0.0.1:{wport}" in head
    assert healthy(hport)

    loaded = _rpc_bytes(wport)
    assert loaded > 1_000_000, f"the model's weights did not go to the worker ({loaded} bytes)"
    t0 = time.monotonic()
    chat(hport, max_tokens=16)
    _record("rpc_completion_s", time.monotonic() - t0)
    assert _rpc_bytes(wport) > loaded, "the completion sent nothing to the worker"
    # And the head depends on it: without the worker, completions fail.
    cli.sb.systemctl("--user", "stop", "llama-rpc@w1.service")
    with pytest.raises(Exception):  # noqa: B017 - connection reset or HTTP 500, either proves it
        chat(hport)


@pytest.mark.slow
def test_non_loopback_worker_needs_peers_and_warns(cli: InnerCli, rpc_build: str) -> None:
    refused = cli("instance", "add-rpc-worker", "open", "--port", "50999", "--host", "0.0.0.0",
                  "--build", rpc_build, "--no-systemd")  # fmt: skip
    assert refused.returncode == 10 and "--allow" in refused.stderr
    res = cli("instance", "add-rpc-worker", "lan", "--port", "50998", "--host", "0.0.0.0",
              "--allow", "10.0.0.5,10.0.1.0/24", "--build", rpc_build, "--no-systemd")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "remote-code-execution" in res.stderr and "private network" in res.stderr
    text = cli.sb.exec(["cat", "/root/.config/systemd/user/llama-rpc@lan.service.d/50-nativellm.conf"]).stdout
    assert "IPAddressAllow=10.0.0.5" in text and "IPAddressAllow=10.0.1.0/24" in text
    cli("instance", "rm-rpc-worker", "lan", "--no-systemd", check=True)


@pytest.mark.usefixtures("systemd_analyze")
@pytest.mark.parametrize(("backend", "spec"), [
    ("cpu", RpcWorkerSpec("cpu", 50052)),
    ("cuda", RpcWorkerSpec("gpu", 50052, "10.0.0.2", gpus=(0,), allow=("10.0.0.5",))),
])  # fmt: skip
def test_rpc_worker_units_meet_the_exposure_target(tmp_path: Path, backend: str, spec: RpcWorkerSpec) -> None:
    """The same target as instances (test_security_offline.py), on the system-scope rendering."""
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    dropin = unit_dir / f"llama-rpc@{spec.name}.service.d" / "50-nativellm.conf"
    dropin.parent.mkdir(parents=True)
    (unit_dir / "llama-rpc@.service").write_text(rpc_template())
    binary = Path("/var/lib/nativellm/current/bin/rpc-server")
    dropin.write_text(render_rpc_dropin(spec, binary, backend, Path("/etc/x.toml"), Scope.SYSTEM))
    score, report = _exposure(tmp_path, f"llama-rpc@{spec.name}.service")
    print(f"rpc {backend}: exposure {score}")
    assert score <= TARGET, report
