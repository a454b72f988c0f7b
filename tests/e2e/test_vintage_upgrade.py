"""An instance upgraded from the oldest vintage to the newest and rolled back, under the real
systemd (issue 12): llama.cpp of November 2024 (llama-cpp-python 0.3.2's tree) -> the suite's
own tree (0.3.36, b11312) -> back, with /health 200 and a real completion after each step.

The instance asks for `--flash-attn on` and `--mlock`, which the two servers spell differently
(a bare `--flash-attn` switch and `--mlock` in 2024; `--flash-attn on` and `--load-mode
mmap+mlock` today): each server exits on the other's spelling, so the units must be re-rendered
for the build each step moves to. The running server's own argv is checked after every step.

Before each step a client that asks the server to close (`Connection: close`, as urllib and many
HTTP clients do) leaves the port in TIME_WAIT. The two servers set different socket options
(SO_REUSEPORT only in 2024, SO_REUSEADDR today), so the next one cannot bind for up to 60 s: its
unit waits for the port (ExecStartPre) instead of failing into systemd's start limit. Each such
step takes about a minute for that reason.

The old build compiles in a store at the session homes' depth, so ccache hits as in
tests/integration/test_vintage_build.py; the new one is the session's build, linked into that
store, so `upgrade --source` finds it already built (or compiles it, with ccache, if the ids
differ). Marked `vintage`.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nativellm.serve import healthcheck
from tests.e2e.conftest import InnerCli
from tests.e2e.sandbox import Sandbox
from tests.e2e.test_instances import _record, healthy, unit
from tests.e2e.test_upgrade import _build_of, _current, _pid
from tests.helpers import CACHE, CliResult, _fetch_sdist, nativellm
from tests.integration.test_vintages import VINTAGES

pytestmark = [pytest.mark.slow, pytest.mark.vintage]
OLDEST = min(VINTAGES, key=lambda v: v.released)
NEWEST = max(VINTAGES, key=lambda v: v.released)
NAME = "vintage"


def _link_build(source_home: Path, home: Path) -> str:
    """Link `source_home`'s current build into `home`'s store, not as current; returns its id."""
    build = (source_home / "data" / "current").resolve()
    (home / "data" / "builds" / build.name).symlink_to(build)
    return build.name


@pytest.fixture(scope="module")
def vint(sandbox: Sandbox, session_home: Path, auto_build: CliResult) -> Iterator[tuple[InnerCli, str, str]]:
    """A store whose current build is the oldest vintage, with the session's newest build beside it,
    the demo model, and instance NAME running on the old build under systemd."""
    home = CACHE / "sessions" / uuid.uuid4().hex[:12]  # the session homes' depth: ccache hits
    home.mkdir(parents=True)
    inner = InnerCli(sandbox, home)
    try:
        t0 = time.monotonic()
        res = nativellm("build", "--auto", "--source", str(_fetch_sdist(OLDEST.sdist)), "--json",
                        home=home, timeout=3600)  # fmt: skip
        assert res.returncode == 0, f"{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
        _record("vintage_oldest_build_s", time.monotonic() - t0)
        old = res.json()["data"]["build_id"]
        new = _link_build(session_home, home)
        assert old != new
        # One model file for both servers, tokenizer from the newest tree (its llama-spm vocab is
        # byte-identical to the 2024 tree's): the model must load in the 2024 server too.
        vocab = str(_fetch_sdist(NEWEST.sdist))
        assert nativellm("model", "demo", "--vocab", vocab, "--json", home=home, timeout=600).returncode == 0
        inner("instance", "add", NAME, "--model", "demo", "--ctx", "1024", "--flash-attn", "on", "--mlock",
              "--json", check=True)  # fmt: skip
        inner("start", NAME, check=True)
        yield inner, old, new
    finally:
        inner("instance", "rm", NAME)
        shutil.rmtree(home, ignore_errors=True)


def _argv(cli: InnerCli) -> list[str]:
    """The running server's own command line (what systemd really started)."""
    raw = cli.sb.exec(["cat", f"/proc/{_pid(cli, NAME)}/cmdline"]).stdout
    return raw.split("\0")[:-1]


