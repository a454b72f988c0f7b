"""GPU memory in `status` under a real systemd and journald: the journal query that reads
llama-server's load log (by PID, so one run of the unit only), on a CPU instance. The Vulkan
instance's `Vulkan0` buffers are asserted where the Vulkan build is served end to end."""

from __future__ import annotations

import sys

from nativellm.serve.observe import gpu_memory_from_log, parse_buffer_sizes
from tests.e2e.conftest import CHECKOUT, InnerCli
from tests.e2e.sandbox import Sandbox

_LOAD_LOG = (
    "import sys\nfrom nativellm.serve.gpu_status import load_log\nprint(load_log(int(sys.argv[1])), end='')\n"
)


def load_log(cli: InnerCli, sb: Sandbox, pid: int) -> str:
    """gpu_status.load_log (what `status` reads) run inside the sandbox, where the unit's journal is."""
    env = {"NATIVELLM_HOME": str(cli.home), "PYTHONPATH": str(CHECKOUT / "src")}
    return sb.exec([sys.executable, "-c", _LOAD_LOG, str(pid)], env=env, cwd=str(CHECKOUT)).stdout


def main_pid(sb: Sandbox, name: str) -> int:
    return int(sb.show(f"llama@{name}.service", "MainPID")["MainPID"])


def test_status_and_the_load_log_from_the_real_journal(cli: InnerCli, sandbox: Sandbox) -> None:
    # -lv 4: this llama.cpp prints its buffer sizes only at that level.
    cli(
        "instance", "add", "vram", "--model", "demo", "--ctx", "512", "--", "--log-verbosity", "4", check=True
    )
    try:
        cli("start", "vram", check=True)
        first = main_pid(sandbox, "vram")
        text = load_log(cli, sandbox, first)
        kinds = [(b.buffer, b.kind) for b in parse_buffer_sizes(text)]
        print(f"\n[load log by _PID={first}] {kinds}")
        assert ("CPU", "KV") in kinds and ("CPU", "compute") in kinds, text[-2000:]
        assert any(kind == "model" for _, kind in kinds)
        assert gpu_memory_from_log(text) == []
        row = cli.json("status", "vram")["instances"][0]
        assert row["active_state"] == "active" and row["gpu_memory"] == []  # a CPU build

        # After a restart only the new process's load counts: the query is by PID.
        cli("restart", "vram", check=True)
        second = main_pid(sandbox, "vram")
        assert second != first
        again = parse_buffer_sizes(load_log(cli, sandbox, second))
        assert sorted((b.buffer, b.kind) for b in again) == sorted(kinds)
        assert load_log(cli, sandbox, 999_999) == ""
    finally:
        cli("instance", "rm", "vram")
