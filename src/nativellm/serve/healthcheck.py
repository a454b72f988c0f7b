"""Readiness wait and hang probe that systemd runs next to llama-server (stdlib only).

Units run this file directly (`python3 -I .../healthcheck.py ...`), so it must not import
nativellm or any third-party package: it works even if the environment nativellm was
installed into is later broken, and it starts in a few milliseconds.

    ready --url URL --timeout S [--gpu-layers N] [--models A,B [--warmup] [--api-key-file F]]
                                        exit 0 once URL answers 200 (ExecStartPost=) and, with
                                        --gpu-layers, once llama-server's own load log (this
                                        invocation's journal) shows layers on a GPU; with --models
                                        (a router), once each is loaded (and answered one warm-up
                                        request); with --engine mlx, once a one-token
                                        completion succeeds; else exit 1
    offload --gpu-layers N --log FILE   the same offload verdict on a saved log (the smoke test)
    devices --timeout S -- SERVER --list-devices
                                        exit 0 once llama-server lists a GPU device it can use
                                        (ExecStartPre=, with the unit's environment); else exit 1
    device --path P --timeout S         exit 0 once the GPU's device node exists (ExecStartPre=)
    probe --url URL [--tries N] -- CMD  exec CMD when URL gives no HTTP answer N times in a row
    port --host H --port P --reuse addr|port --timeout S
                                        exit 0 once a server that sets SO_REUSEADDR (or only
                                        SO_REUSEPORT) can bind H:P (ExecStartPre=)

Neither sits on the request path: clients talk to llama-server directly.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import http.client
import json
import os
import re
import select
import signal
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass


def _http(url: str, timeout: float, method: str = "GET", path: str | None = None,
          body: object = None, key: str | None = None) -> tuple[int | None, object]:  # fmt: skip
    """(HTTP status, JSON body or None) of one request to url's host (at `path`, else url's own), or
    (None, None) when nothing answered in time.

    HTTP/1.1 keep-alive, closed by this side once the answer is read: the side that closes first
    keeps the connection in TIME_WAIT, and on the server's side that would block, for 60 s, a
    restart onto a llama-server of the other socket-option era (ServerFlags.socket_reuse).
    urllib asks the server to close (`Connection: close`)."""
    parts = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    except ValueError:
        return None, None
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    try:
        conn.request(method, path or parts.path or "/", body=None if body is None else json.dumps(body),
                     headers=headers)  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
        try:
            return int(resp.status), json.loads(data or b"null")
        except ValueError:
            return int(resp.status), None
    except (OSError, http.client.HTTPException, ValueError):
        return None, None
    finally:
        conn.close()


def _status(url: str, timeout: float) -> int | None:
    """The HTTP status of GET url, or None when nothing answered in time."""
    return _http(url, timeout)[0]


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


def _generates(url: str, timeout: float) -> int | None:
    """POST a one-token completion next to the health URL; its HTTP status, or None."""
    return _http(url, timeout, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0]


def wait_models(base: str, models: list[str], key: str | None, timeout: float, warmup: bool,
                interval: float = 0.2) -> int:  # fmt: skip
    """A router's start-up models: each loaded (not failed) within `timeout`, then one short real
    request to each (the warm-up), so the first user request does not pay the cold cost."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        _, doc = _http(base, 5, "GET", "/models", key=key)
        states = {}
        for item in (doc or {}).get("data") or [] if isinstance(doc, dict) else []:
            st = item.get("status") or {}
            states[item.get("id")] = "failed" if st.get("failed") else st.get("value")
        for m in list(pending):
            if states.get(m) == "failed":
                print(f"router model {m} failed to load (see the log above)", file=sys.stderr)
                return 1
            if states.get(m) == "loaded":
                pending.remove(m)
        if pending and time.monotonic() >= deadline:
            print(f"router models not loaded within {timeout:g}s: {', '.join(pending)}", file=sys.stderr)
            return 1
        if pending:
            time.sleep(interval)
    for m in models if warmup else []:
        body = {"model": m, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        status, _ = _http(base, max(5.0, deadline - time.monotonic()), "POST", "/v1/completions", body, key)
        if status != 200:
            print(f"warm-up request to router model {m} failed (HTTP {status})", file=sys.stderr)
            return 1
    return 0


def wait_generates(url: str, timeout: float, interval: float = 0.2, main_pid: int | None = None) -> int:
    """mlx_lm.server (--engine mlx) answers /health 200 as soon as its HTTP thread runs, while the
    model still loads in its generation thread: it is ready once a one-token completion succeeds
    (the request waits for the load)."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        if not _alive(main_pid):
            print(f"mlx_lm.server (pid {main_pid}) exited before it was ready", file=sys.stderr)
            return 1
        last = _generates(url, timeout=max(1.0, deadline - time.monotonic()))
        if last == 200:
            return 0
        time.sleep(interval)
    print(
        f"mlx_lm.server did not generate at {url} within {timeout:g}s (last status {last})", file=sys.stderr
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


# --- Offload: is llama-server really serving from the GPU it was asked to use? -----------------
# The exact lines this llama.cpp prints while loading (src/llama.cpp, src/llama-model.cpp,
# common/arg.cpp, ggml/src/ggml-cuda/ggml-cuda.cu, ggml/src/ggml-vulkan/ggml-vulkan.cpp). Neither
# /health nor /props says where the weights are, so the load log is the evidence.
OFFLOAD_FAILED = "offload check failed: "  # the prefix `status` and `doctor` look for in the journal
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_USING = re.compile(r"using device (\S+) \((.*)\) \(")
_NO_GPU = re.compile(r"no usable GPU found")
# Lines that say why there is no GPU; the first that matches is quoted in the verdict.
_CAUSES = (
    re.compile(r"ggml_cuda_init: failed to initialize \w+: .*"),
    re.compile(r"ggml_vulkan: Invalid device index .*"),
    re.compile(r"ggml_vulkan: Device with index \d+ does not exist\."),
    re.compile(r"invalid value for main_gpu: .*"),
    re.compile(r"cudaMalloc failed: .*|unable to allocate \S+ buffer"),
)
# A log that has one of these is complete as far as offload goes (the load is over).
_LOAD_DONE = re.compile(r"offloaded \d+/\d+ layers to GPU|model loaded|listening on|no usable GPU found")


@dataclass(frozen=True)
class Offload:
    """What llama-server's load log says about GPU offload."""

    devices: tuple[str, ...]  # "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))", one per device used
    offloaded: int | None  # N of "offloaded N/M layers to GPU"; None when the line is missing
    total: int | None  # M
    no_gpu: bool  # "no usable GPU found": a build without a GPU backend, or no device visible
    cause: str | None  # the driver's own line saying why, where it printed one


def read_offload(log: str) -> Offload:
    devices: list[str] = []
    offloaded = total = None
    cause = None
    for line in log.splitlines():
        m = _USING.search(line)
        if m and m.group(1) not in {d.split(" ", 1)[0] for d in devices}:
            devices.append(f"{m.group(1)} ({m.group(2)})")
        m = _OFFLOADED.search(line)
        if m:
            offloaded, total = int(m.group(1)), int(m.group(2))
        for pattern in _CAUSES:
            c = pattern.search(line)
            if c and cause is None:
                cause = c.group(0).strip()
    return Offload(tuple(devices), offloaded, total, bool(_NO_GPU.search(log)), cause)


def offload_problem(log: str, gpu_layers: int, *, require_evidence: bool = True) -> str | None:
    """Why the wanted GPU offload did not happen, or None when layers landed on a GPU.

    Asked for N > 0 layers, llama-server must name the device it uses ("using device ...") and
    report at least one offloaded layer; it silently runs on the CPU otherwise. Trees from 2026
    print those lines only at `-lv 4`: without `require_evidence` (a unit, whose devices the
    `devices` pre-check confirmed) a log that is silent about placement passes, and only a log
    that shows the fallback ("no usable GPU found", 0 layers) fails."""
    if gpu_layers <= 0:
        return None
    o = read_offload(log)
    why = f" ({o.cause})" if o.cause else ""
    silent = not o.devices and o.offloaded is None
    if o.no_gpu or (silent and require_evidence):
        return (
            f"--gpu-layers {gpu_layers} was asked for, but llama-server found no usable GPU{why} and would "
            "serve from the CPU: check that the GPU and its driver are present, that --gpus names a "
            "device that exists, and that the build has a GPU backend"
        )
    if silent:
        return None
    if not o.devices or not o.offloaded:
        return (
            f"--gpu-layers {gpu_layers} was asked for, but llama-server put "
            f"{o.offloaded or 0}/{o.total or '?'} layers on a GPU{why}"
        )
    return None


def offload_summary(log: str) -> str:
    o = read_offload(log)
    if o.offloaded is None:
        return "offload: the devices were confirmed before start; this llama-server logs layer placement only at -lv 4"
    return f"offloaded {o.offloaded}/{o.total} layers to {', '.join(o.devices)}"


def journal_messages(invocation: str) -> list[str] | None:
    """The MESSAGE of every journal entry of this unit invocation, through libsystemd (no
    journalctl process: this helper starts nothing but the command `probe` is told to run).
    None when the journal cannot be read."""
    try:
        lib = ctypes.CDLL("libsystemd.so.0")
    except OSError:
        return None
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.sd_journal_open.argtypes = [ctypes.POINTER(vp), ctypes.c_int]
    lib.sd_journal_add_match.argtypes = [vp, ctypes.c_char_p, sz]
    lib.sd_journal_next.argtypes = [vp]
    lib.sd_journal_get_data.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(vp), ctypes.POINTER(sz)]
    lib.sd_journal_close.argtypes = [vp]
    j = vp()
    if lib.sd_journal_open(ctypes.byref(j), 1) < 0:  # SD_JOURNAL_LOCAL_ONLY
        return None
    try:
        match = f"_SYSTEMD_INVOCATION_ID={invocation}".encode()
        if lib.sd_journal_add_match(j, match, len(match)) < 0:
            return None
        out: list[str] = []
        data, length = vp(), sz()
        while lib.sd_journal_next(j) > 0:
            if lib.sd_journal_get_data(j, b"MESSAGE", ctypes.byref(data), ctypes.byref(length)) >= 0:
                raw = ctypes.string_at(data.value or 0, length.value)
                out.append(raw.decode("utf-8", "replace").partition("=")[2])
        return out
    finally:
        lib.sd_journal_close(j)


