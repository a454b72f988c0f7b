"""Acceptance 1 and 4: resumable, verified URL pulls against a real HTTP server on 127.0.0.1,
and clear one-line errors (exit 9, no traceback) for broken files, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ggufs import write_gguf, write_split

from nativellm.download import download_url, part_path
from nativellm.errors import DownloadError, ResourceError
from nativellm.models.pull import PullOptions, pull_model
from nativellm.paths import resolve_paths
from tests.helpers import CliResult, nativellm, self_signed_cert
from tests.statehash import tree_state


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: int = 0  # this many GETs send half the body, then drop the connection
    ignore_range: bool = False
    fake_length: int | None = None  # announce this Content-Length instead
    validator: str | None = "etag"  # etag (from the content, like a real server), last-modified, or None
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # method, path, Range, status
    if_range: list[str | None] = field(default_factory=list)  # the If-Range header of each GET


def _validator_of(data: bytes, kind: str | None) -> tuple[str, str]:
    """(header, value) a real server would send for this content: it changes when the content does."""
    digest = hashlib.sha256(data).hexdigest()
    if kind == "etag":
        return "ETag", f'"{digest[:16]}"'
    if kind == "last-modified":
        return "Last-Modified", formatdate(1_700_000_000 + int(digest[:6], 16), usegmt=True)
    return "", ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    b: Behaviour

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self, body: bool) -> None:
        path = self.path.split("?")[0]
        if path in self.b.redirects:
            self.b.log.append((self.command, self.path, None, 302))
            self.send_response(302)
            self.send_header("Location", self.b.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.b.files.get(path)
        rng = self.headers.get("Range")
        if self.command == "GET":
            self.b.if_range.append(self.headers.get("If-Range"))
        if data is None:
            self.b.log.append((self.command, self.path, rng, 404))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        current = _validator_of(data, self.b.validator)
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != current[1]:
            m = None  # RFC 9110 13.1.5: the file changed, so the whole of it, with a 200
        if m and not self.b.ignore_range:
            start = int(m[1])
            if start >= len(data):
                self.b.log.append((self.command, self.path, rng, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            status = 206
        else:
            self.send_response(200)
            status = 200
        if not self.b.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        if current[0]:
            self.send_header(current[0], current[1])
        payload = data[start:]
        self.send_header("Content-Length", str(self.b.fake_length or len(payload)))
        self.end_headers()
        self.b.log.append((self.command, self.path, rng, status))
        if not body:
            return
        if self.b.cut_first > 0 and self.command == "GET":
            self.b.cut_first -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve(True)

    def do_HEAD(self) -> None:
        self._serve(False)


@dataclass
class Server:
    url: str
    b: Behaviour


@pytest.fixture
def server() -> Iterator[Server]:
    b = Behaviour()
    handler = type("H", (Handler,), {"b": b})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", b)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def gguf_bytes(tmp_path: Path) -> bytes:
    # Big enough that half of it is many chunks and a cut lands inside tensor data.
    return write_gguf(tmp_path / "src.gguf", n_layer=8, n_embd=256, n_ff=512, n_vocab=2000).read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cut_off_pull_resumes_in_the_same_run(server: Server, gguf_bytes: bytes, tmp_path: Path) -> None:
    server.b.files["/m/model.gguf"] = gguf_bytes
    server.b.cut_first = 1
    home = tmp_path / "home"
    res = nativellm("model", "pull", f"{server.url}/m/model.gguf", "--sha256", _sha(gguf_bytes), "--json",
                    home=home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["ok"] and doc["changed"] and doc["command"] == "model pull"
    rec = doc["data"]["model"]
    assert rec["sha256"] == _sha(gguf_bytes)
    assert rec["source"] == "url"
    assert Path(rec["path"]).read_bytes() == gguf_bytes
    gets = [e for e in server.b.log if e[0] == "GET"]
    assert gets[0][2] is None and gets[1][3] == 206
    # The second request asked for exactly the rest: a resume, not a restart.
    assert gets[1][2] == f"bytes={len(gguf_bytes) // 2}-", gets
    print(f"resume: first GET cut at {len(gguf_bytes) // 2} of {len(gguf_bytes)} bytes; then {gets[1][2]}")
    again = nativellm("model", "pull", f"{server.url}/m/model.gguf", "--json", home=home)
    assert again.returncode == 0 and again.json()["changed"] is False


def test_interrupted_pull_keeps_the_part_and_the_next_pull_resumes(
    server: Server, gguf_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.b.files["/model.gguf"] = gguf_bytes
    server.b.cut_first = 1
    dest = tmp_path / "dl" / "model.gguf"
    with pytest.raises(DownloadError, match=r"partial file .* is kept") as exc:
        download_url(f"{server.url}/model.gguf", dest, attempts=1)
    assert "resume" in exc.value.hint
    part = part_path(f"{server.url}/model.gguf", dest)
    assert part.stat().st_size == len(gguf_bytes) // 2
    assert not dest.exists()
    fetched = download_url(f"{server.url}/model.gguf", dest, expected_sha256=_sha(gguf_bytes))
    assert fetched.sha256 == _sha(gguf_bytes)
    assert fetched.path.read_bytes() == gguf_bytes
    assert server.b.log[-1][2] == f"bytes={len(gguf_bytes) // 2}-"


def test_sha256_mismatch_registers_nothing(server: Server, gguf_bytes: bytes, tmp_path: Path) -> None:
    server.b.files["/model.gguf"] = gguf_bytes
    home = tmp_path / "home"
    res = nativellm("model", "pull", f"{server.url}/model.gguf", "--sha256", "0" * 64, home=home)
    assert res.returncode == 13, res.stderr
    assert "sha256 mismatch" in res.stderr and "Traceback" not in res.stderr
    listed = nativellm("model", "list", "--json", home=home)
    assert listed.json()["models"] == []
    files = home / "data" / "models" / "files"
    assert not [p for p in files.rglob("*") if p.is_file()] if files.exists() else True


def test_server_that_ignores_range_restarts_cleanly(
    server: Server, gguf_bytes: bytes, tmp_path: Path
) -> None:
    server.b.files["/model.gguf"] = gguf_bytes
    server.b.cut_first = 1
    server.b.ignore_range = True
    res = nativellm("model", "pull", f"{server.url}/model.gguf", "--sha256", _sha(gguf_bytes), "--json",
                    home=tmp_path / "home")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert Path(res.json()["data"]["model"]["path"]).read_bytes() == gguf_bytes
    gets = [e for e in server.b.log if e[0] == "GET"]
    assert len(gets) == 2
    assert gets[1][2] is not None and gets[1][3] == 200  # asked for a range, got the whole file


def test_disk_space_is_checked_before_downloading(server: Server, gguf_bytes: bytes, tmp_path: Path) -> None:
    server.b.files["/huge.gguf"] = gguf_bytes
    server.b.fake_length = 10**17  # 100 PB
    dest = tmp_path / "dl" / "huge.gguf"
    with pytest.raises(ResourceError, match="not enough disk space"):
        download_url(f"{server.url}/huge.gguf", dest)
    part = part_path(f"{server.url}/huge.gguf", dest)
    assert not part.exists() or part.stat().st_size == 0


def test_complete_but_corrupt_download_is_refused(server: Server, tmp_path: Path) -> None:
    server.b.files["/bad.gguf"] = b"<!DOCTYPE html><html>rate limited</html>"
    home = tmp_path / "home"
    res = nativellm("model", "pull", f"{server.url}/bad.gguf", home=home)
    assert res.returncode == 9, res.stderr
    assert "HTML page" in res.stderr and "Traceback" not in res.stderr
    assert nativellm("model", "list", "--json", home=home).json()["models"] == []


def test_missing_url_is_not_found(server: Server, tmp_path: Path) -> None:
    res = nativellm("model", "pull", f"{server.url}/nope.gguf", home=tmp_path / "home")
    assert res.returncode == 3 and "404" in res.stderr


def test_split_gguf_over_http_is_one_model(server: Server, tmp_path: Path) -> None:
    parts = write_split(tmp_path / "src", "big", 3)
    for p in parts:
        server.b.files[f"/r/{p.name}"] = p.read_bytes()
    home = tmp_path / "home"
    res = nativellm("model", "pull", f"{server.url}/r/{parts[0].name}", "--json", home=home)
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    assert rec["name"] == "big"
    assert [Path(p).name for p in rec["parts"]] == [p.name for p in parts]
    assert rec["facts"]["split_count"] == 3
    assert nativellm("model", "verify", "big", home=home).returncode == 0


def test_concurrent_pulls_of_one_model_do_not_corrupt(
    server: Server, gguf_bytes: bytes, tmp_path: Path
) -> None:
    server.b.files["/model.gguf"] = gguf_bytes
    home = tmp_path / "home"
    env = {"NATIVELLM_HOME": str(home)}

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nativellm", "model", "pull", f"{server.url}/model.gguf", "--json"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    changed = [json.loads(out)["changed"] for out, _, _ in results]
    assert changed.count(True) == 1
    index = json.loads((home / "data" / "models" / "index.json").read_text())
    assert list(index["models"]) == ["model"]
    assert Path(index["models"]["model"]["path"]).read_bytes() == gguf_bytes


# --------------------------------------------------------------------------- acceptance 4 via the CLI
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("truncated", "is truncated: tensor"),
        ("magic", "corrupt GGUF magic"),
        ("empty", "is empty (0 bytes)"),
        ("text", "is a text file"),
    ],
)
def test_broken_files_give_their_own_error(kind: str, expected: str, tmp_path: Path) -> None:
    good = write_gguf(tmp_path / "good.gguf").read_bytes()
    path = tmp_path / f"{kind}.gguf"
    if kind == "truncated":
        path.write_bytes(good[: len(good) * 2 // 3])
    elif kind == "magic":
        path.write_bytes(bytes([good[0] ^ 0x10]) + good[1:])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("model weights go here\n")
    home = tmp_path / "home"
    res = nativellm("model", "add", str(path), home=home)
    assert res.returncode == 9, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    first = res.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and expected in first, res.stderr
    assert res.stderr.strip().splitlines()[1].lstrip().startswith("hint:")
    js = nativellm("model", "add", str(path), "--json", home=home)
    assert js.returncode == 9
    assert js.json()["error"]["kind"] == "model" and expected in js.json()["error"]["message"]
    assert nativellm("model", "list", "--json", home=home).json()["models"] == []


# --------------------------------------------------------------------------- issue 14: resume safety
def _pair(tmp_path: Path) -> tuple[bytes, bytes]:
    """Two valid GGUFs of one size that differ (in their name, near the start)."""
    kw = {"n_layer": 8, "n_embd": 256, "n_ff": 512, "n_vocab": 2000}
    a = write_gguf(tmp_path / "a" / "model.gguf", name="model-aaaa", **kw).read_bytes()  # type: ignore[arg-type]
    b = write_gguf(tmp_path / "b" / "model.gguf", name="model-bbbb", **kw).read_bytes()  # type: ignore[arg-type]
    assert len(a) == len(b) and a != b
    return a, b


def _cut_pull(server: Server, url: str, name: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull of `url` that is cut half way, in its only attempt: it leaves a partial file."""
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    server.b.cut_first = 1
    with pytest.raises(DownloadError, match=r"partial file .* is kept"):
        pull_model(resolve_paths(), PullOptions(url, name=name, attempts=1))


