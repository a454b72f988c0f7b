"""The online source paths (git tag clone, tarball URL), served from loopback servers."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nativellm.build.source import resolve_git, resolve_tarball
from nativellm.errors import NotFoundError, SourceError
from nativellm.fsutil import sha256_file
from tests.helpers import git_daemon


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fake_llama_tree(root: Path) -> Path:
    (root / "ggml").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(llama)\n")
    (root / "ggml" / "CMakeLists.txt").write_text("# ggml\n")
    return root


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def llama_repo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real git daemon on 127.0.0.1 serving llama.git with tag b1; yields (url, commit)."""
    work = _fake_llama_tree(tmp_path / "work")
    _git("init", "-q", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "old", cwd=work)
    _git("add", ".", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tree", cwd=work)
    _git("tag", "b1", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    served = tmp_path / "served"
    served.mkdir()
    _git("clone", "-q", "--bare", str(work), str(served / "llama.git"), cwd=tmp_path)
    with git_daemon(served, _free_port()) as root:
        yield f"{root}/llama.git", commit


def test_git_tag_is_shallow_cloned_and_reused(llama_repo: tuple[str, str], tmp_path: Path) -> None:
    url, commit = llama_repo
    cache = tmp_path / "sources"
    src = resolve_git("b1", url, cache)
    assert src.identity == {"kind": "git", "repo": url, "ref": "b1", "commit": commit}
    assert (src.path / "CMakeLists.txt").is_file()
    # Shallow: only the tagged commit was fetched.
    assert _git("rev-list", "--count", "HEAD", cwd=src.path) == "1"
    assert resolve_git("b1", url, cache).path == src.path


def test_unreachable_tag_is_a_clear_error_and_leaves_no_partial_clone(
    llama_repo: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = llama_repo
    cache = tmp_path / "sources"
    with pytest.raises(SourceError, match="cannot fetch llama.cpp b999") as exc:
        resolve_git("b999", url, cache)
    assert "--source" in exc.value.hint
    assert list(cache.iterdir()) == []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tarball_url_is_downloaded_verified_and_extracted(http_dir: tuple[Path, str], tmp_path: Path) -> None:
    root, base = http_dir
    tree = _fake_llama_tree(tmp_path / "llama.cpp-b1")
    archive = root / "llama.cpp-b1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="llama.cpp-b1")
    digest = sha256_file(archive)
    src = resolve_tarball(f"{base}/llama.cpp-b1.tar.gz", digest, tmp_path / "cache")
    assert src.identity["sha256"] == digest
    assert (src.path / "ggml").is_dir()
    with pytest.raises(NotFoundError, match="HTTP 404"):
        resolve_tarball(f"{base}/missing.tar.gz", None, tmp_path / "cache2")
    shutil.rmtree(tmp_path / "cache2", ignore_errors=True)
