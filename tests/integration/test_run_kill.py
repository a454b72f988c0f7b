"""run.stream's Ctrl-C path leaves no process behind, also one that left the child's process group,
as every compile command of ninja does (the leak behind issue 13's Ctrl-C test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nativellm import run
from nativellm.errors import Interrupted


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_kills_grandchildren_in_their_own_process_groups(tmp_path: Path) -> None:
    # `set -m` gives each background job its own process group, like ninja does for its commands.
    script = "set -m; sleep 300 & echo pid=$!; sleep 300 & echo pid=$!; echo started; wait"
    pids: list[int] = []

    def on_line(line: str) -> None:
        if line.startswith("pid="):
            pids.append(int(line[4:]))
        if line == "started":
            assert all(os.getpgid(p) != os.getpgid(os.getpid()) for p in pids)
            raise KeyboardInterrupt  # what Ctrl-C raises in the reading loop

    with pytest.raises(Interrupted):
        run.stream(["sh", "-c", script], log_path=tmp_path / "log", on_line=on_line)
    assert len(pids) == 2
    assert [p for p in pids if _alive(p)] == []
    assert "interrupted by user" in (tmp_path / "log").read_text()