def test_another_url_under_the_same_name_is_never_spliced(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _pair(tmp_path)
    server.b.files["/a/model.gguf"] = a
    server.b.files["/b/model.gguf"] = b
    home = tmp_path / "home"
    _cut_pull(server, f"{server.url}/a/model.gguf", "m", home, monkeypatch)
    res = nativellm("model", "pull", f"{server.url}/b/model.gguf", "--name", "m", "--json", home=home)
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    assert Path(rec["path"]).read_bytes() == b  # not A's first half with B's second
    assert rec["sha256"] == _sha(b)
    gets = [e for e in server.b.log if e[0] == "GET"]
    assert gets[-1][1] == "/b/model.gguf" and gets[-1][2] is None  # B from byte 0
    # A's partial file can never resume into this name again: it is gone.
    assert not list(Path(rec["path"]).parent.glob("*.part*"))


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_file_changed_since_the_cut_restarts_in_full(
    validator: str, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _pair(tmp_path)
    server.b.validator = validator
    server.b.files["/m.gguf"] = a
    home = tmp_path / "home"
    _cut_pull(server, f"{server.url}/m.gguf", "m", home, monkeypatch)
    first_validator = _validator_of(a, validator)[1]
    server.b.files["/m.gguf"] = b  # the server now has another file at the same URL
    res = nativellm("model", "pull", f"{server.url}/m.gguf", "--name", "m", "--sha256", _sha(b), "--json",
                    home=home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert Path(res.json()["data"]["model"]["path"]).read_bytes() == b
    gets = [e for e in server.b.log if e[0] == "GET"]
    # The resume asked for the rest *if* the file was still the one cut off; the server said no.
    assert gets[-1][2] == f"bytes={len(a) // 2}-" and gets[-1][3] == 200
    assert server.b.if_range[-1] == first_validator


def test_a_server_without_validators_is_never_resumed(
    server: Server, gguf_bytes: bytes, tmp_path: Path
) -> None:
    server.b.validator = None  # nothing to tell the same file from another: resuming could splice
    server.b.files["/model.gguf"] = gguf_bytes
    server.b.cut_first = 1
    res = nativellm("model", "pull", f"{server.url}/model.gguf", "--json", home=tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert Path(res.json()["data"]["model"]["path"]).read_bytes() == gguf_bytes
    gets = [e for e in server.b.log if e[0] == "GET"]
    assert [g[2] for g in gets] == [None, None]
    # Cut in its only attempt, such a download keeps nothing, and says so.
    server.b.cut_first = 1
    dest = tmp_path / "dl" / "model.gguf"
    with pytest.raises(DownloadError, match="no partial file was kept"):
        download_url(f"{server.url}/model.gguf", dest, attempts=1)
    assert list(dest.parent.iterdir()) == []


def test_a_complete_part_used_in_place_is_not_fetched_again(
    server: Server, gguf_bytes: bytes, tmp_path: Path
) -> None:
    """Artifacts use the finished part where it lies: its record makes the next fetch a 416, not a copy."""
    server.b.files["/a.gguf"] = gguf_bytes
    dest = tmp_path / "dl" / "a.gguf"
    first = download_url(f"{server.url}/a.gguf", dest, expected_sha256=_sha(gguf_bytes))
    again = download_url(f"{server.url}/a.gguf", dest, expected_sha256=_sha(gguf_bytes))
    assert again.path == first.path and again.sha256 == _sha(gguf_bytes)
    assert server.b.log[-1][2:] == (f"bytes={len(gguf_bytes)}-", 416)


# --------------------------------------------------------------------------- issue 14: clean refusals
def _refused(res: CliResult, code: int, *needles: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].lstrip().startswith("hint:"), lines
    for needle in needles:
        assert needle in lines[0], lines
    assert "Traceback" not in res.stderr + res.stdout


def test_redirect_loop_is_a_download_error(server: Server, tmp_path: Path) -> None:
    server.b.redirects["/loop.gguf"] = "/loop.gguf"
    home = tmp_path / "home"
    before = tree_state(home)
    res = nativellm("model", "pull", f"{server.url}/loop.gguf", home=home)
    _refused(res, 13, "redirects in a loop")
    assert "partial file" not in res.stderr or "no partial file" in res.stderr
    assert tree_state(home) == before


def test_a_directory_where_the_part_file_goes_is_refused(
    server: Server, gguf_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.b.files["/model.gguf"] = gguf_bytes
    home = tmp_path / "home"
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    url = f"{server.url}/model.gguf"
    part = part_path(url, resolve_paths().models / "files" / "model" / "model.gguf")
    (part / "inside").mkdir(parents=True)
    before = tree_state(home)
    res = nativellm("model", "pull", url, home=home)
    _refused(res, 13, "not a regular file", str(part))
    assert tree_state(home) == before and (part / "inside").is_dir()
    assert not [e for e in server.b.log if e[0] == "GET"]  # refused before a byte was asked for


def test_a_bad_sha256_is_a_usage_error_before_any_download(server: Server, tmp_path: Path) -> None:
    server.b.files["/model.gguf"] = b"x"
    home = tmp_path / "home"
    res = nativellm("model", "pull", f"{server.url}/model.gguf", "--sha256", "xyz", home=home)
    _refused(res, 2, "'xyz' is not a sha256")
    assert server.b.log == [] and tree_state(home) == {}


# --------------------------------------------------------------------------- issue 14: TLS
class TlsServer(ThreadingHTTPServer):
    context: ssl.SSLContext
    connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        self.connections += 1
        return self.context.wrap_socket(sock, server_side=True), addr


def test_tls_failure_is_not_retried_and_keeps_no_file(gguf_bytes: bytes, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    b = Behaviour(files={"/model.gguf": gguf_bytes})
    httpd = TlsServer(("127.0.0.1", 0), type("H", (Handler,), {"b": b}))
    httpd.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    httpd.context.load_cert_chain(cert, key)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/model.gguf"
    home = tmp_path / "home"
    try:
        before = tree_state(home)
        res = nativellm("model", "pull", url, home=home, env={"SSL_CERT_FILE": "", "SSL_CERT_DIR": ""})
        _refused(res, 13, "TLS with 127.0.0.1 failed", "certificate", "no partial file was kept")
        assert httpd.connections == 1, httpd.connections  # a certificate does not heal: no retries
        assert tree_state(home) == before
        print(f"TLS refusal in {res.seconds:.2f}s after {httpd.connections} connection: {res.stderr.strip()}")
        # The hint's remedy works: trusting the certificate makes the same pull succeed.
        ok = nativellm("model", "pull", url, "--json", home=home, env={"SSL_CERT_FILE": str(cert)})
        assert ok.returncode == 0, ok.stderr
        assert Path(ok.json()["data"]["model"]["path"]).read_bytes() == gguf_bytes
    finally:
        httpd.shutdown()
        httpd.server_close()
