"""Artifacts: build once per hardware class, install everywhere (issue 5).

`pack` writes one installed build as `nativellm-<build-id>-<variant>.tar.zst` (`.tar.gz` without
the zstandard package): `<build-id>/artifact.json` first, then manifest.json, bin/, lib/ and
share/. The tarball is reproducible (sorted members, fixed owner and mtime), so packing the same
build twice gives the same sha256. `install_artifact` verifies the sha256, checks the
requirements against this host before unpacking anything, unpacks into a temp dir inside the
store, smoke-tests with the build's own binaries and only then renames it into builds/<id>.
`write_index` describes a directory of artifacts in `index.json`; `build_from_index` is the
`build --from-index` step that installs a matching artifact instead of compiling.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urljoin

from nativellm import __version__
from nativellm.errors import ArtifactError, NativeLLMError, NotFoundError, SmokeTestError, UsageError
from nativellm.fingerprint import Requirements, fingerprint, requirements_of
from nativellm.fsutil import sha256_file, write_atomic
from nativellm.hardware import HostProfile, detect_host
from nativellm.hardware.profile import load_profile
from nativellm.paths import Paths
from nativellm.plan import BuildPlan, plan_build
from nativellm.smoke import base_model, smoke_test
from nativellm.source import DEFAULT_REF, SourceRequest, _safe_extract, resolve_local
from nativellm.store import BuildRecord, Store
from nativellm.synth import VOCAB_FILE

if TYPE_CHECKING:
    from nativellm.build import BuildOptions, BuildOutcome, Reporter

ARTIFACT_SCHEMA = "nativellm.artifact/1"
INDEX_SCHEMA = "nativellm.artifact-index/1"
META_FILE = "artifact.json"
_PACKED_DIRS = ("bin", "lib", "share")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^nativellm-.+\.tar\.(zst|gz)$")
_URL_RE = re.compile(r"^https?://")


def _zstd() -> Any | None:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


# --------------------------------------------------------------------------- metadata
def variant_of(manifest: Mapping[str, Any]) -> str:
    """A readable hardware-class label for file names: x86_64-avx512, x86_64-portable, x86_64-sm_120."""
    req = requirements_of(manifest)
    if req.cpu != "explicit":
        level = req.cpu
    else:
        order = ("avx512f", "avx2", "avx", "sse4_2")
        level = next((f.replace("f", "") if f == "avx512f" else f for f in order if f in req.cpu_flags), "")
        if not level:
            arm = str(manifest.get("plan", {}).get("cmake_defines", {}).get("GGML_CPU_ARM_ARCH", ""))
            level = arm.replace("+", "_") or "baseline"
    parts = [req.arch, level, *req.gpu_archs, *(f"{p}ptx" for p in req.gpu_ptx)]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "-".join(parts))


def source_version(identity: Mapping[str, Any]) -> str:
    """The llama.cpp version an index entry is filed under: a tag, a commit or a content hash."""
    kind = identity.get("kind")
    if kind == "git":
        return str(identity.get("ref") or str(identity.get("commit", ""))[:12])
    if kind == "tarball":
        return f"tarball-{str(identity.get('sha256', ''))[:12]}"
    if identity.get("commit"):
        return str(identity["commit"])[:12]
    return f"tree-{str(identity.get('tree_sha256', ''))[:12]}"


def _plan_key(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a plan that change the binaries (reasons and warnings don't)."""
    return {
        "backend": plan.get("backend"),
        "cmake_defines": dict(plan.get("cmake_defines", {})),
        "targets": list(plan.get("targets", [])),
    }