def wait_offload(invocation: str, gpu_layers: int, timeout: float, interval: float = 0.25) -> int:
    """Once /health is 200 the load is over, but journald may still be writing the last lines:
    read this invocation's journal until it holds the load's end (bounded), then judge it."""
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        lines = journal_messages(invocation)
        if lines is None:
            # The devices check before start has vouched for the GPU; only the log is unreadable.
            print("offload: the journal cannot be read (libsystemd missing?), so only the device check "
                  "before start vouches for the GPU", file=sys.stderr)  # fmt: skip
            return 0
        text = "\n".join(lines)
        if _LOAD_DONE.search(text) or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    problem = offload_problem(text, gpu_layers, require_evidence=False)
    if problem is not None:
        print(OFFLOAD_FAILED + problem, file=sys.stderr)
        return 1
    print(offload_summary(text), file=sys.stderr)
    return 0


_LISTED = re.compile(r"^\s+(\S+): (.+)$")


def parse_list_devices(text: str) -> list[str]:
    """The devices of `llama-server --list-devices` ("  Vulkan0: llvmpipe (...) (2048 MiB, ...)")."""
    _, found, rest = text.partition("Available devices:")
    if not found:
        return []
    return [f"{m.group(1)} {m.group(2)}" for ln in rest.splitlines() if (m := _LISTED.match(ln))]


