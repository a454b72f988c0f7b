"""Readiness wait and hang probe that systemd runs next to llama-server (stdlib only).

Units run this file directly (`python3 -I .../healthcheck.py ...`), so it must not import
nativellm or any third-party package: it works even if the environment nativellm was
installed into is later broken, and it starts in a few milliseconds.

    ready --url URL --timeout S         exit 0 once URL answers 200 (ExecStartPost=)
    probe --url URL [--tries N] -- CMD  exec CMD when URL gives no HTTP answer N times in a row

Neither sits on the request path: clients talk to llama-server directly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request


def _status(url: str, timeout: float) -> int | None:
    """The HTTP status of GET url, or None when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


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
    args = parser.parse_args(argv)
    if args.cmd == "ready":
        main_pid = os.environ.get("MAINPID", "")
        return wait_ready(args.url, args.timeout, main_pid=int(main_pid) if main_pid.isdigit() else None)
    then = list(args.then[1:] if args.then[:1] == ["--"] else args.then)
    return probe(args.url, args.tries, args.timeout, args.pause, then)


if __name__ == "__main__":
    sys.exit(main())
