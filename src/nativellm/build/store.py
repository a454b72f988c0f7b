"""The versioned build store: builds/<id>/, an atomically switched `current`, rollback, gc."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm.errors import NotFoundError, ResourceError, StoreError
from nativellm.fsutil import file_lock, symlink_atomic, write_json_atomic
from nativellm.paths import Paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_SCHEMA = "nativellm.build/1"


class ManifestProblem(Exception):
    """Why a build dir's manifest cannot be read (internal: callers see StoreError or a warning)."""


@dataclass(frozen=True)
class BuildRecord:
    """One installed build, as read from its manifest."""

    id: str
    path: Path
    backend: str
    created: str
    source: dict[str, Any]
    smoke_passed: bool
    manifest: dict[str, Any]

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def binary(self, name: str) -> Path:
        return self.bin / name

    @property
    def smoke_state(self) -> str:
        """passed; pending (a cross-build: built for another host, smoke-tested where it is installed);
        or failed."""
        if self.smoke_passed:
            return "passed"
        return "pending" if self.manifest.get("smoke_test", {}).get("skipped") else "failed"


class Store:
    """Mutations of the build store. Readers never see a half-written build."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    # -- reading -------------------------------------------------------------
    def _load(self, build_dir: Path) -> BuildRecord:
        """The record of one build dir; ManifestProblem (why) when its manifest is missing or malformed."""
        path = build_dir / "manifest.json"
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestProblem("it has no manifest.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestProblem(f"its manifest.json is unreadable ({exc})") from None
        if not isinstance(m, dict):
            raise ManifestProblem("its manifest.json is not a JSON object")
        plan, smoke, source = m.get("plan", {}), m.get("smoke_test", {}), m.get("source", {})
        if not isinstance(m.get("id"), str) or m["id"] != build_dir.name:
            raise ManifestProblem(f"its manifest.json names id {m.get('id')!r}, not {build_dir.name!r}")
        if not (isinstance(plan, dict) and isinstance(smoke, dict) and isinstance(source, dict)):
            raise ManifestProblem("its manifest.json has a plan, smoke_test or source that is not an object")
        return BuildRecord(
            id=m["id"],
            path=build_dir,
            backend=str(plan.get("backend", "?")),
            created=str(m.get("created", "")),
            source=source,
            smoke_passed=bool(smoke.get("passed")),
            manifest=m,
        )

    def _read(self, build_dir: Path) -> BuildRecord | None:
        try:
            return self._load(build_dir)
        except ManifestProblem:
            return None

    def _build_dirs(self) -> list[Path]:
        if not self.paths.builds.is_dir():
            return []
        return [d for d in self.paths.builds.iterdir() if d.is_dir() and not d.name.startswith(".")]

    def list_builds(self) -> list[BuildRecord]:
        records = [r for d in self._build_dirs() if (r := self._read(d))]
        return sorted(records, key=lambda r: (r.created, r.id))

    def broken(self) -> list[tuple[str, str]]:
        """(build dir name, why) for build dirs whose manifest is missing or malformed: `builds list`
        shows them with a warning instead of failing for the whole store."""
        found = []
        for d in sorted(self._build_dirs()):
            try:
                self._load(d)
            except ManifestProblem as exc:
                found.append((d.name, str(exc)))
        return found

    def matches(self, build_id: str) -> list[BuildRecord]:
        """The build with this exact id, else every build whose id starts with it."""
        exact = self._read(self.paths.builds / build_id) if build_id and "/" not in build_id else None
        if exact:
            return [exact]
        return [r for r in self.list_builds() if r.id.startswith(build_id)]

    def find(self, build_id: str) -> BuildRecord | None:
        """An exact id, or an unambiguous prefix of one."""
        matches = self.matches(build_id)
        return matches[0] if len(matches) == 1 else None

    def get(self, build_id: str) -> BuildRecord:
        rec = self.find(build_id)
        if rec is None:
            self._explain_missing(build_id)
            raise NotFoundError(
                f"no build {build_id!r} in {self.paths.builds}", "list builds with `nativellm builds list`"
            )
        return rec

    def _explain_missing(self, build_id: str) -> None:
        """Why `build_id` names no build, when that is not simply "absent": ambiguous or broken."""
        many = self.matches(build_id)
        if len(many) > 1:
            raise NotFoundError(
                f"build id {build_id!r} is ambiguous: {', '.join(r.id for r in many)}",
                "give more of the id",
            )
        for name, why in self.broken():
            if name == build_id or (build_id and name.startswith(build_id)):
                raise StoreError(
                    f"build {name} in {self.paths.builds} is broken: {why}",
                    f"remove the directory {self.paths.builds / name} by hand, or rebuild",
                )

    def resolve_pin(self, build_id: str) -> str:
        """The full id an instance or worker pins: `current` stays, a prefix becomes the full id,
        so that `builds rm`/`gc` see the pin (they compare full ids)."""
        if build_id == "current":
            return build_id
        return self.get(build_id).id

    def find_by_request(self, request_id: str) -> BuildRecord | None:
        """The build that an earlier request with these inputs produced (possibly after a fallback)."""
        direct = self.find(request_id)
        if direct and direct.id == request_id:
            return direct
        for rec in self.list_builds():
            if request_id in rec.manifest.get("requested_ids", []):
                return rec
        return None

    def current_id(self) -> str | None:
        try:
            return Path(os.readlink(self.paths.current)).name
        except OSError:
            return None

    def current(self) -> BuildRecord | None:
        cid = self.current_id()
        return self.find(cid) if cid else None

    def history(self) -> list[str]:
        try:
            data = json.loads((self.paths.home / "history.json").read_text())
        except (OSError, json.JSONDecodeError):
            return []
        return [str(x) for x in data.get("current", [])]

    def pinned(self) -> dict[str, list[str]]:
        """full build id -> what pins it: instance specs (config/instances/*.toml, by name) and RPC
        worker specs (config/rpc-workers/*.toml, as `rpc-worker NAME`). A pin written as a prefix
        (older specs, hand edits) protects every build it could name."""
        pins: dict[str, list[str]] = {}
        records = self.list_builds()
        for folder, label in (("instances", "{}"), ("rpc-workers", "rpc-worker {}")):
            spec_dir = self.paths.config / folder
            for spec in sorted(spec_dir.glob("*.toml")) if spec_dir.is_dir() else []:
                try:
                    doc = tomllib.loads(spec.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                    continue
                build = doc.get("build")
                if not isinstance(build, str) or build in ("", "current"):
                    continue
                exact = [r.id for r in records if r.id == build]
                ids = exact or [r.id for r in records if r.id.startswith(build)] or [build]
                for full in ids:
                    pins.setdefault(full, []).append(label.format(spec.stem))
        return pins

    # -- writing -------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """One builder at a time, across processes (flock on <home>/build.lock)."""

        def busy(holder: str) -> None:
            raise ResourceError(
                f"another nativellm build is running (pid {holder})",
                "wait for it to finish; builds never run concurrently",
            )

        with file_lock(self.paths.lock, on_busy=busy, record_pid=True):
            yield

    def install(self, staged: Path, manifest: dict[str, Any]) -> BuildRecord:
        """Move a smoke-tested staging tree into builds/<id> in one rename."""
        build_id = str(manifest["id"])
        manifest = {"schema": MANIFEST_SCHEMA, **manifest}
        write_json_atomic(staged / "manifest.json", manifest)
        self.paths.builds.mkdir(parents=True, exist_ok=True)
        dest = self.paths.builds / build_id
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(staged, dest)
        rec = self._read(dest)
        assert rec is not None
        return rec

    def set_current(self, build_id: str) -> bool:
        """Atomically point `current` at a build. Returns False when it already did."""
        rec = self.get(build_id)
        if not rec.smoke_passed:
            raise StoreError(
                f"build {rec.id} did not pass its smoke test", "build again or pick another build"
            )
        if self.current_id() == rec.id:
            return False
        symlink_atomic(f"builds/{rec.id}", self.paths.current)
        hist = [h for h in self.history() if h != rec.id] + [rec.id]
        write_json_atomic(self.paths.home / "history.json", {"current": hist[-50:]})
        return True

    def rollback(self) -> BuildRecord:
        """Make the previously current build current again."""
        cur = self.current_id()
        for candidate in reversed(self.history()):
            if candidate != cur and self.find(candidate):
                self.set_current(candidate)
                return self.get(candidate)
        raise StoreError(
            "there is no earlier build to roll back to", "list builds with `nativellm builds list`"
        )

    def _check_removable(self, rec: BuildRecord) -> None:
        if rec.id == self.current_id():
            raise StoreError(f"build {rec.id} is current", "switch with `nativellm builds use ID` first")
        pins = self.pinned().get(rec.id)
        if pins:
            raise StoreError(
                f"build {rec.id} is pinned by "
                + ", ".join(p if p.startswith("rpc-worker ") else f"instance {p}" for p in pins),
                "re-pin those instances or remove them first",
            )

    def remove(self, build_id: str) -> str:
        rec = self.get(build_id)
        self._check_removable(rec)
        trash = rec.path.with_name(f".{rec.id}.removing")
        os.rename(rec.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return rec.id

    def gc(self, keep: int) -> list[str]:
        """Remove all but the `keep` newest builds; never current or pinned ones."""
        if keep < 0:
            raise StoreError("--keep must be 0 or more", "pass --keep N")
        protected = {self.current_id(), *self.pinned()}
        candidates = [r for r in self.list_builds() if r.id not in protected]
        doomed = candidates[: max(0, len(candidates) - keep)]
        removed = [self.remove(r.id) for r in doomed]
        self._clean_work()
        return removed

    def _clean_work(self) -> None:
        """Drop work dirs that failed or interrupted builds left behind (kept for their logs)."""
        if not self.paths.work.is_dir():
            return
        try:
            with self.lock():
                for entry in self.paths.work.iterdir():
                    if entry.is_dir() and entry.name != "smoke-cache":
                        shutil.rmtree(entry, ignore_errors=True)
        except ResourceError:
            pass  # a build is running and owns its work dir
