"""Artifacts: build once per hardware class, install everywhere (issue 5).

`pack` writes one installed build as `nativellm-<build-id>-<variant>.tar.zst` (`.tar.gz` without
the zstandard package): `<build-id>/artifact.json` first, then manifest.json, bin/, lib/ and
share/. The tarball is reproducible (sorted members, fixed owner and mtime), so packing the same
build twice gives the same sha256; with a key it is signed (`<archive>.sig`, signing.py).
`install_artifact` first verifies the signature against this host's trusted keys (issue 14: a
sha256 from the same server proves nothing) and then the sha256 it signs, checks the
requirements against this host before unpacking anything, unpacks into a temp dir inside the
store, smoke-tests with the build's own binaries and only then renames it into builds/<id>.
Indexes and `build --from-index` live in artifact_index.py.
"""

from __future__ import annotations

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
from typing import IO, Any, BinaryIO

from nativellm import __version__, download
from nativellm.build import cudalibs, signing
from nativellm.build.confine import confined_smoke_test
from nativellm.build.extract import extract_archive, read_json_member
from nativellm.build.fingerprint import Requirements, fingerprint, requirements_of
from nativellm.build.smoke import base_model, plan_smoke_offload
from nativellm.build.store import BuildRecord, Store
from nativellm.build.synth import VOCAB_FILE
from nativellm.download import download_url
from nativellm.errors import (
    ArtifactError,
    DownloadError,
    NativeLLMError,
    NotFoundError,
    SmokeTestError,
    UsageError,
)
from nativellm.fsutil import sha256_file, write_if_changed
from nativellm.hardware import HostProfile, detect_host
from nativellm.hardware.nvidia import find_nvcc
from nativellm.hardware.profile import load_profile
from nativellm.paths import Paths
from nativellm.progress import Reporter, SilentReporter
from nativellm.specs import validate_sha256

ARTIFACT_SCHEMA = "nativellm.artifact/1"
META_FILE = "artifact.json"
_PACKED_DIRS = ("bin", "lib", "share")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
NAME_RE = re.compile(r"^nativellm-.+\.tar\.(zst|gz)$")
URL_RE = re.compile(r"^https?://")


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


def plan_key(plan: Mapping[str, Any]) -> dict[str, Any]:
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
        "plan": plan_key(manifest.get("plan", {})),
        "dropped": sorted({str(f["dropped"]) for f in manifest.get("fallbacks", []) if "dropped" in f}),
        "nativellm_version": manifest.get("nativellm_version", __version__),
    }


# --------------------------------------------------------------------------- pack
@dataclass(frozen=True)
class PackOptions:
    build_id: str | None = None  # None: the current build
    output: Path | None = None  # a file, or a directory for the default name; None: the working directory
    compression: str = "auto"  # auto (zst when zstandard is installed, else gz) | zst | gz
    sign_key: Path | None = None  # ed25519 private key: write <archive>.sig (signing.py); None: unsigned


@dataclass(frozen=True)
class PackOutcome:
    path: Path
    sha256: str
    size: int
    changed: bool
    build_id: str
    meta: Mapping[str, Any]
    duration_s: float
    signed_by: str | None = None  # the key id of <archive>.sig; None: unsigned


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
    # lib/ links to this host's CUDA runtime (cudalibs.link_runtime): the installing host makes its own.
    host_links = {f"lib/{name}" for name in cudalibs.link_names(rec.manifest)}
    for top in _PACKED_DIRS:
        root = rec.path / top
        if not root.is_dir():
            continue
        yield root, top
        for p in sorted(root.rglob("*")):
            rel = str(p.relative_to(rec.path))
            if not (rel in host_links and p.is_symlink()):
                yield p, rel


def _write_tar(raw: IO[bytes], rec: BuildRecord, meta: Mapping[str, Any], mtime: int) -> None:
    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, 0, 0, "", ""
        ti.mode &= 0o777  # no setuid/setgid/sticky (a setgid store dir): hosts refuse such members
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


