"""The web UI llama-server embeds: built with npm from the tree's own UI sources, once per version of them.

llama.cpp (b8xxx and later) keeps its UI in tools/ui, a SvelteKit app; scripts/ui-assets.cmake embeds
whatever sits in the UI's binary dir `dist/` when it is newer than the sources, and otherwise runs npm
itself, or downloads a prebuilt archive from a Hugging Face bucket. nativellm runs npm here instead,
through its one process chokepoint, in a cache keyed by a hash of the UI sources, and hands CMake the
result (NATIVELLM_UI_DIST in cpp/CMakeLists.txt): the compile needs neither npm nor the network, and a
rebuild with the same UI sources, even of another plan, reuses the assets without running npm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nativellm import run
from nativellm.errors import UiError
from nativellm.fsutil import file_lock, write_json_atomic
from nativellm.progress import Reporter

UI_DIR = "tools/ui"
UI_SCRIPT = "scripts/ui-assets.cmake"
# What npm and the UI's own tools write at the top of the UI directory: never part of its sources.
_NOT_SOURCES = frozenset({"node_modules", "dist", "build", ".svelte-kit", "dev-dist", "test-results"})
FIX = "install Node.js and npm (Debian: apt-get install nodejs npm), or pass --no-ui to build without it"


@dataclass(frozen=True)
class UiAssets:
    """Built web UI assets ready for CMake to embed."""

    key: str  # hash of the UI sources (and the build number the UI shows)
    dist: Path
    built: bool  # npm ran for this build; False: the cache had them
    seconds: float  # npm's time when built, else the time to find them
    files: int
    bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "dist": str(self.dist),
            "built": self.built,
            "seconds": round(self.seconds, 1),
            "files": self.files,
            "bytes": self.bytes,
        }


def find_ui_sources(tree: Path) -> Path | None:
    """The tree's npm-built UI directory, or None when the tree has none nativellm knows how to build."""
    ui = tree / UI_DIR
    needed = (ui / "package.json", ui / "package-lock.json", tree / UI_SCRIPT)
    return ui if all(p.is_file() for p in needed) else None


def _source_files(ui: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(ui):
        dirs[:] = sorted(d for d in dirs if Path(root) != ui or d not in _NOT_SOURCES)
        for name in sorted(files):
            yield Path(root) / name


def ui_source_key(ui: Path, build_number: str = "") -> str:
    """Hash of every UI source file (path and bytes) and the build number the UI shows; 16 hex digits."""
    h = hashlib.sha256(f"nativellm-ui/1\0{build_number}\0".encode())
    for path in _source_files(ui):
        h.update(str(path.relative_to(ui)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _assets(dist: Path, key: str, built: bool, seconds: float) -> UiAssets:
    files = [p for p in dist.rglob("*") if p.is_file()]
    return UiAssets(key, dist, built, seconds, len(files), sum(p.stat().st_size for p in files))


def provision_ui(cache: Path, ui: Path, reporter: Reporter, build_number: str = "") -> UiAssets:
    """The built assets of the UI sources in `ui`: from the cache, or built now with `npm ci` and
    `npm run build` (which needs the npm registry unless npm's own cache has every package).

    Raises UiError, with the fix as hint, when npm is missing or fails; its log stays in the cache."""
    t0 = time.monotonic()
    key = ui_source_key(ui, build_number)
    entry = cache / key
    dist = entry / "dist"
    with file_lock(cache / f"{key}.lock"):
        if (dist / "index.html").is_file():
            reporter.stage(f"web UI: assets cached for these UI sources ({entry})")
            return _assets(dist, key, False, time.monotonic() - t0)
        npm = run.which("npm")
        if npm is None:
            raise UiError("npm is not installed, so the web UI cannot be built", FIX)
        work = cache / f"{key}.work"
        log = cache / f"{key}.log"
        shutil.rmtree(work, ignore_errors=True)
        log.unlink(missing_ok=True)
        try:
            seconds = _npm_build(npm, ui, work, log, build_number, reporter)
            entry.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dist, ignore_errors=True)
            (work / "dist").rename(dist)
            shutil.move(str(log), entry / "npm.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)  # node_modules is ~700 MB; npm's own cache keeps packages
        assets = _assets(dist, key, True, seconds)
        write_json_atomic(
            entry / "ui.json", {"source": str(ui), "build_number": build_number, **assets.to_dict()}
        )
        return assets


def _npm_build(npm: str, ui: Path, work: Path, log: Path, build_number: str, reporter: Reporter) -> float:
    """`npm ci` and `npm run build` on a copy of the UI sources in work/src, output in work/dist."""
    t0 = time.monotonic()
    src, out = work / "src", work / "dist"
    shutil.copytree(ui, src, ignore=lambda d, names: _NOT_SOURCES & set(names) if Path(d) == ui else [])
    env = {"LLAMA_UI_OUT_DIR": str(out), "npm_config_update_notifier": "false"}
    if build_number:
        env["LLAMA_BUILD_NUMBER"] = build_number
    steps = (("npm ci", [npm, "ci", "--no-audit", "--no-fund"]), ("npm run build", [npm, "run", "build"]))
    for name, argv in steps:
        reporter.stage(f"web UI: {name} (log: {log})")
        rc = run.stream(argv, log_path=log, env=env, cwd=src)
        if rc != 0:
            offline = " (offline? npm ci needs the npm registry)" if name == "npm ci" else ""
            raise UiError(
                f"{name} failed ({run.short_exit(rc)}){offline}, so the web UI cannot be built; log: {log}",
                f"read {log}; or pass --no-ui to build without the web UI",
            )
    if not (out / "index.html").is_file():
        raise UiError(f"npm run build wrote no index.html to {out}; log: {log}", f"read {log}")
    return time.monotonic() - t0


def ui_summary(assets: UiAssets) -> str:
    """One phrase for notes: where the assets came from and how big they are."""
    how = f"built with npm in {assets.seconds:.0f} s" if assets.built else "reused from the cache"
    return f"web UI {assets.key}: {how}, {assets.files} files, {assets.bytes / 1e6:.1f} MB"
