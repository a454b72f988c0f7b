"""The bad-input tier's machinery: a per-case sandbox, state snapshots, crafted inputs, loopback servers.

Everything hostile is generated here at run time (GGUFs by struct packing, tars by tarfile, Ollama
stores, instance specs, HTTP(S) servers on 127.0.0.1); nothing binary is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import CliResult, self_signed_cert

# --------------------------------------------------------------------------------------- the sandbox


@dataclass
class Ctx:
    """One case's world: a fresh NATIVELLM_HOME, unit dir, input dir and a watched `outside` dir."""

    root: Path
    vars: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    markers: list[Path] = field(default_factory=list)  # paths a hostile input aims at: must not appear
    utf8: bool = True  # the last run's output was valid UTF-8
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        for d in (self.home, self.units, self.inp, self.outside):
            d.mkdir(parents=True, exist_ok=True)
        self.vars.update(
            home=str(self.home), inp=str(self.inp), outside=str(self.outside), port=str(free_port())
        )
        self.env.update(
            NATIVELLM_UNIT_DIR=str(self.units),
            # No service manager: instance commands that need one fail fast, nothing is started.
            NATIVELLM_BUS_ADDRESS=f"unix:path={self.root / 'no-bus'}",
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={self.root / 'no-bus'}",
            OLLAMA_MODELS=str(self.inp / "no-ollama"),
            HF_ENDPOINT="http://127.0.0.1:9",  # never the internet
            NATIVELLM_LLAMA_REPO=str(self.inp / "no-repo"),
            HOME=str(self.root / "userhome"),
        )

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "config"

    @property
    def units(self) -> Path:
        return self.root / "units"

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def watched(self) -> list[Path]:
        """Directories whose every file must be the same after the command."""
        return [self.home, self.units, self.outside]

    def serve(self, handler: Callable[[http.server.BaseHTTPRequestHandler], None], tls: bool = False) -> str:
        """A real HTTP(S) server on 127.0.0.1 running `handler` for every GET; returns its base URL."""
        server = _start_server(handler, tls, self.root)
        self._stack.callback(server.server_close)
        self._stack.callback(server.shutdown)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"

    def listen(self) -> int:
        """A port held by a listening socket for the whole case (a port in use)."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        self._stack.callback(s.close)
        return int(s.getsockname()[1])

    def close(self) -> None:
        self._stack.close()

    def run(self, argv: list[str], timeout: float) -> CliResult:
        """The command under test: the real CLI in a child process, as tests.helpers.nativellm runs it
        (same interpreter, environment and NATIVELLM_HOME), except that output which is not UTF-8 is
        decoded with replacement characters and flagged (`utf8`) instead of crashing the runner."""
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "nativellm", *argv],
            capture_output=True,
            env={**os.environ, "NATIVELLM_HOME": str(self.home), **self.env},
            timeout=timeout,
        )
        out, err = (b.decode("utf-8", "replace") for b in (proc.stdout, proc.stderr))
        self.utf8 = out.encode() == proc.stdout and err.encode() == proc.stderr
        return CliResult(proc.returncode, out, err, time.monotonic() - t0)

    def prepare(self, *argv: str) -> None:
        """Prepare state through the real CLI's commands, in this process (a child process per setup
        step would double the tier's time); the environment is the case's, then restored."""
        from nativellm.cli import main

        saved = dict(os.environ)
        os.environ.update(self.env, NATIVELLM_HOME=str(self.home))
        code: object = 0
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert code in (0, None), f"setup `nativellm {' '.join(argv)}` exited {code}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------- state snapshots

Entry = tuple[str, ...]


def snapshot(roots: list[Path]) -> dict[str, Entry]:
    """path -> (kind, mode, size, sha256 | link target) of every file and symlink under `roots`.

    Directories themselves are not recorded (a command may create an empty folder it needs), nor
    `*.lock` files (flock targets, which name their last holder); everything else is."""
    out: dict[str, Entry] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    out[str(p)] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    continue
                elif stat.S_ISREG(st.st_mode):
                    if name.endswith(".lock"):
                        continue
                    digest = hashlib.sha256(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) else "?"
                    out[str(p)] = ("file", oct(stat.S_IMODE(st.st_mode)), str(st.st_size), digest)
                else:
                    out[str(p)] = ("special", oct(st.st_mode))
    return out


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    changes = [f"+ {p}" for p in sorted(set(after) - set(before))]
    changes += [f"- {p}" for p in sorted(set(before) - set(after))]
    changes += [f"~ {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return changes


# ------------------------------------------------------------------------------------------- GGUFs

GGUF_U8, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STR, GGUF_ARR, GGUF_U64 = 0, 4, 5, 6, 7, 8, 9, 10
F32 = 0


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key: str, type_id: int, value: Any) -> bytes:
    """One metadata entry; `value` is packed by type (bytes are taken as already packed)."""
    if isinstance(value, bytes) and type_id != GGUF_STR:
        body = value
    elif type_id == GGUF_STR:
        body = gstr(value)
    elif type_id == GGUF_U32:
        body = struct.pack("<I", value)
    elif type_id == GGUF_I32:
        body = struct.pack("<i", value)
    elif type_id == GGUF_U64:
        body = struct.pack("<Q", value)
    elif type_id == GGUF_F32:
        body = struct.pack("<f", value)
    elif type_id in (GGUF_U8, GGUF_BOOL):
        body = struct.pack("<B", value)
    else:
        raise ValueError(type_id)
    return gstr(key) + struct.pack("<I", type_id) + body


def tensor_info(name: str | bytes, shape: tuple[int, ...], type_id: int = F32, offset: int = 0) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(shape))
        + b"".join(struct.pack("<Q", d) for d in shape)
        + (struct.pack("<IQ", type_id, offset))
    )


LLAMA_KV = (
    ("general.architecture", GGUF_STR, "llama"),
    ("general.name", GGUF_STR, "badinput"),
    ("llama.block_count", GGUF_U32, 1),
    ("llama.context_length", GGUF_U32, 64),
    ("llama.embedding_length", GGUF_U32, 8),
    ("llama.attention.head_count", GGUF_U32, 1),
    ("llama.attention.head_count_kv", GGUF_U32, 1),
    ("llama.feed_forward_length", GGUF_U32, 8),
)


def gguf_bytes(
    kvs: tuple[tuple[str, int, Any], ...] | list[bytes] = LLAMA_KV,
    tensors: tuple[tuple[str, tuple[int, ...]], ...] = (("token_embd.weight", (8, 4)),),
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    data: bytes | None = None,
    raw_tensors: bytes | None = None,
) -> bytes:
    """A GGUF file: header, metadata, tensor infos (f32, packed back to back) and zeroed data."""
    entries = [e if isinstance(e, bytes) else kv(*e) for e in kvs]
    infos, offset = [], 0
    for name, shape in tensors:
        infos.append(tensor_info(name, shape, F32, offset))
        n = 4
        for d in shape:
            n *= d
        offset += -(-n // 32) * 32
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(entries) if n_kv is None else n_kv,
    )
    body = head + b"".join(entries) + (b"".join(infos) if raw_tensors is None else raw_tensors)
    body += b"\0" * (-len(body) % 32)
    return body + (b"\0" * offset if data is None else data)


def valid_gguf(path: Path, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gguf_bytes(**kw))
    return path


# -------------------------------------------------------------------------------------------- tars


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for info, content in members:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def tfile(name: str, content: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    return ti, content


def tdir(name: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    return ti, None


def tlink(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    ti.linkname = target
    return ti, None


def tspecial(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o644
    return ti, None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------- fake builds


def fake_build(
    ctx: Ctx, build_id: str = "cpu-0123456789ab", *, current: bool = True, server: str = "", rpc: bool = False
) -> str:
    """A build in the store without a compile: a manifest and a llama-server that is a shell script
    (by default one that crashes). Enough for the commands that only read the store."""
    bdir = ctx.data / "builds" / build_id
    (bdir / "bin").mkdir(parents=True)
    exe = bdir / "bin" / "llama-server"
    exe.write_text(server or "#!/bin/sh\necho 'llama-server: crashed on purpose' >&2\nkill -SEGV $$\n")
    exe.chmod(0o755)
    if rpc:
        (bdir / "bin" / "rpc-server").write_text("#!/bin/sh\nexit 1\n")
        (bdir / "bin" / "rpc-server").chmod(0o755)
    (bdir / "manifest.json").write_text(
        json.dumps(
            {
                "schema": "nativellm.build/1",
                "id": build_id,
                "created": "2026-01-01T00:00:00Z",
                "plan": {"backend": "cpu", "cmake_defines": {}},
                "source": {"kind": "local", "commit": "0" * 40},
                "smoke_test": {"passed": True},
                "binaries": {"bin/llama-server": sha256_of(exe)},
            }
        )
    )
    if current:
        (ctx.data / "current").symlink_to(f"builds/{build_id}")
    return build_id


def register_model(ctx: Ctx, name: str = "m", gguf: Path | None = None) -> Path:
    """A model registered through the real CLI (linked in place)."""
    path = valid_gguf(gguf or ctx.inp / f"{name}.gguf")
    ctx.prepare("model", "add", str(path), "--name", name)
    return path


def add_instance(ctx: Ctx, name: str = "q4", model: str = "m", *extra: str) -> None:
    """An instance spec and its units written with --no-systemd (no manager needed)."""
    ctx.prepare("instance", "add", name, "--model", model, "--no-systemd", "--port", "18080", *extra)


# ------------------------------------------------------------------------------------------ servers


Behave = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    behave: Callable[[http.server.BaseHTTPRequestHandler], None]

    def do_GET(self) -> None:
        try:
            type(self).behave(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _start_server(
    behave: Callable[[http.server.BaseHTTPRequestHandler], None], tls: bool, tmp: Path
) -> http.server.ThreadingHTTPServer:
    handler = type("H", (_Handler,), {"behave": staticmethod(behave)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls:
        cert, key = self_signed_cert(tmp)
        sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sslctx.load_cert_chain(cert, key)
        server.socket = sslctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def reply(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, length: int | None = None
) -> Behave:
    """A handler that answers `status` with `body` (and a Content-Length of `length` if given)."""

    def behave(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(body)
            h.wfile.flush()

    return behave


def redirect_loop(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(302)
    h.send_header("Location", h.path + ("x" if len(h.path) < 200 else ""))
    h.send_header("Content-Length", "0")
    h.end_headers()


def cut(total: int, send: int, delay: float = 0.0) -> Behave:
    """Announce `total` bytes, send `send` (after `delay` seconds) and close the connection."""

    def behave(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(total))
        h.end_headers()
        if h.command == "GET":
            time.sleep(delay)
            h.wfile.write(b"GGUF" + b"\0" * (send - 4))
            h.wfile.flush()
        h.close_connection = True

    return behave


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield
