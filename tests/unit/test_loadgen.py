"""The load generator: per-stream decode speed (a burst-delivered stream must not read as thousands of
tokens a second), and a bench where every request failed is an error, against real loopback servers."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from nativellm.errors import InstanceError, UsageError
from nativellm.ops.loadgen import RequestResult, check_url, run_load


def test_decode_speed_prefers_the_servers_own_timing() -> None:
    # 8 tokens that reached the client in one read: the client-side span is 0.1 ms.
    burst = RequestResult(True, ttft_s=1.0, total_s=1.0001, completion_tokens=8, server_decode_tps=150.0)
    assert burst.decode_tps == 150.0


def test_without_server_timings_the_client_span_is_used() -> None:
    assert RequestResult(True, ttft_s=1.0, total_s=2.0, completion_tokens=11).decode_tps == 10.0
    assert RequestResult(True, ttft_s=1.0, total_s=1.0, completion_tokens=1).decode_tps == 0.0


# --------------------------------------------------------------------------- a bench where every request fails
STREAM = (
    b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    b'data: {"choices": [], "usage": {"completion_tokens": 1, "prompt_tokens": 3}}\n\n'
    b"data: [DONE]\n\n"
)


@contextlib.contextmanager
def server(answer: Callable[[int], int]) -> Iterator[str]:
    """A real HTTP server on loopback; `answer(n)` is the status of the n-th request (200: a stream)."""
    count = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status = answer(next(count))
            body = STREAM if status == 200 else b"boom"
            self.send_response(status)
            self.send_header("content-type", "text/event-stream" if status == 200 else "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_request_answered_500_is_an_instance_error() -> None:
    with server(lambda n: 500) as url, pytest.raises(InstanceError) as exc:
        run_load(url, concurrency=[1], requests=2, duration=10, target="instance 'q4'")
    assert exc.value.exit_code == 10
    assert exc.value.message == "every request to instance 'q4' failed (3 sent; the first: HTTP 500: boom)"


def test_a_closed_port_fails_at_the_warm_up_without_running_the_levels() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(InstanceError) as exc:
        run_load(url, concurrency=[1, 4, 8], requests=16, duration=10)
    assert exc.value.message.startswith(f"every request to {url} failed (1 sent; the first: ConnectError")


def test_partial_failures_are_reported_not_raised() -> None:
    with server(lambda n: 500 if n % 2 else 200) as url:  # the warm-up (0) works, then every other one
        report = run_load(url, concurrency=[1], requests=4, duration=10)
    assert report.warmup.ok
    assert (report.levels[0].requests, report.levels[0].errors) == (4, 2)
    with server(lambda n: 500 if n == 0 else 200) as url:  # a failed warm-up alone is reported too
        report = run_load(url, concurrency=[1], requests=2, duration=10)
    assert not report.warmup.ok and report.levels[0].errors == 0


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "127.0.0.1:8080", "http://", "http://a\rb:80", "file:///x"]
)
def test_only_http_urls_are_benchmarked(url: str) -> None:
    with pytest.raises(UsageError, match="not an http:// or https:// URL|control character"):
        run_load(url, concurrency=[1], requests=1, duration=1)
    assert check_url("https://gpu-2.lan:8443/") == "https://gpu-2.lan:8443/"
