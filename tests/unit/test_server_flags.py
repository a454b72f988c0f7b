"""The argv is rendered, and a completion judged, for the llama-server at hand: real `--help` and
/v1/completions answers of the oldest vintage (llama.cpp 74d73dc, 2024-11, llama-cpp-python 0.3.2)
and of the newest (b11312, 0.3.36)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from nativellm.client import completion_answer_problem
from nativellm.errors import InstanceError
from nativellm.paths import Scope
from nativellm.serve import healthcheck
from nativellm.serve.dropins import render_dropin, server_argv
from nativellm.serve.server_flags import ServerFlags, parse_server_help
from nativellm.specs import InstanceSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama_server"
OLD = parse_server_help((FIXTURES / "help-2024-11-74d73dc.txt").read_text())
NEW = parse_server_help((FIXTURES / "help-b11312.txt").read_text())
SPEC = InstanceSpec(name="q4", model="m", port=8080, ctx=1024, threads=2, metrics=False)


def _argv(spec: InstanceSpec, flags: ServerFlags) -> list[str]:
    return server_argv(spec, Path("/b/llama-server"), Path("/m.gguf"), api_key_path=None, flags=flags)


def test_help_parsing_reads_every_option_line() -> None:
    for flags in (OLD, NEW):
        assert {"--model", "--alias", "--ctx-size", "--threads", "--n-gpu-layers", "-ngl", "--metrics",
                "--api-key-file", "--cache-type-k", "--flash-attn", "-fa", "--help"} <= flags.known  # fmt: skip
        assert not any(f.endswith(",") or "|" in f for f in flags.known)
    assert "--no-webui" in NEW.known and "--no-webui" not in OLD.known
    assert "--cache-type-k-draft" in NEW.known  # listed after an alias on its line
    assert "--rpc" not in OLD.known  # that CPU build had no RPC backend


def test_flash_attn_took_no_value_before_2025() -> None:
    assert OLD.flash_attn_takes_value is False and NEW.flash_attn_takes_value is True
    spec = replace(SPEC, flash_attn="on")
    assert _argv(spec, NEW)[-2:] == ["--flash-attn", "on"]
    assert _argv(spec, OLD)[-1] == "--flash-attn" and "on" not in _argv(spec, OLD)
    for mode in ("off", "auto"):  # off was the old default, and it had no auto
        assert "--flash-attn" not in _argv(replace(SPEC, flash_attn=mode), OLD)
        assert _argv(replace(SPEC, flash_attn=mode), NEW)[-2:] == ["--flash-attn", mode]


def test_mlock_spelling_follows_the_server() -> None:
    spec = replace(SPEC, mlock=True)
    assert OLD.mlock_args == ("--mlock",) and "--mlock" in _argv(spec, OLD)
    assert NEW.mlock_args == ("--load-mode", "mmap+mlock")
    assert _argv(spec, NEW)[-2:] == ["--load-mode", "mmap+mlock"] and "--mlock" not in _argv(spec, NEW)


def test_default_instance_renders_the_same_flags_for_both_vintages() -> None:
    spec = replace(SPEC, metrics=True)
    assert _argv(spec, OLD) == _argv(spec, NEW) == _argv(spec, ServerFlags())
    assert "--metrics" in _argv(spec, OLD)


def test_unknown_server_means_todays_spelling() -> None:
    assert parse_server_help("") == ServerFlags()
    spec = replace(SPEC, flash_attn="auto", mlock=True, rpc=("10.0.0.5:50052",))
    assert _argv(spec, ServerFlags())[-5:] == ["--flash-attn", "auto", "--mlock", "--rpc", "10.0.0.5:50052"]


def test_a_flag_the_old_server_lacks_is_an_error_before_any_unit_is_written() -> None:
    spec = replace(SPEC, rpc=("10.0.0.5:50052",))
    assert "--rpc" in _argv(spec, NEW)
    with pytest.raises(InstanceError) as err:
        _argv(spec, OLD)
    assert "--rpc" in err.value.message and "instance edit q4" in (err.value.hint or "")
    # Only what nativellm renders is checked: extra args are the user's own business.
    assert _argv(replace(SPEC, extra_args=("--no-such-flag",)), OLD)[-1] == "--no-such-flag"
    # A setting that only feeds `status` is left out rather than failing the instance.
    assert "--metrics" not in _argv(
        replace(SPEC, metrics=True), ServerFlags(OLD.known - {"--metrics"}, False)
    )


def test_a_completion_answer_of_either_vintage_counts() -> None:
    """/v1/completions of the 2024 server answers in /completion's own shape (no `choices`): the
    upgrade's completion check must accept it, or every rollback onto an old tag "fails"."""
    old = json.loads((FIXTURES / "v1-completions-2024-11-74d73dc.json").read_text())
    new = json.loads((FIXTURES / "v1-completions-b11312.json").read_text())
    assert "choices" not in old and old["tokens_predicted"] == 4
    assert completion_answer_problem(old) is None and completion_answer_problem(new) is None
    assert completion_answer_problem({**new, "choices": []}) == "the completion returned no choices"
    assert completion_answer_problem({**old, "tokens_predicted": 0}) == "the completion returned no tokens"
    assert completion_answer_problem({"error": "x"}) is not None
    assert completion_answer_problem([]) is not None


