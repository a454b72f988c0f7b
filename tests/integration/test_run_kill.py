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


def test_ctrl_c_kills_descendants_in_their_own_process_groups_and_sessions(tmp_path: Path) -> None:
    # `set -m` gives a background job its own process group, and setsid a session of its own, as ninja
    # (setsid since 1.12, a process group before) does for every compile command.
    script = (
        # The second reports its own pid once setsid has run (as `$!` it raced setsid under load).
        "set -m; sleep 300 & echo group=$!; setsid sh -c 'echo session=$$; exec sleep 301' & "
        "sh -c 'sleep 302 & echo child=$!; wait' & wait"
    )
    found: dict[str, int] = {}

    def on_line(line: str) -> None:
        kind, _, pid = line.strip().partition("=")
        if kind in ("group", "session", "child"):
            found[kind] = int(pid)
        if len(found) == 3:
            assert os.getpgid(found["group"]) != os.getpgid(os.getpid())
            assert os.getsid(found["session"]) == found["session"]  # a session of its own
            raise KeyboardInterrupt  # what Ctrl-C raises in the reading loop

    with pytest.raises(Interrupted):
        run.stream(["sh", "-c", script], log_path=tmp_path / "log", on_line=on_line)
    assert len(found) == 3
    assert [p for p in found.values() if _alive(p)] == []
    assert "interrupted by user" in (tmp_path / "log").read_text()