def _capture(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit code, stdout+stderr) of argv, killed after `timeout`; (None, why) when it cannot start.
    posix_spawn and a pipe: this stdlib-only helper has no subprocess module to lean on."""
    r, w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2), (os.POSIX_SPAWN_CLOSE, r)]
    try:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
    except OSError as exc:
        os.close(r)
        os.close(w)
        return None, f"cannot run {argv[0]}: {exc.strerror}"
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                chunks.append(f"\n(killed after {timeout:g}s)".encode())
                break
            if not select.select([pipe], [], [], left)[0]:
                continue
            data = pipe.read(65536)
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def wait_devices(argv: list[str], timeout: float, interval: float = 2.0) -> int:
    """Before serving: llama-server itself must list a GPU device, under this unit's environment
    (CUDA_/HIP_/GGML_VK_VISIBLE_DEVICES). Retried until `timeout`: a driver may be late at boot.
    It catches a missing or hidden GPU, a wrong --gpus index and a build without the backend
    before a single request could be served from the CPU."""
    deadline = time.monotonic() + timeout
    while True:
        rc, out = _capture(argv, timeout=max(5.0, min(60.0, deadline - time.monotonic())))
        devices = parse_list_devices(out) if rc == 0 else []
        if devices:
            print(f"llama-server lists {'; '.join(devices)}", file=sys.stderr)
            return 0
        if time.monotonic() + interval >= deadline:
            break
        time.sleep(interval)
    o = read_offload(out)
    cause = o.cause or next((ln.strip() for ln in out.splitlines() if "ggml_" in ln and ln.strip()), "")
    shown = f"it exited {rc}" if rc not in (0, None) else "it listed none"
    print(f"{OFFLOAD_FAILED}llama-server --list-devices found no GPU device ({shown}"
          f"{': ' + cause if cause else ''}) within {timeout:g}s, so it would serve from the CPU: "
          "check that the GPU and its driver are present, that --gpus names a device that exists, "
          "and that the build has a GPU backend", file=sys.stderr)  # fmt: skip
    return 1


def wait_device(path: str, timeout: float, interval: float = 0.5) -> int:
    """A GPU driver loads late at boot: wait (bounded) for its device node instead of failing at once."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            print(f"{OFFLOAD_FAILED}{path} did not appear within {timeout:g}s: the GPU or its driver is "
                  "missing, so llama-server would serve from the CPU", file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(interval)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nativellm-healthcheck")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ready")
    r.add_argument("--url", required=True)
    r.add_argument("--timeout", type=float, default=900)
    r.add_argument("--gpu-layers", type=int, default=0)
    r.add_argument("--log-wait", type=float, default=15)
    r.add_argument("--models", default="")
    r.add_argument("--warmup", action="store_true")
    r.add_argument("--api-key-file", default=None)
    r.add_argument("--engine", choices=("llama", "mlx"), default="llama")
    o = sub.add_parser("offload")
    o.add_argument("--gpu-layers", type=int, required=True)
    o.add_argument("--log", required=True)
    ld = sub.add_parser("devices")
    ld.add_argument("--timeout", type=float, default=60)
    ld.add_argument("--interval", type=float, default=2)
    ld.add_argument("server", nargs=argparse.REMAINDER)
    d = sub.add_parser("device")
    d.add_argument("--path", required=True)
    d.add_argument("--timeout", type=float, default=60)
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
        pid = int(main_pid) if main_pid.isdigit() else None
        t0 = time.monotonic()
        rc = wait_ready(args.url, args.timeout, main_pid=pid)
        if rc == 0 and args.engine == "mlx":
            rc = wait_generates(args.url, max(1.0, args.timeout - (time.monotonic() - t0)), main_pid=pid)
        if rc == 0 and args.models:
            key = None
            if args.api_key_file:
                try:
                    with open(args.api_key_file, encoding="utf-8") as f:
                        key = f.read().strip() or None
                except OSError as exc:
                    print(
                        f"cannot read the API key file {args.api_key_file}: {exc.strerror}", file=sys.stderr
                    )
                    return 1
            base = args.url.rsplit("/health", 1)[0]
            left = max(1.0, args.timeout - (time.monotonic() - t0))
            rc = wait_models(base, args.models.split(","), key, left, args.warmup)
        if rc != 0 or args.gpu_layers <= 0:
            return rc
        invocation = os.environ.get("INVOCATION_ID", "")
        if not invocation:
            print(
                f"{OFFLOAD_FAILED}no $INVOCATION_ID: run `ready --gpu-layers` from the unit", file=sys.stderr
            )
            return 1
        return wait_offload(invocation, args.gpu_layers, args.log_wait)
    if args.cmd == "offload":
        try:
            with open(args.log, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            print(f"{OFFLOAD_FAILED}cannot read {args.log}: {exc.strerror}", file=sys.stderr)
            return 1
        problem = offload_problem(text, args.gpu_layers)
        print(OFFLOAD_FAILED + problem if problem else offload_summary(text), file=sys.stderr)
        return 1 if problem else 0
    if args.cmd == "device":
        return wait_device(args.path, args.timeout)
    if args.cmd == "devices":
        server = list(args.server[1:] if args.server[:1] == ["--"] else args.server)
        if not server:
            parser.error("devices needs the command: -- /path/to/llama-server --list-devices")
        return wait_devices(server, args.timeout, args.interval)
    then = list(args.then[1:] if args.then[:1] == ["--"] else args.then)
    return probe(args.url, args.tries, args.timeout, args.pause, then)


if __name__ == "__main__":
    sys.exit(main())
