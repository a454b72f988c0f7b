"""`nativellm bench NAME` and `nativellm doctor` against instances under a real systemd (issue 6).

A home of its own (the session's build borrowed, the demo model registered by path), so that
doctor sees only this file's instance and not what other e2e tests leave behind.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import USER_UNIT_DIR, InnerCli
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE, borrow_build

NAME = "bd"


@pytest.fixture(scope="module")
def bd(cli: InnerCli, sandbox: Sandbox) -> Iterator[InnerCli]:
    home = CACHE / "sessions" / f"bd-{uuid.uuid4().hex[:8]}"
    borrow_build(cli.home, home)
    inner = InnerCli(sandbox, home)
    demo = cli.json("model", "inspect", "demo")["model"]["path"]
    inner("model", "add", demo, "--name", "demo", "--json", check=True)
    inner(
        "instance", "add", NAME, "--model", "demo", "--ctx", "1024", "--parallel", "2", "--json", check=True
    )
    inner("start", NAME, check=True)
    try:
        yield inner
    finally:
        inner("instance", "rm", NAME)


def _doctor(inner: InnerCli) -> tuple[int, list[dict[str, Any]]]:
    res = inner("doctor", "--json")
    assert res.returncode in (0, 15), res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is (res.returncode == 0)
    return res.returncode, [f for f in doc["findings"] if not f["ok"]]


def _linger(sandbox: Sandbox) -> bool:
    out = sandbox.exec(["loginctl", "show-user", "root", "--property=Linger", "--value"], check=False).stdout
    return out.strip() == "yes"


# Enough tokens per request that decoding, not per-request overhead, sets the aggregate: with 8 tokens
# a request took ~30 ms and the concurrency-2 ratio swung between runs (0.67 to 1.3 on this VM).
TOKENS = 48


def test_bench_by_instance_name_against_the_systemd_instance(bd: InnerCli) -> None:
    res = bd("bench", NAME, "--concurrency", "1,2", "--requests", "4", "--prompt-tokens", "32",
             "--max-tokens", str(TOKENS), "--json", check=True)  # fmt: skip
    doc = json.loads(res.stdout)
    port = bd.json("instance", "show", NAME)["spec"]["port"]
    assert doc["url"] == f"http://127.0.0.1:{port}"
    assert doc["warmup"]["ok"] and doc["warmup"]["completion_tokens"] == TOKENS
    by_level = {lv["concurrency"]: lv for lv in doc["levels"]}
    assert sorted(by_level) == [1, 2]
    for lv in by_level.values():
        assert lv["errors"] == 0 and lv["completion_tokens"] == 4 * TOKENS
        assert 0 < lv["ttft_p50_s"] <= lv["ttft_p95_s"]
        assert lv["decode_tps_per_stream"] > 0 and lv["prompt_tps"] > 0 and lv["aggregate_tps"] > 0
        assert lv["aggregate_tps"] == pytest.approx(lv["completion_tokens"] / lv["wall_s"], rel=1e-6)
        assert lv["decode_tps_per_stream"] >= lv["aggregate_tps"] / lv["concurrency"] * 0.5
    # How c2 scales against c1 is a speed figure, printed here and measured side by side by
    # benchmarks/ (serving phase); asserted on this shared 2-core VM it failed whenever other work
    # ran (per-stream 24 t/s at c1 against 105 at c2 under load), so it is not asserted.
    print(
        f"\nbench c1/c2 aggregate {by_level[1]['aggregate_tps']:.0f}/{by_level[2]['aggregate_tps']:.0f} t/s, "
        f"per stream {by_level[1]['decode_tps_per_stream']:.0f}/{by_level[2]['decode_tps_per_stream']:.0f}"
    )


def test_doctor_finds_a_hand_edited_unit_a_stolen_port_and_lingering_off(
    bd: InnerCli, sandbox: Sandbox
) -> None:
    was_lingering = _linger(sandbox)
    try:
        sandbox.exec(["loginctl", "enable-linger", "root"])
        rc, problems = _doctor(bd)
        assert (rc, problems) == (0, []), problems  # healthy: running instance, its own port in use

        dropin = sandbox.host_path(f"{USER_UNIT_DIR}/llama@{NAME}.service.d/50-nativellm.conf")
        dropin.write_text(dropin.read_text() + "Environment=HACKED=1\n")
        rc, problems = _doctor(bd)
        assert rc == 15 and len(problems) == 1 and "edited by hand" in problems[0]["message"], problems
        assert f"nativellm instance edit {NAME}" in problems[0]["fix"]
        bd("instance", "edit", NAME, "--json", check=True)  # re-render repairs it
        assert _doctor(bd) == (0, [])

        port = bd.json("instance", "show", NAME)["spec"]["port"]
        bd("stop", NAME, check=True)
        with socket.socket() as thief:  # the sandbox shares the host's network namespace
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the stopped server's TIME_WAIT
            thief.bind(("127.0.0.1", port))
            thief.listen()
            rc, problems = _doctor(bd)
            assert rc == 15 and len(problems) == 1 and f"port {port} is taken" in problems[0]["message"]
        assert _doctor(bd) == (0, [])

        # Last: logind stops a user manager that neither lingers nor has a session.
        sandbox.exec(["loginctl", "disable-linger", "root"])
        rc, problems = _doctor(bd)
        assert rc == 15 and [p["check"] for p in problems] == ["linger"], problems
        assert "loginctl enable-linger" in problems[0]["fix"]
    finally:
        sandbox.exec(["loginctl", "enable-linger" if was_lingering else "disable-linger", "root"])
        # logind may be stopping the user manager; wait for that, then bring it back for later tests.
        sandbox.systemctl("stop", "user@0.service")
        sandbox.start_user_manager()
        bd("start", NAME)


def test_doctor_finds_a_removed_model_and_prints_each_fix(bd: InnerCli) -> None:
    model = bd.json("model", "inspect", "demo")["model"]["path"]
    res = bd("model", "add", model, "--name", "gone", "--copy", "--json", check=True)
    copy = Path(json.loads(res.stdout)["data"]["model"]["path"])
    assert copy != Path(model) and copy.is_file()
    try:
        copy.unlink()
        res = bd("doctor")
        assert res.returncode == 15, res.stdout
        assert "model gone" in res.stdout and "fix:" in res.stdout
        assert "problem(s) found" in res.stderr and "Traceback" not in res.stderr
    finally:
        bd("model", "rm", "gone")
    assert [p for p in _doctor(bd)[1] if p["check"] == "models"] == []
