"""llama.cpp source: a git tag or commit, a tarball (sha256-checked), or a local tree.

Every source resolves to a directory plus an identity that goes into the build
id, so the same source always gives the same id and a changed one never does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.build.extract import extract_archive
from nativellm.download import download_url, forget_part
from nativellm.errors import NotFoundError, SourceError
from nativellm.fsutil import sha256_file
from nativellm.specs import validate_sha256

DEFAULT_REPO = "https://github.com/ggml-org/llama.cpp"
# The pinned release tag that `nativellm build` uses when no source is given: llama.cpp b11312,
# commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f (2026-10-01). It is the tree the test suite
# compiles (vendored in llama-cpp-python 0.3.36, tests/helpers.SDIST_VERSION), and
# tests/e2e/test_quickstart.py builds this tag from a git repository served on loopback.
DEFAULT_REF = "b11312"
# A mirror of DEFAULT_REPO (an air-gapped fleet's git server): `--repo` wins over it.
REPO_ENV = "NATIVELLM_LLAMA_REPO"


def default_repo() -> str:
    return os.environ.get(REPO_ENV) or DEFAULT_REPO


# Directories whose content cannot change the binaries; skipped when hashing a tree.
_HASH_SKIP = frozenset({".git", "models", "docs", "media", "build", "benches", ".github", "__pycache__"})
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


@dataclass(frozen=True)
class SourceRequest:
    """What the user asked for; exactly one of the three forms is set."""

    directory: Path | None = None
    tarball: str | None = None  # path or URL
    sha256: str | None = None
    ref: str | None = None
    repo: str = field(default_factory=default_repo)


@dataclass(frozen=True)
class Source:
    path: Path
    identity: dict[str, Any]  # kind + commit/tag/sha256/tree hash: recorded in the manifest


def tree_hash(root: Path) -> str:
    """Content hash of the files that can affect a build."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _HASH_SKIP and not d.startswith("build"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def check_tree(path: Path) -> None:
    """A llama.cpp source tree has CMakeLists.txt and ggml/ at its top; anything else is refused."""
    if not (path / "CMakeLists.txt").is_file() or not (path / "ggml").is_dir():
        raise SourceError(
            f"{path} is not a llama.cpp source tree (no CMakeLists.txt and ggml/)",
            "pass the top directory of a llama.cpp checkout",
        )


def resolve_local(directory: Path) -> Source:
    path = directory.expanduser().resolve()
    if not path.is_dir():
        raise NotFoundError(f"source directory {directory} does not exist", "check the --source path")
    check_tree(path)
    identity: dict[str, Any] = {"kind": "directory", "path": str(path), "tree_sha256": tree_hash(path)}
    if (path / ".git").exists():
        head = run.probe(["git", "-C", str(path), "rev-parse", "HEAD"])
        if head and head.ok:
            identity["commit"] = head.stdout.strip()
    return Source(path, identity)


def _safe_extract(archive: Path, into: Path) -> Path:
    """Extract a tarball through build.extract (member by member, links resolved on disk, capped);
    return the single top directory."""
    if into.is_dir() and not any(into.iterdir()):
        into.rmdir()  # extract_archive makes it, from a temp dir beside it
    return extract_archive(archive, into, SourceError, what="tarball", hint="use a trusted tarball")


