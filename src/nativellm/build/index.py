"""Artifact indexes: `artifacts index DIR` and the `build --from-index` step (issue 5).

`write_index` describes a directory of artifacts in `index.json`, so that a plain HTTP server or a
shared directory can serve a fleet. `select_artifact` (pure) picks the entry a host should install
instead of compiling; `build_from_index` installs it, and says why not when nothing matches.

With a key, `write_index` also writes `index.json.sig` (signing.py) over the index's bytes, so the
sha256 of every entry is the signer's word, not the server's. `load_index` verifies it against the
host's trusted keys before an entry is used; an entry of a verified index installs without its own
`.sig` (`InstallOptions.vouched_by`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from nativellm.build import signing
from nativellm.build.artifacts import (
    NAME_RE,
    URL_RE,
    InstallOptions,
    get_text,
    install_locked,
    plan_key,
    read_meta,
    signature_of,
)
from nativellm.build.fingerprint import Requirements, fingerprint
from nativellm.build.options import BuildOptions, BuildOutcome, runs_here
from nativellm.build.plan import BuildPlan, plan_build
from nativellm.build.source import DEFAULT_REF, SourceRequest, resolve_local
from nativellm.build.store import Store
from nativellm.errors import ArtifactError, NativeLLMError, NotFoundError, SmokeTestError
from nativellm.fsutil import sha256_file, write_if_changed
from nativellm.hardware import HostProfile
from nativellm.paths import Paths
from nativellm.progress import Reporter

INDEX_SCHEMA = "nativellm.artifact-index/1"


@dataclass(frozen=True)
class IndexOutcome:
    path: Path
    changed: bool
    entries: tuple[Mapping[str, Any], ...]
    signed_by: str | None = None  # the key id of index.json.sig; None: unsigned


def write_index(directory: Path, sign_key: Path | None = None) -> IndexOutcome:
    """Describe every artifact in `directory` in its index.json (rewritten only when it changes),
    signed with `sign_key` (else $NATIVELLM_SIGNING_KEY; neither: unsigned) as index.json.sig."""
    key_path = signing.signing_key_path(sign_key)
    key = signing.load_signing_key(key_path) if key_path is not None else None
    directory = directory.expanduser()
    if not directory.is_dir():
        raise NotFoundError(f"{directory} is not a directory", "pass the directory that holds the artifacts")
    entries: list[dict[str, Any]] = []
    for f in sorted(p for p in directory.iterdir() if p.is_file() and NAME_RE.match(p.name)):
        digest = sha256_file(f)
        sidecar = f.with_name(f.name + ".sha256")
        if sidecar.is_file() and sidecar.read_text().split()[:1] != [digest]:
            raise ArtifactError(
                f"{f.name} does not match {sidecar.name}", f"pack it again or remove {f.name}"
            )
        meta = read_meta(f)
        keep = ("build_id", "variant", "backend", "fingerprint", "requirements", "requirements_text")
        entry = {k: meta.get(k) for k in keep}
        entry.update(
            file=f.name,
            sha256=digest,
            size=f.stat().st_size,
            version=meta.get("version"),
            source=meta.get("source"),
            plan=meta.get("plan"),
            dropped=meta.get("dropped", []),
        )
        entries.append(entry)
    by_fp: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in entries:
        slot = by_fp.setdefault(str(e["fingerprint"]), {}).setdefault(str(e["version"]), [])
        slot.append({k: e[k] for k in ("file", "sha256", "size", "build_id", "variant")})
    doc = {"schema": INDEX_SCHEMA, "artifacts": entries, "fingerprints": by_fp}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    path = directory / "index.json"
    changed = write_if_changed(path, text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if key is not None:
        changed = signing.write_signature(key, path, "index", digest) or changed
    else:
        changed = signing.drop_stale_signature(path, digest) or changed
    return IndexOutcome(path, changed, tuple(entries), key.id if key else None)


@dataclass(frozen=True)
class ArtifactIndex:
    location: str  # where index.json was read
    entries: tuple[Mapping[str, Any], ...]
    signed_by: str | None = None  # the trusted key that signed it; None: unsigned (--insecure-unsigned)

    def resolve(self, entry: Mapping[str, Any]) -> str:
        """Where an entry's file is: beside index.json, on disk or over HTTP."""
        if URL_RE.match(self.location):
            return urljoin(self.location, str(entry["file"]))
        return str(Path(self.location).parent / str(entry["file"]))