def test_the_unit_waits_for_a_bind_with_the_servers_own_socket_options() -> None:
    """Servers before --reuse-port (early 2026) bind with SO_REUSEPORT only, today's with SO_REUSEADDR."""
    from tests.unit.test_units import BASIC, _resolved

    assert (OLD.socket_reuse, NEW.socket_reuse, ServerFlags().socket_reuse) == ("port", "addr", "addr")
    wait = ("ExecStartPre=/usr/bin/python3 -I /usr/lib/python3/dist-packages/nativellm/healthcheck.py "
            "port --host 127.0.0.1 --port 8080 --reuse {} --timeout 65\n")  # fmt: skip
    assert wait.format("port") in render_dropin(BASIC, replace(_resolved(Scope.USER), flags=OLD))
    assert wait.format("addr") in render_dropin(BASIC, replace(_resolved(Scope.USER), flags=NEW))
    system = render_dropin(BASIC, replace(_resolved(Scope.SYSTEM), flags=OLD))
    assert "ExecStartPre=+/usr/bin/python3" in system  # outside the sandbox, like the readiness wait


def _time_wait_port(reuse: int) -> int:
    """A loopback port whose server (socket option `reuse`) closed first: its side of the
    connection lingers in TIME_WAIT for 60 s."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, reuse, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = int(srv.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()
    client.close()
    srv.close()
    return port


@pytest.mark.parametrize(
    ("before", "after"),
    [(socket.SO_REUSEADDR, "port"), (socket.SO_REUSEPORT, "addr")],
    ids=["rollback", "upgrade"],
)
def test_the_port_wait_sees_time_wait_across_the_eras_as_the_server_does(
    before: int, after: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What failed for real: today's server stopped, the 2024 one could not bind (and the other way)."""
    port = _time_wait_port(before)
    assert healthcheck.bind_ok("127.0.0.1", port, after) is False
    same = "addr" if before == socket.SO_REUSEADDR else "port"
    assert healthcheck.bind_ok("127.0.0.1", port, same) is True  # same era: no wait
    t0 = time.monotonic()
    argv = ["port", "--host", "127.0.0.1", "--port", str(port), "--reuse", after, "--timeout", "0.5"]
    assert healthcheck.main(argv) == 0
    assert 0.5 <= time.monotonic() - t0 < 5
    assert "still has connections in TIME_WAIT after 0.5s" in capsys.readouterr().err


def test_the_port_wait_returns_at_once_when_waiting_cannot_help() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        free = int(other.getsockname()[1])
    assert healthcheck.bind_ok("127.0.0.1", free, "port") is True
    t0 = time.monotonic()
    assert healthcheck.wait_port("127.0.0.1", free, "addr", timeout=30) == 0 and time.monotonic() - t0 < 1
    with socket.socket() as listener:  # a real listener: the server will say so itself
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = int(listener.getsockname()[1])
        assert healthcheck.bind_ok("127.0.0.1", busy, "addr") is False
        t0 = time.monotonic()
        assert healthcheck.wait_port("127.0.0.1", busy, "addr", timeout=30) == 0 and time.monotonic() - t0 < 2
    assert healthcheck.bind_ok("192.0.2.1", free, "addr") is None  # not ours: the server says why


class _Health(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as llama-server

    def do_GET(self) -> None:
        code = 200 if self.path == "/health" else 503
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _probe_then_stop(probe: Callable[[str], object]) -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)  # SO_REUSEADDR, as today's
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            probe(f"http://127.0.0.1:{port}/health")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    return port


def test_our_own_probes_leave_no_time_wait_on_the_servers_port() -> None:
    """The readiness wait and hang probe close first, so a rollback onto the other era's server
    need not wait out their connections; urllib's `Connection: close` would leave them there."""
    assert healthcheck._status("http://127.0.0.1:1/health", timeout=1) is None
    port = _probe_then_stop(lambda url: healthcheck._status(url, timeout=5))
    assert healthcheck.bind_ok("127.0.0.1", port, "port") is True
    port = _probe_then_stop(lambda url: urllib.request.urlopen(url, timeout=5).read())
    assert healthcheck.bind_ok("127.0.0.1", port, "port") is False


def test_status_reads_any_answer() -> None:
    codes: list[object] = []
    _probe_then_stop(lambda url: codes.append(healthcheck._status(url.replace("/health", "/x"), timeout=5)))
    assert codes == [503, 503, 503]
