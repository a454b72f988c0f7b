"""Acceptance 1 and 4: resumable, verified URL pulls against a real HTTP server on 127.0.0.1,
and clear one-line errors (exit 9, no traceback) for broken files, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ggufs import write_gguf, write_split

from nativellm.download import download_url
from nativellm.errors import DownloadError, ResourceError
from tests.helpers import nativellm


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: int = 0  # this many GETs send half the body, then drop the connection
    ignore_range: bool = False
    fake_length: int | None = None  # announce this Content-Length instead
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # method, path, Range, status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    b: Behaviour

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self, body: bool) -> None:
        data = self.b.files.get(self.path.split("?")[0])
        rng = self.headers.get("Range")
        if data is None:
            self.b.log.append((self.command, self.path, rng, 404))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
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
    part = dest.with_name("model.gguf.part")
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
    part = dest.with_name("huge.gguf.part")
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