def _serves(cli: InnerCli) -> int:
    """/health 200 and a real completion through the instance; returns the tokens generated.
    llama-server's own /completion: the 2024 server answered /v1/completions in that shape too,
    without OpenAI's `choices` and `usage` (the upgrade's own check accepts both)."""
    port = int(cli.json("instance", "show", NAME)["spec"]["port"])
    assert healthy(port)
    r = httpx.post(f"http://127.0.0.1:{port}/completion",
                   json={"prompt": "Once upon a time", "n_predict": 8, "temperature": 0}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    tokens = int(r.json()["tokens_predicted"])
    assert tokens > 0 and r.json()["content"], r.text
    return tokens


def _leave_time_wait(cli: InnerCli, next_reuse: str) -> None:
    """A request whose client asks the server to close: the server's side of it lingers in
    TIME_WAIT, which (checked here) blocks a bind with the next server's socket options."""
    port = int(cli.json("instance", "show", NAME)["spec"]["port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:  # Connection: close
        assert r.status == 200
    assert healthcheck.bind_ok("127.0.0.1", port, next_reuse) is False


def _on_old_server(argv: list[str]) -> None:
    i = argv.index("--flash-attn")
    assert argv[i + 1].startswith("-"), argv  # the 2024 switch takes no value ("on" would be an error)
    assert "--mlock" in argv and "--load-mode" not in argv, argv


def _on_new_server(argv: list[str]) -> None:
    assert argv[argv.index("--flash-attn") + 1] == "on", argv
    assert argv[argv.index("--load-mode") + 1] == "mmap+mlock" and "--mlock" not in argv, argv


def test_oldest_vintage_upgrades_to_the_newest_and_rolls_back(vint: tuple[InnerCli, str, str]) -> None:
    cli, old, new = vint
    assert _current(cli) == old and _build_of(cli, NAME) == old
    _on_old_server(_argv(cli))
    tokens = {"old": _serves(cli)}

    pid = _pid(cli, NAME)
    _leave_time_wait(cli, "addr")  # today's server binds with SO_REUSEADDR
    t0 = time.monotonic()
    res = cli("upgrade", "--source", str(_fetch_sdist(NEWEST.sdist)), "--json", timeout=3600)
    _record("vintage_upgrade_s", time.monotonic() - t0)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)["data"]
    assert (data["previous"], data["current"]) == (old, new), data
    assert [(s["instance"], s["result"]) for s in data["steps"]] == [(NAME, "upgraded")], data
    assert _pid(cli, NAME) != pid and _build_of(cli, NAME) == new
    assert unit(cli.sb, NAME)["NRestarts"] == "0"  # it waited for its port, it did not crash-loop
    status = cli.json("status", NAME)["instances"][0]
    assert status["active_state"] == "active" and status["healthy"] is True, status
    _on_new_server(_argv(cli))
    tokens["new"] = _serves(cli)

    pid = _pid(cli, NAME)
    _leave_time_wait(cli, "port")  # the 2024 server binds with SO_REUSEPORT only
    t0 = time.monotonic()
    doc = cli.json("builds", "rollback")
    _record("vintage_rollback_s", time.monotonic() - t0)
    assert (doc["data"]["current"], doc["data"]["previous"]) == (old, new), doc
    assert doc["data"]["restarted"] == [NAME] and doc["data"]["systemd"] is True, doc
    assert _pid(cli, NAME) != pid and _build_of(cli, NAME) == old and _current(cli) == old
    assert unit(cli.sb, NAME)["NRestarts"] == "0"
    _on_old_server(_argv(cli))
    tokens["rolled_back"] = _serves(cli)
    print(f"\nvintage upgrade {old} -> {new} -> {old}: completion tokens {tokens}")
