"""The model store: a versioned JSON index of validated GGUF models, and its use cases.

Files live where they are (`add --link`, Ollama blobs, the Hugging Face
cache) or under `<home>/models/files/<name>/` (URL pulls, copies, demos).
The index is `<home>/models/index.json`; every change is a locked
read-modify-write plus an atomic rename. Nothing reaches the index before
its file passed validation (gguf_check).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nativellm import specs, validate
from nativellm.build.store import Store
from nativellm.build.synth import VOCAB_FILE, SynthSize, find_vocab, write_synthetic_llama
from nativellm.download import check_free_space
from nativellm.errors import ModelError, NotFoundError, ResourceError, UsageError
from nativellm.fsutil import file_lock, sha256_file, write_json_atomic
from nativellm.hardware.profile import HostProfile
from nativellm.hardware.vram import GpuDevice
from nativellm.models.fit import FitReport, estimate_fit
from nativellm.models.gguf import SPLIT_RE, split_parts, validate_model
from nativellm.models.ollama import OllamaRef, find_ollama_dir, list_refs, read_model
from nativellm.paths import Paths

__all__ = [
    "FitReport",
    "ModelRecord",
    "ModelRegistry",
    "estimate_fit",
    "write_demo_model",
]

tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
INDEX_SCHEMA = "nativellm.models/1"
SOURCES = ("file", "hf", "url", "ollama", "demo")
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModelRecord:
    """One registered model. `path` is what llama-server's -m gets (the first part when split)."""

    name: str
    path: Path
    sha256: str  # of `path`; each part's hash is in metadata["part_sha256"] when split
    size: int  # bytes on disk, all parts together
    source: str  # file | hf | url | ollama | demo
    facts: Mapping[str, Any]
    added: str  # ISO 8601, UTC
    parts: tuple[Path, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """gguf, or mlx for an MLX model directory (models/mlx.py), as its `format` fact says."""
        return str(self.facts.get("format", "gguf"))

    @property
    def owned(self) -> bool:
        """Whether the file lives inside the store (and `rm` may delete it)."""
        return bool(self.metadata.get("owned"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "facts": dict(self.facts),
            "added": self.added,
            "parts": [str(p) for p in self.parts],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelRecord:
        return cls(
            name=str(d["name"]),
            path=Path(d["path"]),
            sha256=str(d["sha256"]),
            size=int(d["size"]),
            source=str(d["source"]),
            facts=dict(d.get("facts", {})),
            added=str(d.get("added", "")),
            parts=tuple(Path(p) for p in d.get("parts", [])),
            metadata=dict(d.get("metadata", {})),
        )


def _lock_file(path: Path) -> Path:
    """`path`, refused cleanly when something other than a lock file (a directory...) sits there."""
    for p in (path.parent, path):
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            break
        except OSError as exc:
            raise ResourceError(f"cannot use the lock {path}: {exc.strerror}", f"check {p}") from None
        if stat.S_ISDIR(mode) != (p == path.parent) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise ResourceError(
                f"the lock {path} cannot be taken: {p} is not a {'directory' if p != path else 'file'}",
                f"move {p} out of the way; nothing was changed",
            )
    return path


def _usable(rec: ModelRecord) -> ModelRecord:
    """Refuse a record whose path holds a control character (an index written by an older nativellm,
    or edited by hand): the path is written into unit files and argv, where a \r or \n ends a line."""
    for p in (rec.path, *rec.parts):
        try:
            validate.no_control(str(p), f"the path of model {rec.name!r}")
        except UsageError as exc:
            raise UsageError(
                f"{exc.message}; it cannot be used",
                f"rename the file without control characters, then `nativellm model rm {rec.name}` "
                "and `nativellm model add` it again",
            ) from None
    return rec


def check_model_path(path: Path, what: str = "the model path") -> Path:
    """Refuse a model path with control characters before anything is read or registered."""
    validate.no_control(str(path), what)
    return path


def _damaged(index: Path, reason: str) -> ModelError:
    return ModelError(
        f"the model index {index} is damaged: {reason}; nothing was changed",
        f"restore it from a backup, or move it aside (`mv {index} {index}.bad`) and register the models again",
    )


def validate_name(name: str) -> str:
    return specs.validate_name(name, "model")


def name_from_file(path: Path) -> str:
    """A safe default name from a file name: strip .gguf and the split suffix."""
    m = SPLIT_RE.match(path.name)
    stem = m["stem"] if m else path.name.removesuffix(".gguf")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return safe or "model"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class ModelRegistry:
    """The index of registered models. Reads are lock-free; writes hold the index lock."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.root = paths.models
        self.index = self.root / "index.json"

    def _load(self) -> dict[str, ModelRecord]:
        """The index; a malformed one is refused (and so never overwritten), naming the file."""
        try:
            doc = json.loads(self.index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _damaged(self.index, f"unreadable ({reason})") from None
        if not isinstance(doc, dict):
            raise _damaged(self.index, f"a JSON {type(doc).__name__}, not an object")
        if doc.get("schema") != INDEX_SCHEMA:
            raise ModelError(
                f"the model index {self.index} has schema {doc.get('schema')!r}, expected {INDEX_SCHEMA!r}",
                "upgrade nativellm",
            )
        models = doc.get("models", {})
        if not isinstance(models, dict):
            raise _damaged(self.index, "its 'models' is not an object")
        records = {}
        for n, d in models.items():
            try:
                records[n] = ModelRecord.from_dict(d)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise _damaged(
                    self.index, f"the entry {n!r} is malformed ({type(exc).__name__}: {exc})"
                ) from None
        return records

    def _save(self, records: Mapping[str, ModelRecord]) -> None:
        write_json_atomic(
            self.index,
            {"schema": INDEX_SCHEMA, "models": {n: r.to_dict() for n, r in sorted(records.items())}},
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ModelRecord]]:
        """Read-modify-write under an exclusive lock; the dict is saved if the body returns."""
        with file_lock(_lock_file(self.root / ".index.lock")):
            records = self._load()
            before = dict(records)
            yield records
            if records != before:
                self._save(records)

    def find(self, name: str) -> ModelRecord | None:
        """The record of `name`, refused when its path could not be used safely (see _usable)."""
        rec = self._load().get(name)
        return _usable(rec) if rec is not None else None

    def find_any(self, name: str) -> ModelRecord | None:
        """The record of `name` as it is stored, unchecked: for `model rm`, which must remove any."""
        return self._load().get(name)

    def get(self, name: str) -> ModelRecord:
        rec = self.find(name)
        if rec is None:
            raise NotFoundError(
                f"no model named {name!r}", "see the registered models with `nativellm model list`"
            )
        return rec

    def list(self) -> list[ModelRecord]:
        return sorted(self._load().values(), key=lambda r: r.name)

    def put(self, record: ModelRecord) -> bool:
        """Register `record`. Same name and same file: no change. Same name, other file: refused."""
        with self._locked() as records:
            old = records.get(record.name)
            if old is not None:
                if old.sha256 == record.sha256 and old.path == record.path:
                    return False
                raise ModelError(
                    f"a model named {record.name!r} is already registered ({old.path})",
                    f"choose another --name, or remove it first with `nativellm model rm {record.name}`",
                )
            records[record.name] = record
            return True

    def delete(self, name: str) -> ModelRecord:
        with self._locked() as records:
            if name not in records:
                raise NotFoundError(
                    f"no model named {name!r}", "see the registered models with `nativellm model list`"
                )
            return records.pop(name)

    def files_dir(self, name: str) -> Path:
        return self.root / "files" / validate_name(name)

    @contextlib.contextmanager
    def model_lock(self, name: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """One writer per model name: a second concurrent pull waits, then finds the work done."""
        with file_lock(
            _lock_file(self.root / ".locks" / f"{validate_name(name)}.lock"),
            on_busy=(lambda holder: on_wait()) if on_wait else None,
        ):
            yield


def instances_using(paths: Paths, name: str) -> list[str]:
    """Instance specs (`<config>/instances/*.toml`) that serve `name`: as their `model`, or as one of a
    router's `models`."""
    users = []
    for spec in sorted((paths.config / "instances").glob("*.toml")):
        try:
            data = tomllib.loads(spec.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # TOMLDecodeError is a ValueError
            continue
        models = data.get("models")
        if data.get("model") == name or (isinstance(models, list) and name in models):
            users.append(spec.stem)
    return users


# --------------------------------------------------------------------------- building records
def make_record(
    name: str,
    parts: list[Path],
    source: str,
    *,
    sha256: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ModelRecord:
    """Validate the files and build their record; nothing is registered here."""
    for p in parts:
        check_model_path(p)
    facts = validate_model(parts)
    hashes = [sha256 if (sha256 and i == 0) else sha256_file(p) for i, p in enumerate(parts)]
    meta = dict(metadata or {})
    if len(parts) > 1:
        meta["part_sha256"] = hashes
    return ModelRecord(
        name=name,
        path=parts[0],
        sha256=hashes[0],
        size=sum(p.stat().st_size for p in parts),
        source=source,
        facts=facts,
        added=_now(),
        parts=tuple(parts) if len(parts) > 1 else (),
        metadata=meta,
    )


def _check_regular(path: Path, what: str = "") -> None:
    """Refuse a path that is not a regular file, by what it is: never open a FIFO or a device."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelError(
                f"{what}{path} is a symlink loop", "point at the GGUF file itself, not a circular link"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if what:
                raise ModelError(
                    f"{what}{path} is missing", "keep all parts side by side in one directory"
                ) from None
            raise NotFoundError(f"{path} does not exist", "check the path") from None
        raise ModelError(
            f"cannot read {what}{path}: {exc.strerror}", "check the path and its permissions"
        ) from None
    if not stat.S_ISREG(mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "special"
        )
        raise ModelError(
            f"{what}{path} is not a regular file (it is {kind})", "give the path of a .gguf file"
        )


def _resolve_source(file: Path) -> Path:
    """The real path of a model file the user named, checked to be a regular file."""
    path = file.expanduser()
    _check_regular(path)
    return Path(os.path.realpath(path))


def _parts_of(path: Path) -> list[Path]:
    m = SPLIT_RE.match(path.name)
    if m and int(m["no"]) != 1:
        raise UsageError(f"{path.name} is not the first part of a split model", "name the -00001-of-N part")
    parts = list(split_parts(path)) or [path]
    missing = [p for p in parts if not os.path.lexists(p)]
    if missing:
        raise ModelError(
            f"split model part {missing[0]} is missing ({len(missing)} of {len(parts)} parts absent)",
            "keep all parts side by side in one directory",
        )
    for p in parts:
        _check_regular(p, "split model part " if len(parts) > 1 else "")
    return parts


def add_model(
    paths: Paths, file: Path, *, name: str | None = None, copy: bool = False, sha256: str | None = None
) -> tuple[ModelRecord, bool]:
    """Register an existing GGUF. By default the record references the file where it is.

    With `sha256` the file (the first part of a split model) must have that hash, else nothing is
    registered; an already registered model is checked against its recorded hash (no re-hash).
    A copy is written to temporary files in the store, validated there and renamed into place only
    once every check passed, so a refused copy never touches a registered model's file.
    """
    want = specs.validate_sha256(sha256) if sha256 else None
    name = validate_name(name) if name else None
    check_model_path(file)
    src = check_model_path(_resolve_source(file), "the model's real path")
    reg = ModelRegistry(paths)
    name = name or validate_name(name_from_file(src))
    parts = _parts_of(src)
    existing = reg.find(name)
    if existing is not None and (existing.path == src or existing.metadata.get("origin") == str(src)):
        if want is not None and existing.sha256 != want:
            raise ModelError(
                f"model {name!r} is registered with sha256 {existing.sha256}, not {want}",
                f"check the expected hash, or remove it first with `nativellm model rm {name}`",
            )
        return existing, False
    if existing is not None:
        raise _taken(existing)
    if want is not None:
        got = sha256_file(parts[0])
        if got != want:
            raise ModelError(
                f"{parts[0]} has sha256 {got}, expected {want}; nothing was registered",
                "check the file or the expected hash",
            )
    if not copy:
        rec = make_record(name, parts, "file", sha256=want, metadata={"origin": str(src)})
        return rec, reg.put(rec)
    validate_model(parts)  # refuse before copying gigabytes
    with reg.model_lock(name):
        existing = reg.find(name)
        if existing is not None:
            raise _taken(existing)  # registered meanwhile: its files may be the ones we would write
        return _copy_into_store(reg, name, src, parts, want)


def _taken(existing: ModelRecord) -> ModelError:
    return ModelError(
        f"a model named {existing.name!r} is already registered ({existing.path})",
        f"choose another --name, or remove it first with `nativellm model rm {existing.name}`",
    )


def _copy_into_store(
    reg: ModelRegistry, name: str, src: Path, parts: list[Path], want: str | None
) -> tuple[ModelRecord, bool]:
    dest_dir = reg.files_dir(name)
    check_free_space(dest_dir, sum(p.stat().st_size for p in parts), str(src))
    finals = [dest_dir / p.name for p in parts]
    placed: list[Path] = []
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".copy-"))
    try:
        copies = [staging / p.name for p in parts]  # the same names: split parts are checked by name
        for p, c in zip(parts, copies, strict=True):
            shutil.copyfile(p, c)
        # Validate and hash the copies themselves: the source may change while it is copied.
        rec = make_record(name, copies, "file", metadata={"origin": str(src), "owned": True})
        if want is not None and rec.sha256 != want:
            raise ModelError(
                f"{parts[0]} changed while it was copied (sha256 {rec.sha256}, expected {want}); "
                "nothing was registered",
                "check the file or the expected hash",
            )
        rec = replace(rec, path=finals[0], parts=tuple(finals) if len(finals) > 1 else ())
        for c, final in zip(copies, finals, strict=True):
            os.replace(c, final)
            placed.append(final)
        changed = reg.put(rec)
        placed = []
        return rec, changed
    except OSError as exc:
        raise ResourceError(
            f"cannot copy {src} into {dest_dir}: {exc.strerror}", "check free disk space"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for final in placed:  # put() refused: nothing registered points at them
            final.unlink(missing_ok=True)


# --------------------------------------------------------------------------- ollama
def import_ollama(
    paths: Paths, ref: str, *, ollama_dir: Path | None = None, name: str | None = None
) -> tuple[ModelRecord, bool]:
    """Register an Ollama model's GGUF blob where it lies: no copy."""
    OllamaRef.parse(ref)  # a malformed ref is a usage error before any lookup
    root = _ollama_root(ollama_dir, find_ollama_dir)
    reg = ModelRegistry(paths)
    rec, new = _ollama_record(reg, root, ref, name)
    return (rec, reg.put(rec)) if new else (rec, False)


def import_ollama_all(paths: Paths, *, ollama_dir: Path | None = None) -> list[tuple[ModelRecord, bool]]:
    """Every model of the store, or none: all manifests and blobs are checked before one is registered."""
    root = _ollama_root(ollama_dir, find_ollama_dir)
    reg = ModelRegistry(paths)
    planned = [_ollama_record(reg, root, r.display, None) for r in list_refs(root)]
    return [(rec, reg.put(rec)) if new else (rec, False) for rec, new in planned]


def _ollama_record(reg: ModelRegistry, root: Path, ref: str, name: str | None) -> tuple[ModelRecord, bool]:
    """The validated record of one Ollama model, and whether it still needs registering."""
    om = read_model(root, OllamaRef.parse(ref))
    name = validate_name(name or om.ref.default_model_name)
    existing = reg.find(name)
    if existing is not None:
        if existing.path == om.blob and existing.sha256 == om.digest:
            return existing, False
        raise _taken(existing)
    rec = make_record(name, [om.blob], "ollama", metadata=om.metadata)
    if rec.sha256 != om.digest:
        raise ModelError(
            f"the Ollama blob {om.blob} does not match its digest sha256:{om.digest}; nothing was registered",
            f"re-pull it with `ollama pull {om.ref.display}`",
        )
    return rec, True


def _ollama_root(explicit: Path | None, finder: Callable[[Path | None], Path | None]) -> Path:
    if explicit is not None:
        check_model_path(explicit, "--ollama-dir")
    root = finder(explicit)
    if root is None:
        where = (
            str(explicit)
            if explicit
            else "$OLLAMA_MODELS, ~/.ollama/models or /usr/share/ollama/.ollama/models"
        )
        raise NotFoundError(
            f"no Ollama model store in {where}", "pass --ollama-dir DIR (it holds manifests/ and blobs/)"
        )
    return root


# --------------------------------------------------------------------------- rm / verify / inspect
def remove_model(paths: Paths, name: str, *, force: bool = False) -> ModelRecord:
    """Unregister a model; delete its files only when they live in the store."""
    reg = ModelRegistry(paths)
    if reg.find_any(name) is None:
        reg.get(name)  # the NotFoundError
    users = instances_using(paths, name)
    if users and not force:
        raise ModelError(
            f"model {name!r} is used by instance(s) {', '.join(users)}",
            "remove those instances first, or pass --force",
        )
    rec = reg.delete(name)
    if rec.owned:
        shutil.rmtree(reg.files_dir(name), ignore_errors=True)
    return rec


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    expected: str
    actual: str
    path: Path


def verify_model(paths: Paths, name: str) -> VerifyResult:
    """Re-hash the file(s), compare with the record and re-validate the GGUF; ModelError on mismatch."""
    rec = ModelRegistry(paths).get(name)
    if rec.format == "mlx":
        from nativellm.models.mlx import verify_mlx

        verify_mlx(rec)
        return VerifyResult(name, True, rec.sha256, rec.sha256, rec.path)
    files = list(rec.parts) or [rec.path]
    for p in files:
        if not p.is_file():
            raise ModelError(
                f"model {name!r}: its file {p} is missing", f"`nativellm model rm {name}` and add it again"
            )
    expected = list(rec.metadata.get("part_sha256", [])) or [rec.sha256]
    for p, want in zip(files, expected, strict=False):
        got = sha256_file(p)
        if got != want:
            raise ModelError(
                f"model {name!r}: {p} has sha256 {got}, but {want} was recorded; the file changed",
                f"pull or add it again (`nativellm model rm {name}` first)",
            )
    validate_model(files)
    return VerifyResult(name, True, rec.sha256, rec.sha256, rec.path)


def inspect_model(paths: Paths, name_or_path: str) -> ModelRecord:
    """Re-read the GGUF facts of a registered model, or of a file given by path (not registered)."""
    rec = ModelRegistry(paths).find(name_or_path)
    if rec is not None and rec.format == "mlx":
        from nativellm.models.mlx import validate_mlx_dir

        return replace(rec, facts=validate_mlx_dir(rec.path))
    if rec is not None:
        facts = validate_model(list(rec.parts) or [rec.path])
        return replace(rec, facts=facts)
    path = Path(name_or_path).expanduser()
    if os.path.lexists(path):
        parts = _parts_of(_resolve_source(path))
        facts = validate_model(parts)
        return ModelRecord(
            name=path.name,
            path=parts[0],
            sha256="",
            size=sum(p.stat().st_size for p in parts),
            source="file",
            facts=facts,
            added="",
            parts=tuple(parts) if len(parts) > 1 else (),
        )
    raise NotFoundError(
        f"no model named {name_or_path!r}", "see the registered models with `nativellm model list`"
    )


# --------------------------------------------------------------------------- demo
def find_demo_vocab(paths: Paths, vocab: Path | None) -> Path:
    """The vocab GGUF: --vocab (a file, or a llama.cpp tree), else the one the current build ships."""
    if vocab is not None:
        vocab = vocab.expanduser()
        if vocab.is_dir():
            return find_vocab(vocab)
        if vocab.is_file():
            return vocab
        raise NotFoundError(
            f"{vocab} does not exist", "give a llama.cpp source tree or its models/" + VOCAB_FILE
        )
    current = Store(paths).current()
    if current is not None:
        shipped = current.path / "share" / "nativellm" / VOCAB_FILE
        if shipped.is_file():
            return shipped
    raise NotFoundError(
        "no tokenizer vocab to build the demo model from",
        "build llama.cpp first (`nativellm build --auto`) or pass --vocab LLAMA_CPP_SOURCE_DIR",
    )


def write_demo_model(
    paths: Paths, name: str = "demo", size: str = "tiny", vocab: Path | None = None
) -> tuple[ModelRecord, bool]:
    """Write a random-weight llama GGUF with a real tokenizer and register it. Its output is gibberish."""
    try:
        synth = SynthSize(size)
    except ValueError:
        raise UsageError(f"unknown demo size {size!r}", "use tiny or small") from None
    reg = ModelRegistry(paths)
    name = validate_name(name)
    with reg.model_lock(name):
        existing = reg.find(name)
        if existing is not None:
            if (
                existing.source == "demo"
                and existing.metadata.get("size") == synth.value
                and existing.path.is_file()
            ):
                return existing, False
            raise ModelError(
                f"a model named {name!r} is already registered ({existing.source})",
                f"choose another --name, or `nativellm model rm {name}` first",
            )
        vocab_file = find_demo_vocab(paths, vocab)
        dest = reg.files_dir(name) / f"{name}-{synth.value}-f16.gguf"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_synthetic_llama(dest, vocab_file, synth, name=f"nativellm-{name}")
        except OSError as exc:
            raise ResourceError(f"cannot write {dest}: {exc.strerror}", "check free disk space") from None
        meta = {
            "size": synth.value,
            "vocab": str(vocab_file),
            "owned": True,
            "note": "random weights: gibberish",
        }
        rec = make_record(name, [dest], "demo", metadata=meta)
        return rec, reg.put(rec)


def fit_model(
    paths: Paths,
    name: str,
    profile: HostProfile,
    *,
    ctx: int,
    parallel: int = 1,
    gpu_layers: int = 0,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    devices: Sequence[GpuDevice] | None = None,
    n_cpu_moe: int = 0,
    cpu_moe: bool = False,
    swa_full: bool = False,
) -> FitReport:
    rec = ModelRegistry(paths).get(name)
    # The file's facts as they are now, not as they were when it was added: the file may have been
    # replaced since (the bounded reader refuses a corrupt one, e.g. a huge block_count).
    rec = replace(rec, facts=validate_model(list(rec.parts) or [rec.path]))
    return estimate_fit(
        rec, profile, ctx=ctx, parallel=parallel, gpu_layers=gpu_layers, cache_type_k=cache_type_k,
        cache_type_v=cache_type_v, devices=devices, n_cpu_moe=n_cpu_moe, cpu_moe=cpu_moe, swa_full=swa_full,
    )  # fmt: skip
