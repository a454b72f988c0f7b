"""What a llama.cpp source tree declares: its CMake options and, where it carries one, its revision.

Planning adapts its defines to the tree (`plan_build(..., tree=...)`): option names changed across
llama.cpp vintages, and some trees default to features that need libraries nativellm doesn't install.
Reading is cheap (a walk over the CMake files, no CMake run) and never raises for what is absent:
a tree without a revision says "unknown".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown"
# Directories that hold no option llama.cpp's own configure reads.
_SKIP_DIRS = frozenset({".git", ".github", "build", "docs", "media", "models", "node_modules", "__pycache__"})
_NAME = r"([A-Za-z_][A-Za-z0-9_]*)"
_STRING = r'"(?:[^"\\]|\\.)*"'
# option(NAME "doc" [default]) and cmake_dependent_option(NAME "doc" default ...)
_OPTION_RE = re.compile(
    rf"\b(?:cmake_dependent_option|option)\s*\(\s*{_NAME}\s+{_STRING}\s*([^\s)]*)", re.IGNORECASE
)
# set(NAME value... CACHE TYPE "doc" [FORCE])
_CACHE_RE = re.compile(rf"\bset\s*\(\s*{_NAME}((?:\s+(?:{_STRING}|[^\s)\"]+))*?)\s+CACHE\s+\w+", re.I)
_COMMENT_RE = re.compile(rf"({_STRING})|#[^\n]*")
# llama_option_depr(WARNING OLD [NEW]): a name the tree only warns about; it is not an option there.
_DEPRECATED_RE = re.compile(rf"\bllama_option_depr\s*\(\s*\w+\s+{_NAME}[^)]*\)", re.IGNORECASE)
_IDENT_RE = re.compile(r"\b(?:GGML|LLAMA)_[A-Z0-9_]+\b")
# The server's committed web UI: an option that embeds it needs neither npm nor the network.
_BUNDLED_UI = ("tools/server/public/index.html", "examples/server/public/index.html")
_CHANGELOG_COMMIT_RE = re.compile(r"llama\.cpp@([0-9a-f]{7,40})", re.IGNORECASE)
_SHA_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class TreeOptions:
    """The CMake options one llama.cpp tree declares (name -> default as written) and its revision.

    `commit` and `build` are "unknown" when the tree carries no trace of them; `revision_from` says
    where they were read (".git", "cmake/build-info.cmake", "llama-cpp-python 0.3.36 CHANGELOG.md")."""

    options: Mapping[str, str]
    referenced: frozenset[str] = frozenset()  # GGML_*/LLAMA_* names the CMake code reads
    bundled_ui: bool = False  # the server's web UI is committed in the tree (tools/server/public)
    tools_in_examples: bool = False  # before tools/ (mid-2025): llama-server & co. are under examples/
    commit: str = UNKNOWN
    build: str = UNKNOWN
    revision_from: str = ""

    def declares(self, name: str) -> bool:
        return name in self.options

    def knows(self, name: str) -> bool:
        """Declared, or read by the CMake code (`if (GGML_CUDA_CUB_3DOT2)` is never declared)."""
        return name in self.options or name in self.referenced

    def default(self, name: str) -> str | None:
        """The default as the tree writes it ("ON", "OFF", "${LLAMA_STANDALONE}", ""), None if undeclared."""
        return self.options.get(name)

    def revision(self) -> str:
        """One phrase for reasons and messages: "commit 0c1e570 (build b7000)", "an unknown revision"."""
        if self.commit == UNKNOWN and self.build == UNKNOWN:
            return "an unknown revision"
        parts = [f"commit {self.commit[:9]}" if self.commit != UNKNOWN else "commit unknown"]
        if self.build != UNKNOWN:
            parts.append(f"build {self.build}")
        return f"{parts[0]} ({parts[1]})" if len(parts) > 1 else parts[0]


def parse_cmake_options(text: str) -> dict[str, str]:
    """The options a CMake file declares: option(), cmake_dependent_option() and set(... CACHE ...).

    Pure. The default is the text as written, unquoted ("" when option() gives none, which means OFF).
    A name declared twice (e.g. in two branches of an if) keeps its first default."""
    code = _COMMENT_RE.sub(lambda m: m.group(1) or "", text)
    found: dict[str, str] = {}
    for m in _OPTION_RE.finditer(code):
        found.setdefault(m.group(1), m.group(2).strip('"'))
    for m in _CACHE_RE.finditer(code):
        found.setdefault(m.group(1), " ".join(m.group(2).split()).strip('"'))
    return found


def referenced_names(text: str) -> set[str]:
    """GGML_*/LLAMA_* names a CMake file's code mentions, leaving out comments and the names it only
    deprecates (llama_option_depr), which are no longer options there."""
    code = _DEPRECATED_RE.sub("", _COMMENT_RE.sub(lambda m: m.group(1) or "", text))
    return set(_IDENT_RE.findall(code))


def parse_changelog_commit(changelog: str, version: str | None) -> str | None:
    """The llama.cpp commit a llama-cpp-python release vendors, from its CHANGELOG.md.

    The newest "update llama.cpp to ggml-org/llama.cpp@SHA" line at or below the release's own
    heading: a release that did not update llama.cpp still vendors the previous update."""
    start = 0
    if version:
        heading = re.search(rf"^##\s*\[{re.escape(version)}\]", changelog, re.MULTILINE)
        if heading is None:
            return None
        start = heading.end()
    m = _CHANGELOG_COMMIT_RE.search(changelog, start)
    return m.group(1).lower() if m else None


def parse_build_info(text: str) -> str | None:
    """A build number baked into cmake/build-info.cmake ("set(BUILD_NUMBER 5000)"); upstream writes 0."""
    m = re.search(r"set\s*\(\s*BUILD_NUMBER\s+\"?(\d+)\"?\s*\)", text)
    return f"b{m.group(1)}" if m and int(m.group(1)) > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _git_dir(tree: Path) -> Path | None:
    dot = tree / ".git"
    if dot.is_dir():
        return dot
    text = _read(dot) if dot.is_file() else None
    if text and text.startswith("gitdir:"):
        target = (tree / text.split(":", 1)[1].strip()).resolve()
        return target if target.is_dir() else None  # a submodule's gitdir stays behind in an sdist
    return None


def _git_revision(tree: Path) -> tuple[str, str] | None:
    """(commit, build tag or UNKNOWN) from .git files alone: HEAD, loose refs, packed-refs."""
    git = _git_dir(tree)
    if git is None:
        return None
    head = (_read(git / "HEAD") or "").strip()
    packed = _read(git / "packed-refs") or ""
    refs: dict[str, str] = {}
    for line in packed.splitlines():
        sha, _, ref = line.partition(" ")
        if _SHA_RE.fullmatch(sha):
            refs[ref] = sha
    commit = head
    if head.startswith("ref:"):
        ref = head[4:].strip()
        commit = (_read(git / ref) or refs.get(ref, "")).strip()
    if not _SHA_RE.fullmatch(commit):
        return None
    tags_dir = git / "refs" / "tags"
    if tags_dir.is_dir():
        for tag in tags_dir.iterdir():
            refs[f"refs/tags/{tag.name}"] = (_read(tag) or "").strip()
    builds = sorted(r[10:] for r, sha in refs.items() if sha == commit and re.fullmatch(r"refs/tags/b\d+", r))
    return commit, builds[-1] if builds else UNKNOWN


def _sdist_revision(tree: Path) -> tuple[str, str] | None:
    """The llama-cpp-python sdist layout: <sdist>/vendor/llama.cpp, with PKG-INFO and CHANGELOG.md."""
    if tree.parent.name != "vendor":
        return None
    sdist = tree.parent.parent
    info = _read(sdist / "PKG-INFO") or ""
    if not re.search(r"^Name:\s*llama[-_]cpp[-_]python\s*$", info, re.MULTILINE | re.IGNORECASE):
        return None
    version_m = re.search(r"^Version:\s*(\S+)", info, re.MULTILINE)
    version = version_m.group(1) if version_m else None
    commit = parse_changelog_commit(_read(sdist / "CHANGELOG.md") or "", version)
    if commit is None:
        return None
    return commit, f"llama-cpp-python {version} CHANGELOG.md"


def read_tree_options(tree: Path) -> TreeOptions:
    """Scan every CMakeLists.txt and *.cmake of a llama.cpp tree. Never raises for what is absent."""
    options: dict[str, str] = {}
    referenced: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("build"))
        for name in sorted(filenames):
            if name == "CMakeLists.txt" or name.endswith(".cmake"):
                text = _read(Path(dirpath) / name) or ""
                for key, value in parse_cmake_options(text).items():
                    options.setdefault(key, value)
                referenced |= referenced_names(text)
    bundled_ui = any((tree / p).is_file() for p in _BUNDLED_UI)
    tools_in_examples = (tree / "examples" / "server").is_dir() and not (tree / "tools" / "server").is_dir()
    commit = UNKNOWN
    build = parse_build_info(_read(tree / "cmake" / "build-info.cmake") or "")
    revision_from = "cmake/build-info.cmake" if build is not None else ""
    git, sdist = _git_revision(tree), _sdist_revision(tree)
    if git is not None:
        commit, revision_from = git[0], ".git"
        build = build or (git[1] if git[1] != UNKNOWN else None)
    elif sdist is not None:
        commit, revision_from = sdist
    return TreeOptions(
        options, frozenset(referenced), bundled_ui, tools_in_examples, commit, build or UNKNOWN, revision_from
    )