def publish_archive(
    dest: Path, write: Callable[[BinaryIO], None], key: signing.SigningKey | None = None
) -> tuple[str, bool]:
    """Write an archive through a temp file beside `dest` (fsynced, then renamed over it), its
    `DEST.sha256` sidecar (`sha256sum -c` format) and, with a key, its `DEST.sig` signature.
    Returns (sha256, whether any file changed): reproducible archives and deterministic ed25519
    signatures make a repeated pack a no-op. Unsigned, a `.sig` of other bytes is removed."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            write(raw)
            raw.flush()
            os.fsync(raw.fileno())
        digest = sha256_file(tmp)
        changed = not (dest.is_file() and sha256_file(dest) == digest)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    changed = write_if_changed(dest.with_name(dest.name + ".sha256"), f"{digest}  {dest.name}\n") or changed
    if key is not None:
        changed = signing.write_signature(key, dest, "artifact", digest) or changed
    else:
        changed = signing.drop_stale_signature(dest, digest) or changed
    return digest, changed


def pack_key(opts: PackOptions) -> signing.SigningKey | None:
    """The signing key of a pack (--sign-key, else $NATIVELLM_SIGNING_KEY), loaded before any work."""
    path = signing.signing_key_path(opts.sign_key)
    return signing.load_signing_key(path) if path is not None else None


def pack(paths: Paths, opts: PackOptions) -> PackOutcome:
    """Write one installed build as a reproducible artifact next to its `.sha256` file."""
    t0 = time.monotonic()
    key = pack_key(opts)
    store = Store(paths)
    if opts.build_id is None:
        rec = store.current()
        if rec is None:
            raise NotFoundError(
                "there is no current build to pack", "pass a build id (`nativellm builds list`)"
            )
    else:
        rec = store.get(opts.build_id)
    # What is packed is what was smoke-tested: a binary changed or lost since then is not shipped.
    _verify_binaries(
        rec.path,
        rec.manifest,
        f"build {rec.id}",
        "it changed after it was installed: rebuild it with `nativellm build`, or pack another build",
    )
    comp = _compression(opts.compression)
    meta = artifact_meta(rec.manifest)
    name = f"nativellm-{rec.id}-{meta['variant']}.tar.{comp}"
    out = opts.output.expanduser() if opts.output else Path.cwd()
    dest = out / name if out.is_dir() else out
    dest.parent.mkdir(parents=True, exist_ok=True)
    mtime = _epoch(rec.created)

    def write(raw: BinaryIO) -> None:
        if comp == "zst":
            cctx = _zstd().ZstdCompressor(level=10)  # type: ignore[union-attr]
            with cctx.stream_writer(raw, closefd=False) as zw:
                _write_tar(zw, rec, meta, mtime)
        else:
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                _write_tar(gz, rec, meta, mtime)  # type: ignore[arg-type]

    digest, changed = publish_archive(dest, write, key)
    size = dest.stat().st_size
    signed_by = key.id if key else None
    return PackOutcome(dest, digest, size, changed, rec.id, meta, time.monotonic() - t0, signed_by)


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


META_MAX_BYTES = 1 << 20


def read_meta(archive: Path) -> dict[str, Any]:
    """`artifact.json` of an artifact (the first member), without unpacking the rest."""
    try:
        with _stream(archive) as tar:
            # pack writes it first: only the first member is looked at, and only its first MiB read,
            # so a hostile archive costs no more than that before its signature decides.
            member = tar.next()
            meta = None
            if (
                member is not None
                and member.isfile()
                and member.name.endswith("/" + META_FILE)
                and member.name.count("/") == 1
                and member.size <= META_MAX_BYTES
            ):
                f = tar.extractfile(member)
                meta = json.loads(f.read(META_MAX_BYTES)) if f else None
    except NativeLLMError:
        raise
    except Exception as exc:  # hostile bytes: tarfile, gzip and zstandard raise a zoo of types
        raise ArtifactError(
            f"{archive} is not a readable artifact: {type(exc).__name__}: {exc}", "pack it again"
        ) from exc
    if not isinstance(meta, dict) or meta.get("schema") != ARTIFACT_SCHEMA:
        raise ArtifactError(
            f"{archive} is not a nativellm artifact (no {META_FILE} of schema {ARTIFACT_SCHEMA})",
            "make artifacts with `nativellm pack`",
        )
    return meta


def _extract(archive: Path, into: Path) -> Path:
    """Unpack through build.extract (unsafe members, bombs and special files are refused, nothing is
    left behind on failure); the top directory must hold a manifest.json object."""
    top = extract_archive(
        archive, into, ArtifactError, what="artifact", hint="the artifact is unsafe or damaged: pack it again"
    )
    if read_json_member(top, "manifest.json") is None:
        shutil.rmtree(into, ignore_errors=True)
        raise ArtifactError(
            f"{archive.name} has no build manifest (manifest.json) in {top.name}/",
            "make artifacts with `nativellm pack`",
        )
    return top


# --------------------------------------------------------------------------- install
@dataclass(frozen=True)
class InstallOptions:
    location: str  # a path or an http(s) URL
    sha256: str | None = None  # None: FILE.sha256 beside it
    profile: Path | None = None  # check the requirements against this profile instead of this host
    activate: bool = True
    build_id: str | None = None  # known from an index entry: an installed build is seen without a download
    insecure_unsigned: bool = False  # install without a verified signature (a warning; never over plain http)
    vouched_by: str | None = None  # the trusted key whose signed index gave `sha256` (build --from-index)


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
    signed_by: str | None = None  # the trusted key that vouched for it; None: --insecure-unsigned


def get_text(url: str) -> str | None:
    """An index, signature or checksum sidecar over HTTP; None on 404. A transport failure or an
    HTTP error is a download error (exit 13), like any other fetch."""
    return download.get_text(url)


def _sidecar_sha(location: str) -> str | None:
    sidecar = location + ".sha256"
    if URL_RE.match(location):
        text = get_text(sidecar)
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
    return validate_sha256(sha, "sha256")


def file_name(location: str) -> str:
    """The name a signature binds: the last path component of a URL or a path."""
    if URL_RE.match(location):
        return location.rstrip("/").rsplit("/", 1)[-1].split("?")[0].split("#")[0]
    return Path(location).expanduser().name


def signature_of(location: str) -> str | None:
    """The `.sig` sidecar beside a file or URL; None when there is none (a 404)."""
    where = location + signing.SIG_SUFFIX
    if URL_RE.match(location):
        text = get_text(where)
    else:
        p = Path(where).expanduser()
        if not p.is_file():
            return None
        with p.open("rb") as f:
            data = f.read(signing.MAX_SIG_BYTES + 1)
        text = data.decode("utf-8", errors="replace")
    if text is not None and len(text) > signing.MAX_SIG_BYTES:
        return "{}"  # not a signature: check_signature calls it invalid
    return text


def trusted_sha(paths: Paths, opts: InstallOptions, reporter: Reporter) -> tuple[str, str | None]:
    """(the sha256 to install, the trusted key that vouched for it), before anything is fetched,
    unpacked or run. A verified `.sig` (or a signed index, `vouched_by`) gives the sha256; without
    one only --insecure-unsigned goes on (warned, never over plain http), with --sha256 or the
    `.sha256` sidecar as before."""
    if opts.vouched_by is not None and opts.sha256:
        return validate_sha256(opts.sha256.lower(), "sha256"), opts.vouched_by
    if opts.sha256:  # a typo in --sha256 is a usage error, whatever the signature says
        validate_sha256(opts.sha256)
    is_url = URL_RE.match(opts.location) is not None
    if not is_url and not Path(opts.location).expanduser().is_file():
        raise NotFoundError(f"artifact {opts.location} does not exist", "check the path")
    trust = signing.load_trust(paths, opts.insecure_unsigned)
    name = file_name(opts.location)
    sig = signature_of(opts.location)
    if sig is None and is_url and download.missing(opts.location):
        raise NotFoundError(f"no artifact at {opts.location} (HTTP 404)", "check the URL")
    verdict = signing.check_signature(sig, "artifact", name, trust)
    signed = signing.enforce(verdict, opts.location, trust, reporter)
    if signed is None:
        return _expected_sha(opts.location, opts.sha256), None
    if opts.sha256 and opts.sha256.lower() != signed:
        raise ArtifactError(
            f"--sha256 {opts.sha256} is not the signed sha256 of {name} ({signed})",
            "drop --sha256 (the signature gives it) or check which artifact you meant",
        )
    return signed, verdict.key


def _fetch(location: str, sha: str, downloads: Path) -> Path:
    if URL_RE.match(location):
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


def _link_cuda_runtime(top: Path, manifest: Mapping[str, Any], build_id: str) -> list[dict[str, str]] | None:
    """A CUDA artifact ships without cuBLAS (hundreds of MB): link this host's own into its lib/,
    from NVIDIA's wheels or the CUDA toolkit. None for builds without CUDA."""
    math = manifest.get("cuda_math")
    if not math:
        return None
    major = int(math.get("cuda_major", 0))
    linked = cudalibs.link_runtime(top, cudalibs.runtime_lib_dirs(find_nvcc(), major))
    missing = [e["soname"] for e in linked if "missing" in e]
    if missing:
        wheel = "nvidia-cublas" if major >= 13 else f"nvidia-cublas-cu{major}"
        raise ArtifactError(
            f"build {build_id} needs {', '.join(missing)}, and this host has none (no CUDA {major} toolkit "
            f"libraries, no {wheel} wheel); nothing was installed",
            f"pip install '{wheel}=={major}.*' into nativellm's environment (or set {cudalibs.SITE_ENV} to "
            "the site-packages that has it), then install again",
        )
    return linked


