"""Acceptance 2: `model pull hf:...` goes through huggingface_hub to a loopback Hub (HF_ENDPOINT)
that answers the way huggingface.co does: the tree API and `resolve` URLs with commit and ETag headers."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ggufs import write_gguf, write_split

from tests.helpers import CliResult, nativellm

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-GGUF"


@dataclass
class Hub:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # what the tree API claims, if not the real size
    log: list[tuple[str, str, str | None, str | None]] = field(
        default_factory=list
    )  # method, path, Range, auth


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        path = self.path.split("?")[0]
        self.hub.log.append(
            (self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        tree = re.fullmatch(rf"/api/models/{REPO}/tree/([^/]+)", path)
        if tree:
            if tree[1] not in ("main", COMMIT):
                return self._send(
                    404, b'{"error":"Revision Not Found"}', {"X-Error-Code": "RevisionNotFound"}
                )
            listing = [
                {
                    "type": "file",
                    "oid": hashlib.sha1(d).hexdigest(),
                    "size": self.hub.sizes.get(p, len(d)),
                    "path": p,
                }
                for p, d in sorted(self.hub.files.items())
            ]
            return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
        if path.startswith("/api/models/"):
            return self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        m = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", path)
        if not m or m[2] not in self.hub.files:
            return self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
        data = self.hub.files[m[2]]
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
        }
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        status = 200
        if rng:
            start = int(rng[1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.command == "GET" and self.hub.cut_first > 0:
            self.hub.cut_first -= 1
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        return self._send(status, body, headers)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()


@dataclass
class HubServer:
    url: str
    hub: Hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    h = Hub()
    src = tmp_path / "src"
    h.files["tiny-Q4_K_M.gguf"] = write_gguf(src / "a.gguf", n_layer=2, n_vocab=3000).read_bytes()
    h.files["tiny-Q8_0.gguf"] = write_gguf(src / "b.gguf", n_layer=3).read_bytes()
    h.files["README.md"] = b"# tiny\n"
    for p in write_split(src / "split", "tiny-F16", 2):
        h.files[f"F16/{p.name}"] = p.read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (HubHandler,), {"hub": h}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield HubServer(f"http://127.0.0.1:{httpd.server_address[1]}", h)
    httpd.shutdown()
    httpd.server_close()


def _pull(hub: HubServer, tmp_path: Path, *args: str, token: str | None = None) -> CliResult:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": token or "",
    }
    return nativellm("model", "pull", *args, home=tmp_path / "home", env=env, timeout=300)


def test_pull_by_quant_picks_the_file_through_huggingface_hub(hub: HubServer, tmp_path: Path) -> None:
    res = _pull(hub, tmp_path, f"hf:{REPO}:Q4_K_M", "--json", token="hf_secret")
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    data = hub.hub.files["tiny-Q4_K_M.gguf"]
    assert rec["name"] == "tiny-GGUF-Q4_K_M"
    assert rec["source"] == "hf"
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["facts"]["vocab_size"] == 3000
    # It lives in huggingface_hub's own cache, under the commit the Hub reported.
    assert str(tmp_path / "hf") in rec["path"] and COMMIT in rec["path"]
    assert Path(rec["path"]).read_bytes() == data
    paths = [p for _, p, _, _ in hub.hub.log]
    assert f"/api/models/{REPO}/tree/main" in paths
    assert f"/{REPO}/resolve/main/tiny-Q4_K_M.gguf" in paths
    assert f"/{REPO}/resolve/main/tiny-Q8_0.gguf" not in paths
    # The token from HF_TOKEN reached the Hub.
    assert all(auth == "Bearer hf_secret" for _, _, _, auth in hub.hub.log)
    again = _pull(hub, tmp_path, f"hf:{REPO}:Q4_K_M", "--json")
    assert again.returncode == 0 and again.json()["changed"] is False


def test_pull_a_named_file_at_a_revision_survives_a_cut_transfer(hub: HubServer, tmp_path: Path) -> None:
    hub.hub.cut_first = 1
    data = hub.hub.files["tiny-Q8_0.gguf"]
    sha = hashlib.sha256(data).hexdigest()
    res = _pull(
        hub, tmp_path, f"hf:{REPO}/tiny-Q8_0.gguf@{COMMIT}", "--name", "q8", "--sha256", sha, "--json"
    )
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["model"]["sha256"] == sha
    # huggingface_hub retried the cut transfer itself (with a Range request once it has bytes on disk).
    gets = [p for m, p, _, _ in hub.hub.log if m == "GET" and "/resolve/" in p]
    assert gets == [f"/{REPO}/resolve/{COMMIT}/tiny-Q8_0.gguf"] * 2, gets


def test_split_repo_files_are_one_model(hub: HubServer, tmp_path: Path) -> None:
    res = _pull(hub, tmp_path, f"hf:{REPO}:F16", "--json")
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    assert [Path(p).name for p in rec["parts"]] == [
        "tiny-F16-00001-of-00002.gguf",
        "tiny-F16-00002-of-00002.gguf",
    ]
    assert rec["facts"]["split_count"] == 2


def test_unknown_quant_lists_what_is_there(hub: HubServer, tmp_path: Path) -> None:
    res = _pull(hub, tmp_path, f"hf:{REPO}:Q2_K")
    assert res.returncode == 3, res.stderr
    assert "no GGUF file for quant Q2_K" in res.stderr
    assert "Q4_K_M" in res.stderr and "Q8_0" in res.stderr
    assert "Traceback" not in res.stderr


def test_sha_mismatch_and_missing_repo(hub: HubServer, tmp_path: Path) -> None:
    res = _pull(hub, tmp_path, f"hf:{REPO}/tiny-Q8_0.gguf", "--sha256", "1" * 64)
    assert res.returncode == 9 and "sha256 mismatch" in res.stderr
    listed = nativellm("model", "list", "--json", home=tmp_path / "home")
    assert listed.json()["models"] == []
    res = _pull(hub, tmp_path, "hf:acme/nothing:Q4_K_M")
    assert res.returncode == 3 and "was not found" in res.stderr, res.stderr
    res = _pull(hub, tmp_path, "hf:just-a-name")
    assert res.returncode == 2


def test_disk_space_is_checked_before_an_hf_download(hub: HubServer, tmp_path: Path) -> None:
    hub.hub.sizes["tiny-Q8_0.gguf"] = 10**17  # 100 PB
    res = _pull(hub, tmp_path, f"hf:{REPO}:Q8_0")
    assert res.returncode == 12, res.stderr
    assert "not enough disk space" in res.stderr
    assert not [p for m, p, _, _ in hub.hub.log if "/resolve/" in p]  # refused before any download