def load_index(url_or_dir: str, trust: signing.Trust, reporter: Reporter) -> ArtifactIndex:
    """An index from a directory, a path to index.json, or an http(s) URL of either, verified
    against `trust` (signing.enforce) before any of it is used."""
    if URL_RE.match(url_or_dir):
        location = url_or_dir if url_or_dir.endswith(".json") else url_or_dir.rstrip("/") + "/index.json"
        text = get_text(location)
        if text is None:
            raise NotFoundError(
                f"no artifact index at {location}", "run `nativellm artifacts index DIR` there"
            )
    else:
        p = Path(url_or_dir).expanduser()
        p = p / "index.json" if p.is_dir() else p
        location = str(p)
        if not p.is_file():
            raise NotFoundError(f"no artifact index at {p}", "run `nativellm artifacts index DIR` first")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{location} is not UTF-8 text: {exc.reason}", "regenerate it") from None
    # The signature covers the bytes (an index is ASCII JSON, so text and bytes are one).
    name = location.rstrip("/").rsplit("/", 1)[-1]
    verdict = signing.check_signature(signature_of(location), "index", name, trust)
    signed = signing.enforce(verdict, location, trust, reporter)
    if signed is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() != signed:
        raise ArtifactError(
            f"{location} is not the index its signature signs (sha256 differs): refusing it",
            "the index was changed after signing; regenerate and sign it with `artifacts index --sign-key`",
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{location} is not JSON: {exc.msg}", "regenerate it") from exc
    if not isinstance(doc, dict) or doc.get("schema") != INDEX_SCHEMA:
        raise ArtifactError(f"{location} is not a {INDEX_SCHEMA} index", "regenerate it")
    entries = doc.get("artifacts", [])
    if not isinstance(entries, list):
        raise ArtifactError(f"{location} has no list of artifacts", "regenerate it")
    return ArtifactIndex(
        location, tuple(e for e in entries if isinstance(e, dict)), verdict.key if signed else None
    )


@dataclass(frozen=True)
class Selection:
    entry: Mapping[str, Any] | None
    rejected: tuple[str, ...]  # why each other entry did not match


def select_artifact(
    entries: tuple[Mapping[str, Any], ...],
    host: HostProfile,
    wanted_plan: Callable[[frozenset[str]], Mapping[str, Any] | None],
    version_ok: Callable[[Mapping[str, Any]], bool],
) -> Selection:
    """Pure: the entry this host should install instead of compiling, or None with the reasons.

    An entry matches when its llama.cpp version is the requested one, this host meets its
    requirements, and its plan is the plan this host would build, allowing for the ISA families
    its build host dropped after a smoke-test crash. Same-fingerprint entries are preferred.
    """
    fp = fingerprint(host).key
    matches: list[Mapping[str, Any]] = []
    rejected: list[str] = []
    for e in entries:
        name = str(e.get("file"))
        if not version_ok(e.get("source") or {}):
            rejected.append(f"{name}: llama.cpp {e.get('version')} is not the requested version")
            continue
        try:
            unmet = Requirements.from_dict(e["requirements"]).unmet(host)
        except (KeyError, TypeError):
            rejected.append(f"{name}: no requirements")
            continue
        if unmet:
            rejected.append(f"{name}: {'; '.join(unmet)}")
            continue
        plan = wanted_plan(frozenset(e.get("dropped") or ()))
        if plan is None or plan_key(plan) != plan_key(e.get("plan") or {}):
            rejected.append(f"{name}: its plan differs from the plan for this host")
            continue
        matches.append(e)
    matches.sort(key=lambda e: (e.get("fingerprint") != fp, str(e.get("file"))))
    return Selection(matches[0] if matches else None, tuple(rejected))


def source_matcher(req: SourceRequest) -> Callable[[Mapping[str, Any]], bool]:
    """Does an artifact's source identity satisfy what `build` was asked to compile?"""
    if req.directory is not None:
        local = resolve_local(req.directory).identity

        def same_tree(src: Mapping[str, Any]) -> bool:
            if src.get("tree_sha256") and src.get("tree_sha256") == local.get("tree_sha256"):
                return True
            return bool(local.get("commit")) and src.get("commit") == local.get("commit")

        return same_tree
    if req.tarball is not None:
        if req.sha256:
            want: str | None = req.sha256.lower()
        elif not URL_RE.match(req.tarball):
            want = sha256_file(Path(req.tarball).expanduser())
        else:
            want = None  # a URL without --sha256: its content is unknown until it is downloaded
        return lambda src: want is not None and src.get("kind") == "tarball" and src.get("sha256") == want
    ref = req.ref or DEFAULT_REF

    def same_ref(src: Mapping[str, Any]) -> bool:
        if src.get("kind") != "git" or src.get("repo", req.repo) != req.repo:
            return False
        return src.get("ref") == ref or str(src.get("commit", "")).startswith(ref)

    return same_ref


def build_from_index(
    paths: Paths,
    opts: BuildOptions,
    plan: BuildPlan,
    target: HostProfile,
    here: HostProfile,
    reporter: Reporter,
) -> tuple[BuildOutcome | None, str]:
    """The `build --from-index` step: (outcome, "") after installing a match, else (None, why not)."""
    assert opts.from_index is not None
    t0 = time.monotonic()
    if opts.profile is not None and not runs_here(target, here):
        return None, "--from-index is ignored when building for another host (--profile); compiling"
    reporter.stage(f"looking for a matching artifact in {opts.from_index}")
    index = load_index(opts.from_index, signing.load_trust(paths, opts.insecure_unsigned), reporter)

    def wanted(dropped: frozenset[str]) -> Mapping[str, Any] | None:
        if not dropped:
            return plan.to_dict()
        try:
            disable = opts.plan.disable | dropped
            return plan_build(target, dataclasses.replace(opts.plan, disable=disable)).to_dict()
        except NativeLLMError:
            return None

    sel = select_artifact(index.entries, target, wanted, source_matcher(opts.source))
    if sel.entry is None:
        why = "; ".join(sel.rejected) or "the index is empty"
        return None, f"no artifact in {index.location} matches this host ({why}); compiling"
    entry = sel.entry
    location = index.resolve(entry)
    chosen = BuildPlan.from_dict({"schema": "nativellm.plan/1", "reasons": {}, **dict(entry["plan"])})
    if opts.dry_run:
        note = f"dry run: would install artifact {entry['file']} (build {entry['build_id']}) instead of compiling"
        return BuildOutcome(chosen, str(entry["build_id"]), notes=(note,)), ""
    install = InstallOptions(
        location,
        str(entry["sha256"]),
        activate=opts.activate,
        build_id=str(entry["build_id"]),
        insecure_unsigned=opts.insecure_unsigned,
        vouched_by=index.signed_by,
    )
    try:
        with Store(paths).lock():
            got = install_locked(paths, install, target, here, reporter)
    except SmokeTestError as exc:
        return None, f"{exc.message}; compiling instead"
    note = (
        f"installed artifact {entry['file']} from {index.location} instead of compiling"
        if got.installed
        else got.notes[0]
    )
    return (
        BuildOutcome(
            chosen,
            got.build_id,
            cached=not got.installed,
            changed=got.changed,
            activated=got.activated,
            record=got.record,
            duration_s=time.monotonic() - t0,
            notes=(note,),
        ),
        "",
    )
