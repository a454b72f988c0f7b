"""Readiness wait and hang probe that systemd runs next to llama-server (stdlib only).

Units run this file directly (`python3 -I .../healthcheck.py ...`), so it must not import
nativellm or any third-party package: it works even if the environment nativellm was
installed into is later broken, and it starts in a few milliseconds.

    ready --url URL --timeout S         exit 0 once URL answers 200 (ExecStartPost=)
    probe --url URL [--tries N] -- CMD  exec CMD when URL gives no HTTP answer N times in a row
    port --host H --port P --reuse addr|port --timeout S
                                        exit 0 once a server that sets SO_REUSEADDR (or only
                                        SO_REUSEPORT) can bind H:P (ExecStartPre=)

Neither sits on the request path: clients talk to llama-server directly.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import os
import socket
import sys
import time
import urllib.parse


def _status(url: str, timeout: float) -> int | None:
    """The HTTP status of GET url, or None when nothing answered in time.

    HTTP/1.1 keep-alive, closed by this side once the answer is read: the side that closes first
    keeps the connection in TIME_WAIT, and on the server's side that would block, for 60 s, a
    restart onto a llama-server of the other socket-option era (ServerFlags.socket_reuse).
    urllib asks the server to close (`Connection: close`)."""
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    except ValueError:
        return None
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
        return int(resp.status)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(url: str, timeout: float, interval: float = 0.2, main_pid: int | None = None) -> int:
    """Poll url until 200. systemd keeps a start-post job running even after the main process
    died, so stop as soon as $MAINPID is gone: the start then fails at once."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        if not _alive(main_pid):
            print(f"llama-server (pid {main_pid}) exited before it was ready", file=sys.stderr)
            return 1
        last = _status(url, timeout=5)
        if last == 200:
            return 0
        time.sleep(interval)
    print(
        f"llama-server did not become ready at {url} within {timeout:g}s (last status {last})",
        file=sys.stderr,
    )
    return 1


def probe(url: str, tries: int, timeout: float, pause: float, then: list[str]) -> int:
    for attempt in range(tries):
        if _status(url, timeout) is not None:
            return 0  # any answer (200, or 503 while loading) means the server is alive
        if attempt + 1 < tries:
            time.sleep(pause)
    print(
        f"llama-server gave no answer at {url} in {tries} tries; it is hung: running {' '.join(then)}",
        file=sys.stderr,
    )
    sys.stderr.flush()
    if not then:
        return 1
    os.execv(then[0], then)
    return 1  # pragma: no cover


def bind_ok(host: str, port: int, reuse: str) -> bool | None:
    """Could llama-server bind host:port now? It sets SO_REUSEADDR (`reuse="addr"`, since early
    2026) or, before, only SO_REUSEPORT (`"port"`, cpp-httplib's default on Linux). Linux refuses
    either while sockets that a server with the *other* option closed on that port linger in
    TIME_WAIT (up to 60 s): exactly the state after a restart from one llama.cpp era into the
    other. None: some other failure, which the server reports better itself."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError:
        return None
    with sock:
        option = socket.SO_REUSEADDR if reuse == "addr" else getattr(socket, "SO_REUSEPORT", None)
        if option is not None:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return False if exc.errno == errno.EADDRINUSE else None
    return True


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, reuse: str, timeout: float, interval: float = 0.25) -> int:
    """Wait (at most `timeout`) until the server can bind; then, or when a process really listens
    there (waiting would not help), let it start and report for itself. Always 0."""
    deadline = time.monotonic() + timeout
    while bind_ok(host, port, reuse) is False and not _listening(host, port):
        if time.monotonic() >= deadline:
            print(f"port {port} on {host} still has connections in TIME_WAIT after {timeout:g}s; "
                  "starting llama-server anyway", file=sys.stderr)  # fmt: skip
            break
        time.sleep(interval)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nativellm-healthcheck")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("--url", required=True)
    r.add_argument("--timeout", type=float, default=900)
    p = sub.add_parser("probe")
    p.add_argument("--url", required=True)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=3)
    p.add_argument("--pause", type=float, default=1)
    p.add_argument("then", nargs=argparse.REMAINDER)
    w = sub.add_parser("port")
    w.add_argument("--host", required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--reuse", choices=("addr", "port"), default="addr")
    w.add_argument("--timeout", type=float, default=65)
    args = parser.parse_args(argv)
    if args.cmd == "port":
        return wait_port(args.host, args.port, args.reuse, args.timeout)
    if args.cmd == "ready":
        main_pid = os.environ.get("MAINPID", "")
        return wait_ready(args.url, args.timeout, main_pid=int(main_pid) if main_pid.isdigit() else None)
    then = list(args.then[1:] if args.then[:1] == ["--"] else args.then)
    return probe(args.url, args.tries, args.timeout, args.pause, then)


if __name__ == "__main__":
    sys.exit(main())