def artifact_meta(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """`artifact.json`: what an index and an installer need without unpacking the build."""
    source = {k: v for k, v in manifest.get("source", {}).items() if k not in ("path", "origin")}
    built_for = manifest.get("built_for")
    fp = fingerprint(HostProfile.from_dict(built_for)).key if built_for else None
    req = requirements_of(manifest)
    return {
        "schema": ARTIFACT_SCHEMA,
        "build_id": manifest["id"],
        "variant": variant_of(manifest),
        "backend": manifest.get("plan", {}).get("backend"),
        "fingerprint": fp,
        "requirements": req.to_dict(),
        "requirements_text": req.describe(),
        "version": source_version(source),
        "source": source,
        "plan": _plan_key(manifest.get("plan", {})),
        "dropped": sorted({str(f["dropped"]) for f in manifest.get("fallbacks", []) if "dropped" in f}),
        "nativellm_version": manifest.get("nativellm_version", __version__),
    }


# --------------------------------------------------------------------------- pack
@dataclass(frozen=True)
class PackOptions:
    build_id: str | None = None  # None: the current build
    output: Path | None = None  # a file, or a directory for the default name; None: the working directory
    compression: str = "auto"  # auto (zst when zstandard is installed, else gz) | zst | gz


@dataclass(frozen=True)
class PackOutcome:
    path: Path
    sha256: str
    size: int
    changed: bool
    build_id: str
    meta: Mapping[str, Any]
    duration_s: float


def _compression(wanted: str) -> str:
    if wanted not in ("auto", "zst", "gz"):
        raise UsageError(f"unknown compression {wanted!r}", "use zst or gz")
    if wanted == "auto":
        return "zst" if _zstd() is not None else "gz"
    if wanted == "zst" and _zstd() is None:
        raise ArtifactError(
            "zstd compression needs the zstandard package", "pip install zstandard, or use gz"
        )
    return wanted


def _epoch(created: str) -> int:
    try:
        return int(dt.datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return 0


def _members(rec: BuildRecord) -> Iterator[tuple[Path, str]]:
    yield rec.path / "manifest.json", "manifest.json"
    for top in _PACKED_DIRS:
        root = rec.path / top
        if not root.is_dir():
            continue
        yield root, top
        for p in sorted(root.rglob("*")):
            yield p, str(p.relative_to(rec.path))


def _write_tar(raw: IO[bytes], rec: BuildRecord, meta: Mapping[str, Any], mtime: int) -> None:
    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, 0, 0, "", ""
        return ti

    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        ti = norm(tarfile.TarInfo(f"{rec.id}/{META_FILE}"))
        ti.size, ti.mode = len(data), 0o644
        tar.addfile(ti, io.BytesIO(data))
        for path, rel in _members(rec):
            ti = norm(tar.gettarinfo(str(path), arcname=f"{rec.id}/{rel}"))
            if ti.issym() and (ti.linkname.startswith("/") or ".." in Path(ti.linkname).parts):
                raise ArtifactError(
                    f"{path} links outside the build ({ti.linkname})", "rebuild; builds are self-contained"
                )
            if ti.isreg():
                with path.open("rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)


def pack(paths: Paths, opts: PackOptions) -> PackOutcome:
    """Write one installed build as a reproducible artifact next to its `.sha256` file."""
    t0 = time.monotonic()
    store = Store(paths)
    if opts.build_id is None:
        rec = store.current()
        if rec is None:
            raise NotFoundError(
                "there is no current build to pack", "pass a build id (`nativellm builds list`)"
            )
    else:
        rec = store.get(opts.build_id)
    comp = _compression(opts.compression)
    meta = artifact_meta(rec.manifest)
    name = f"nativellm-{rec.id}-{meta['variant']}.tar.{comp}"
    out = opts.output.expanduser() if opts.output else Path.cwd()
    dest = out / name if out.is_dir() else out
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            mtime = _epoch(rec.created)
            if comp == "zst":
                cctx = _zstd().ZstdCompressor(level=10)  # type: ignore[union-attr]
                with cctx.stream_writer(raw, closefd=False) as zw:
                    _write_tar(zw, rec, meta, mtime)
            else:
                with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                    _write_tar(gz, rec, meta, mtime)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        digest = sha256_file(tmp)
        changed = not (dest.is_file() and sha256_file(dest) == digest)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = dest.with_name(dest.name + ".sha256")
    line = f"{digest}  {dest.name}\n"
    if not (sidecar.is_file() and sidecar.read_text() == line):
        write_atomic(sidecar, line)
        changed = True
    size = dest.stat().st_size
    return PackOutcome(dest, digest, size, changed, rec.id, meta, time.monotonic() - t0)


# --------------------------------------------------------------------------- reading an artifact
def _is_zstd(archive: Path) -> bool:
    with archive.open("rb") as f:
        return f.read(4) == _ZSTD_MAGIC


@contextmanager
def _stream(archive: Path) -> Iterator[tarfile.TarFile]:
    with archive.open("rb") as raw:
        if _is_zstd(archive):
            zstd = _zstd()
            if zstd is None:
                raise ArtifactError(
                    f"{archive.name} is zstd-compressed and the zstandard package is missing",
                    "pip install zstandard, or pack the artifact with --compression gz",
                )
            reader = zstd.ZstdDecompressor().stream_reader(raw)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                yield tar
        else:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar


def read_meta(archive: Path) -> dict[str, Any]:
    """`artifact.json` of an artifact (the first member), without unpacking the rest."""
    try:
        with _stream(archive) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("/" + META_FILE) and member.name.count("/") == 1:
                    f = tar.extractfile(member)
                    meta = json.loads(f.read()) if f else None
                    break
            else:
                meta = None
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, ValueError) as exc:
        raise ArtifactError(f"{archive} is not a readable artifact: {exc}", "pack it again") from exc
    if not isinstance(meta, dict) or meta.get("schema") != ARTIFACT_SCHEMA:
        raise ArtifactError(
            f"{archive} is not a nativellm artifact (no {META_FILE} of schema {ARTIFACT_SCHEMA})",
            "make artifacts with `nativellm pack`",
        )
    return meta


def _extract(archive: Path, into: Path) -> Path:
    """Unpack through source._safe_extract (unsafe paths are refused); zstd is decoded first."""
    into.mkdir(parents=True, exist_ok=True)
    plain = into.with_name(into.name + ".tar")
    try:
        if not _is_zstd(archive):
            return _safe_extract(archive, into)
        zstd = _zstd()
        if zstd is None:
            read_meta(archive)  # raises the "zstandard is missing" error
        with archive.open("rb") as src, plain.open("wb") as dst:
            zstd.ZstdDecompressor().copy_stream(src, dst)  # type: ignore[union-attr]
        return _safe_extract(plain, into)
    except ArtifactError:
        raise
    except NativeLLMError as exc:  # source._safe_extract speaks of tarballs; this is an artifact
        raise ArtifactError(exc.message, "the artifact is unsafe or damaged: pack it again") from exc
    except Exception as exc:
        raise ArtifactError(f"{archive} is not a readable artifact: {exc}", "download it again") from exc
    finally:
        plain.unlink(missing_ok=True)


# --------------------------------------------------------------------------- install
@dataclass(frozen=True)
class InstallOptions:
    location: str  # a path or an http(s) URL
    sha256: str | None = None  # None: FILE.sha256 beside it
    profile: Path | None = None  # check the requirements against this profile instead of this host
    activate: bool = True


@dataclass(frozen=True)
class InstallOutcome:
    build_id: str
    changed: bool
    installed: bool  # False: it was already there
    activated: bool
    sha256: str
    requirements: Requirements
    record: BuildRecord
    smoke_test: Mapping[str, Any] | None
    duration_s: float
    notes: tuple[str, ...] = ()


def _get_text(url: str) -> str | None:
    import httpx

    try:
        resp = httpx.get(url, follow_redirects=True, timeout=30)
    except httpx.HTTPError as exc:
        raise ArtifactError(f"cannot fetch {url}: {exc}", "check the URL and the network") from exc
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise ArtifactError(f"{url} answered HTTP {resp.status_code}", "check the URL")
    return resp.text


def _sidecar_sha(location: str) -> str | None:
    sidecar = location + ".sha256"
    if _URL_RE.match(location):
        text = _get_text(sidecar)
    else:
        p = Path(sidecar).expanduser()
        text = p.read_text() if p.is_file() else None
    return text.split()[0].lower() if text and text.split() else None


def _expected_sha(location: str, given: str | None) -> str:
    sha = (given or _sidecar_sha(location) or "").lower()
    if not sha:
        raise ArtifactError(
            f"no sha256 for {location}: an artifact is installed only after its sha256 is checked",
            f"pass --sha256 HEX, or keep {Path(location).name}.sha256 (written by `nativellm pack`) beside it",
        )
    if not _SHA_RE.match(sha):
        raise UsageError(f"sha256 {sha!r} is not 64 hex digits", "copy the full sha256 printed by `pack`")
    return sha


def _fetch(paths: Paths, location: str, sha: str, downloads: Path) -> Path:
    if _URL_RE.match(location):
        from nativellm.download import download_url
        from nativellm.errors import DownloadError

        name = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "artifact"
        dest = downloads / f"{sha[:16]}-{name}"
        try:
            got = download_url(location, dest, expected_sha256=sha)
        except DownloadError as exc:
            if "sha256" in exc.message:
                raise ArtifactError(exc.message, "the artifact is corrupt or not the one you meant") from exc
            raise
        return got.path
    path = Path(location).expanduser()
    if not path.is_file():
        raise NotFoundError(f"artifact {location} does not exist", "check the path")
    digest = sha256_file(path)
    if digest != sha:
        raise ArtifactError(
            f"sha256 of {path.name} is {digest}, expected {sha}",
            "the artifact is corrupt or not the one you meant; copy or download it again",
        )
    return path


def _by_artifact_sha(store: Store, sha: str) -> BuildRecord | None:
    return next(
        (
            r
            for r in store.list_builds()
            if r.smoke_passed and r.manifest.get("artifact", {}).get("sha256") == sha
        ),
        None,
    )


def _verify_binaries(top: Path, manifest: Mapping[str, Any]) -> None:
    for rel, want in manifest.get("binaries", {}).items():
        p = top / rel
        if not p.is_file() or sha256_file(p) != want:
            raise ArtifactError(
                f"{rel} in the artifact does not match its manifest sha256", "pack the build again"
            )


def _already(
    store: Store, rec: BuildRecord, sha: str, req: Requirements, activate: bool, t0: float
) -> InstallOutcome:
    activated = activate and store.set_current(rec.id)
    note = f"build {rec.id} is already installed" + ("; made it current" if activated else "")
    return InstallOutcome(
        rec.id, activated, False, activated, sha, req, rec, None, time.monotonic() - t0, (note,)
    )


def install_locked(
    paths: Paths, opts: InstallOptions, host: HostProfile, here: HostProfile, reporter: Reporter
) -> InstallOutcome:
    """install_artifact without taking the store lock (the caller holds it)."""
    t0 = time.monotonic()
    store = Store(paths)
    sha = _expected_sha(opts.location, opts.sha256)
    seen = _by_artifact_sha(store, sha)
    if seen is not None:
        req = Requirements.from_dict(seen.manifest["artifact"]["requirements"])
        return _already(store, seen, sha, req, opts.activate, t0)
    paths.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=paths.work, prefix=".artifact-"))
    try:
        reporter.stage(f"fetching and verifying {opts.location}")
        archive = _fetch(paths, opts.location, sha, tmp)
        meta = read_meta(archive)
        req = Requirements.from_dict(meta["requirements"])
        unmet = req.unmet(host)
        if unmet:
            raise ArtifactError(
                "; ".join(unmet),
                f"this artifact needs {req.describe()}; install one built for this hardware class "
                "(`nativellm fingerprint`) or build here with `nativellm build --auto`",
            )
        build_id = str(meta["build_id"])
        existing = store.find(build_id)
        if existing is not None and existing.id == build_id and existing.smoke_passed:
            return _already(store, existing, sha, req, opts.activate, t0)
        reporter.stage(f"unpacking {build_id}")
        top = _extract(archive, tmp / "unpacked")
        manifest = json.loads((top / "manifest.json").read_text())
        if top.name != build_id or manifest.get("id") != build_id:
            raise ArtifactError(f"{archive.name} does not hold build {build_id}", "pack it again")
        _verify_binaries(top, manifest)
        vocab = top / "share" / "nativellm" / VOCAB_FILE
        if not vocab.is_file():
            raise ArtifactError(f"{archive.name} has no smoke-test vocab ({VOCAB_FILE})", "pack it again")
        reporter.stage("smoke test on this host: real inference on Q4_0, Q8_0 and Q4_K_M models")
        base = base_model(paths.work / "smoke-cache" / sha256_file(vocab)[:12], vocab)
        result = smoke_test(top / "bin", base, tmp / "smoke", threads=max(1, here.cpu.physical_cores))
        if not result.passed:
            raise SmokeTestError(
                f"artifact build {build_id} failed its smoke test on this host ({result.summary()}); "
                "it was not installed",
                "this host cannot run it: build here with `nativellm build --auto`",
            )
        shutil.copy2(tmp / "smoke" / "smoke.log", top / "smoke.log")
        (top / META_FILE).unlink(missing_ok=True)
        manifest["artifact"] = {
            "sha256": sha,
            "origin": opts.location,
            "installed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": meta.get("fingerprint"),
            "installed_on": fingerprint(here).key,
            "requirements": req.to_dict(),
            "build_host_smoke_test": manifest.get("smoke_test"),
        }
        manifest["smoke_test"] = result.to_dict()
        manifest.pop("schema", None)
        record = store.install(top, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    activated = opts.activate and store.set_current(record.id)
    notes = [f"installed artifact {record.id} ({meta['variant']})"]
    return InstallOutcome(
        record.id,
        True,
        True,
        activated,
        sha,
        req,
        record,
        result.to_dict(),
        time.monotonic() - t0,
        tuple(notes),
    )


def install_artifact(paths: Paths, opts: InstallOptions, reporter: Reporter | None = None) -> InstallOutcome:
    """Verify, check, unpack, smoke-test, install (and by default activate) one artifact."""
    from nativellm.build import SilentReporter

    here = detect_host()
    host = load_profile(opts.profile) if opts.profile else here
    with Store(paths).lock():
        return install_locked(paths, opts, host, here, reporter or SilentReporter())


# --------------------------------------------------------------------------- index
@dataclass(frozen=True)
class IndexOutcome:
    path: Path
    changed: bool
    entries: tuple[Mapping[str, Any], ...]


def write_index(directory: Path) -> IndexOutcome:
    """Describe every artifact in `directory` in its index.json (rewritten only when it changes)."""
    directory = directory.expanduser()
    if not directory.is_dir():
        raise NotFoundError(f"{directory} is not a directory", "pass the directory that holds the artifacts")
    entries: list[dict[str, Any]] = []
    for f in sorted(p for p in directory.iterdir() if p.is_file() and _NAME_RE.match(p.name)):
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
    changed = not (path.is_file() and path.read_text() == text)
    if changed:
        write_atomic(path, text)
    return IndexOutcome(path, changed, tuple(entries))


@dataclass(frozen=True)
class ArtifactIndex:
    location: str  # where index.json was read
    entries: tuple[Mapping[str, Any], ...]

    def resolve(self, entry: Mapping[str, Any]) -> str:
        """Where an entry's file is: beside index.json, on disk or over HTTP."""
        if _URL_RE.match(self.location):
            return urljoin(self.location, str(entry["file"]))
        return str(Path(self.location).parent / str(entry["file"]))


def load_index(url_or_dir: str) -> ArtifactIndex:
    """An index from a directory, a path to index.json, or an http(s) URL of either."""
    if _URL_RE.match(url_or_dir):
        location = url_or_dir if url_or_dir.endswith(".json") else url_or_dir.rstrip("/") + "/index.json"
        text = _get_text(location)
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
        text = p.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{location} is not JSON: {exc.msg}", "regenerate it") from exc
    if not isinstance(doc, dict) or doc.get("schema") != INDEX_SCHEMA:
        raise ArtifactError(f"{location} is not a {INDEX_SCHEMA} index", "regenerate it")
    return ArtifactIndex(location, tuple(e for e in doc.get("artifacts", []) if isinstance(e, dict)))


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
        if plan is None or _plan_key(plan) != _plan_key(e.get("plan") or {}):
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
        elif not _URL_RE.match(req.tarball):
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
    from nativellm.build import BuildOutcome, _is_this_host

    assert opts.from_index is not None
    t0 = time.monotonic()
    if opts.profile is not None and not _is_this_host(target, here):
        return None, "--from-index is ignored when building for another host (--profile); compiling"
    reporter.stage(f"looking for a matching artifact in {opts.from_index}")
    index = load_index(opts.from_index)

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
    install = InstallOptions(location, str(entry["sha256"]), activate=opts.activate)
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