def resolve_tarball(
    spec: str,
    sha256: str | None,
    cache: Path,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Source:
    cache.mkdir(parents=True, exist_ok=True)
    if re.match(r"^https?://", spec):
        archive = cache / ("download-" + hashlib.sha256(spec.encode()).hexdigest()[:16] + ".tar")
        if not archive.exists():

            def progress(label: str, done: int, total: int) -> None:
                if on_progress:
                    on_progress(done, total or None)

            # Range-resumed, disk-space-checked and sha256-verified, like model downloads.
            fetched = download_url(
                spec, archive, expected_sha256=sha256.lower() if sha256 else None, progress=progress
            )
            os.replace(fetched.path, archive)
            forget_part(spec, archive)  # the part is gone; so is its resume record
    else:
        archive = Path(spec).expanduser()
        if not archive.is_file():
            raise NotFoundError(f"tarball {spec} does not exist", "check the --tarball path")
    digest = sha256_file(archive)
    if sha256 and digest.lower() != sha256.lower():
        raise SourceError(
            f"tarball sha256 is {digest}, expected {sha256}",
            "the file is corrupt or not the release you meant; download it again",
        )
    dest = cache / f"tarball-{digest[:16]}"
    if not dest.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
        try:
            top = _safe_extract(archive, tmp)
            check_tree(top)
            os.rename(top, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Source(dest, {"kind": "tarball", "sha256": digest, "origin": spec})


def check_repo(repo: str) -> str:
    """A git repository URL or path for `--repo`: never something git would read as an option
    (`--upload-pack=CMD` runs CMD), and no control characters."""
    if not repo or repo.startswith("-") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in repo):
        raise SourceError(
            f"--repo {repo!r} is not a git repository URL or path",
            "give a URL such as https://github.com/ggml-org/llama.cpp or an absolute path",
        )
    return repo


def resolve_git(ref: str, repo: str, cache: Path) -> Source:
    """Shallow-clone one tag or commit into the source cache (reused when present)."""
    if not _REF_RE.match(ref):
        raise SourceError(f"{ref!r} is not a valid git ref", "pass a tag like b11312 or a commit sha")
    check_repo(repo)
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"git-{hashlib.sha256((repo + '@' + ref).encode()).hexdigest()[:16]}"
    if not dest.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".clone-"))
        try:
            is_sha = re.fullmatch(r"[0-9a-f]{7,40}", ref) is not None
            steps = [
                ["git", "init", "-q", "--", str(tmp)],
                [
                    "git",
                    "-C",
                    str(tmp),
                    "fetch",
                    "-q",
                    "--depth",
                    "1",
                    "--",  # what follows is a repository and a ref, never an option
                    repo,
                    ref if is_sha else f"refs/tags/{ref}",
                ],
                ["git", "-C", str(tmp), "checkout", "-q", "FETCH_HEAD", "--"],
            ]
            for argv in steps:
                res = run.run(argv, timeout=900, env={"GIT_TERMINAL_PROMPT": "0"})
                if not res.ok:
                    last = (res.stderr.strip().splitlines() or ["git failed"])[-1]
                    raise SourceError(
                        f"cannot fetch llama.cpp {ref} from {repo}: {last}",
                        "check the tag name and network access, or build from --source DIR / --tarball",
                    )
            check_tree(tmp)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    head = run.run(["git", "-C", str(dest), "rev-parse", "HEAD"])
    return Source(dest, {"kind": "git", "repo": repo, "ref": ref, "commit": head.stdout.strip()})


def check_request(req: SourceRequest) -> None:
    """Fail fast on local paths that don't exist, before any slow step runs."""
    if req.directory is None and req.tarball is None:
        check_repo(req.repo)
    if req.directory is not None and not req.directory.expanduser().is_dir():
        raise NotFoundError(f"source directory {req.directory} does not exist", "check the --source path")
    if (
        req.tarball is not None
        and not re.match(r"^https?://", req.tarball)
        and not Path(req.tarball).expanduser().is_file()
    ):
        raise NotFoundError(f"tarball {req.tarball} does not exist", "check the --tarball path")
    if req.sha256 is not None:
        validate_sha256(req.sha256)  # a typo is a usage error (2), as for install-artifact and model add


def resolve_source(
    req: SourceRequest,
    cache: Path,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Source:
    if req.directory is not None:
        return resolve_local(req.directory)
    if req.tarball is not None:
        return resolve_tarball(req.tarball, req.sha256, cache, on_progress)
    return resolve_git(req.ref or DEFAULT_REF, req.repo, cache)