def _verify_binaries(
    top: Path, manifest: Mapping[str, Any], where: str = "the artifact", hint: str = "pack the build again"
) -> None:
    for rel, want in manifest.get("binaries", {}).items():
        p = top / rel
        if not p.is_file():
            raise ArtifactError(f"{rel} is missing from {where}", hint)
        if sha256_file(p) != want:
            raise ArtifactError(f"{rel} in {where} does not match its manifest sha256", hint)


def _already(
    store: Store,
    rec: BuildRecord,
    sha: str,
    req: Requirements,
    activate: bool,
    t0: float,
    signed_by: str | None = None,
) -> InstallOutcome:
    activated = activate and store.set_current(rec.id)
    note = f"build {rec.id} is already installed" + ("; made it current" if activated else "")
    return InstallOutcome(
        rec.id, activated, False, activated, sha, req, rec, None, time.monotonic() - t0, (note,), signed_by
    )


def install_locked(
    paths: Paths, opts: InstallOptions, host: HostProfile, here: HostProfile, reporter: Reporter
) -> InstallOutcome:
    """install_artifact without taking the store lock (the caller holds it)."""
    t0 = time.monotonic()
    store = Store(paths)
    sha, signed_by = trusted_sha(paths, opts, reporter)
    seen = _by_artifact_sha(store, sha)
    if seen is not None:
        req = Requirements.from_dict(seen.manifest["artifact"]["requirements"])
        return _already(store, seen, sha, req, opts.activate, t0, signed_by)
    known = store.find(opts.build_id) if opts.build_id else None
    if known is not None and known.id == opts.build_id and known.smoke_passed:
        return _already(store, known, sha, requirements_of(known.manifest), opts.activate, t0, signed_by)
    paths.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=paths.work, prefix=".artifact-"))
    try:
        reporter.stage(f"fetching and verifying {opts.location}")
        archive = _fetch(opts.location, sha, tmp)
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
            return _already(store, existing, sha, req, opts.activate, t0, signed_by)
        reporter.stage(f"unpacking {build_id}")
        top = _extract(archive, tmp / "unpacked")
        manifest = json.loads((top / "manifest.json").read_text())
        if top.name != build_id or manifest.get("id") != build_id:
            raise ArtifactError(f"{archive.name} does not hold build {build_id}", "pack it again")
        _verify_binaries(top, manifest)
        runtime_libs = _link_cuda_runtime(top, manifest, build_id)
        vocab = top / "share" / "nativellm" / VOCAB_FILE
        if not vocab.is_file():
            raise ArtifactError(f"{archive.name} has no smoke-test vocab ({VOCAB_FILE})", "pack it again")
        reporter.stage("smoke test on this host: real inference on Q4_0, Q8_0 and Q4_K_M models")
        base = base_model(paths.work / "smoke-cache" / sha256_file(vocab)[:12], vocab)
        # Not built here: its binaries run confined (build.confine), never as root on the host.
        backend = str(manifest.get("plan", {}).get("backend", "cpu"))
        result = confined_smoke_test(
            top,
            base,
            tmp / "smoke",
            max(1, here.cpu.physical_cores),
            readonly=(paths.home,),
            offload=plan_smoke_offload(backend, here),
        )
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
        if runtime_libs is not None:
            manifest["runtime_libs"] = runtime_libs
        manifest.pop("schema", None)
        record = store.install(top, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    activated = opts.activate and store.set_current(record.id)
    notes = [f"installed artifact {record.id} ({meta['variant']})"]
    if result.confinement == "none":
        notes.append("warning: its smoke test ran unconfined, with this user's rights")
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
        signed_by,
    )


def install_artifact(paths: Paths, opts: InstallOptions, reporter: Reporter | None = None) -> InstallOutcome:
    """Verify, check, unpack, smoke-test, install (and by default activate) one artifact."""
    here = detect_host()
    host = load_profile(opts.profile) if opts.profile else here
    with Store(paths).lock():
        return install_locked(paths, opts, host, here, reporter or SilentReporter())
