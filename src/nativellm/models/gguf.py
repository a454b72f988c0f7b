"""GGUF validation and facts: nothing broken gets registered or served.

The header is parsed here, by hand and with hard bounds, before anything
else touches the file: `gguf.GGUFReader` memory-maps the whole file and can
raise odd exceptions (or try to allocate absurd arrays) on corrupt input. The
`gguf` package supplies the type tables: quant block sizes, file types and
the architectures llama.cpp knows.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nativellm.errors import ModelError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Bounds that no real model comes near; a count above them means a corrupt header.
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_DIMS = 4
MAX_KEY_LEN = 65_536
# Arrays longer than this are skipped, not kept (token lists); shorter ones are kept (per-layer values).
KEEP_ARRAY_MAX = 4096

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9

_HELP_CORRUPT = "download the model again; `nativellm model pull` resumes and checks it"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of one GGUF file says, checked against the file's size."""

    path: Path
    version: int
    file_size: int
    alignment: int
    data_offset: int
    kv: dict[str, Any] = field(repr=False)
    array_lengths: dict[str, int] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)


class _Reader:
    """Bounded little-endian reads; running past the end raises ModelError('truncated')."""

    def __init__(self, f: IO[bytes], path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise ModelError(
                f"{self.path} is truncated: its header ends inside {what} at byte {self.pos} of {self.size}",
                _HELP_CORRUPT,
            )
        data = self.f.read(n)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            self.read(n, what)  # raises
        self.f.seek(n, 1)
        self.pos += n

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.read(8, what))[0])

    def string(self, what: str) -> str:
        n = self.u64(what)
        if n > self.size - self.pos:
            raise ModelError(
                f"{self.path} is corrupt or truncated: {what} claims {n} bytes but only "
                f"{self.size - self.pos} remain",
                _HELP_CORRUPT,
            )
        return self.read(n, what).decode("utf-8", errors="replace")

    def value(self, type_id: int, key: str) -> tuple[Any, int | None]:
        """A value; arrays longer than KEEP_ARRAY_MAX come back as None plus their length."""
        if type_id in _SCALARS:
            fmt, n = _SCALARS[type_id]
            return struct.unpack(fmt, self.read(n, f"the value of {key!r}"))[0], None
        if type_id == _STRING:
            return self.string(f"the value of {key!r}"), None
        if type_id == _ARRAY:
            item = self.u32(f"the array type of {key!r}")
            count = self.u64(f"the array length of {key!r}")
            if item in _SCALARS:
                width = _SCALARS[item][1]
                if count * width > self.size - self.pos:
                    self.read(count * width, f"the array {key!r}")  # raises truncated
                if count > KEEP_ARRAY_MAX:
                    self.skip(count * width, f"the array {key!r}")
                    return None, count
                fmt = "<" + _SCALARS[item][0][1] * count
                return list(struct.unpack(fmt, self.read(count * width, f"the array {key!r}"))), count
            if item == _STRING:
                if count * 8 > self.size - self.pos:
                    self.read(count * 8, f"the array {key!r}")
                keep = count <= KEEP_ARRAY_MAX
                values = []
                for _ in range(count):
                    n = self.u64(f"a string in {key!r}")
                    if keep:
                        values.append(self.read(n, f"a string in {key!r}").decode("utf-8", errors="replace"))
                    else:
                        self.skip(n, f"a string in {key!r}")
                return (values if keep else None), count
            raise ModelError(
                f"{self.path} is corrupt: metadata key {key!r} has an array of unknown type {item}",
                _HELP_CORRUPT,
            )
        raise ModelError(
            f"{self.path} is corrupt: metadata key {key!r} has unknown value type {type_id}", _HELP_CORRUPT
        )


def _describe_non_gguf(path: Path, head: bytes) -> ModelError:
    """Say what the file is instead, so the user knows what went wrong."""
    hint = "give a .gguf model file; convert other formats with llama.cpp's convert_hf_to_gguf.py"
    if head.startswith(b"version https://git-lfs"):
        return ModelError(
            f"{path} is a Git LFS pointer, not the model itself",
            "fetch the real file (git lfs pull) or use `nativellm model pull hf:...`",
        )
    lowered = head.lower()
    if lowered.lstrip().startswith((b"<!doctype html", b"<html")):
        return ModelError(f"{path} is an HTML page, not a GGUF model (a failed download?)", hint)
    if head[:4] in (b"PK\x03\x04",):
        return ModelError(f"{path} is a zip archive (a PyTorch or safetensors checkpoint?), not GGUF", hint)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return ModelError(f"{path} is a text file, not a GGUF model (it starts with {first!r})", hint)
    magic = head[:4]
    near = sum(bin(a ^ b).count("1") for a, b in zip(magic, MAGIC, strict=False)) <= 4
    if near:
        return ModelError(
            f"{path} has a corrupt GGUF magic {magic!r} (expected b'GGUF'); the file is damaged",
            _HELP_CORRUPT,
        )
    return ModelError(f"{path} is not a GGUF file: magic is {magic!r}, expected b'GGUF'", hint)


def read_header(path: Path) -> GGUFHeader:
    """Parse and bound-check the header of one GGUF file. Raises ModelError naming the problem."""
    import gguf

    try:
        size = path.stat().st_size
        f = path.open("rb")
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist", "check the path") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a GGUF file", "give the path of a .gguf file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}", "check its permissions") from None
    with f:
        if size == 0:
            raise ModelError(f"{path} is empty (0 bytes), not a GGUF model", _HELP_CORRUPT)
        head = f.read(512)
        if head[:4] != MAGIC:
            raise _describe_non_gguf(path, head)
        f.seek(0)
        r = _Reader(f, path, size)
        r.read(4, "the magic")
        version = r.u32("the version")
        if version not in SUPPORTED_VERSIONS:
            raise ModelError(
                f"{path} has GGUF version {version}; llama.cpp reads versions 2 and 3",
                "the file is corrupt or from an obsolete converter; reconvert it with current llama.cpp",
            )
        n_tensors = r.u64("the tensor count")
        n_kv = r.u64("the metadata count")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise ModelError(
                f"{path} is corrupt: its header claims {n_tensors} tensors and {n_kv} metadata keys",
                _HELP_CORRUPT,
            )
        kv: dict[str, Any] = {}
        array_lengths: dict[str, int] = {}
        for i in range(n_kv):
            key = r.string(f"metadata key #{i}")
            if len(key) > MAX_KEY_LEN:
                raise ModelError(f"{path} is corrupt: metadata key #{i} is {len(key)} bytes", _HELP_CORRUPT)
            type_id = r.u32(f"the type of {key!r}")
            value, length = r.value(type_id, key)
            kv[key] = value
            if length is not None:
                array_lengths[key] = length
        alignment = int(kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ModelError(f"{path} is corrupt: general.alignment is {alignment}", _HELP_CORRUPT)
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for i in range(n_tensors):
            name = r.string(f"the name of tensor #{i}")
            n_dims = r.u32(f"the dimensions of {name!r}")
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise ModelError(f"{path} is corrupt: tensor {name!r} has {n_dims} dimensions", _HELP_CORRUPT)
            shape = tuple(r.u64(f"the shape of {name!r}") for _ in range(n_dims))
            type_id = r.u32(f"the type of {name!r}")
            offset = r.u64(f"the offset of {name!r}")
            raw.append((name, shape, type_id, offset))
        data_offset = -(-r.pos // alignment) * alignment

    tensors = []
    for name, shape, type_id, offset in raw:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise ModelError(
                f"{path}: tensor {name!r} has type {type_id}, which this nativellm does not know",
                "the file is corrupt, or newer than the installed gguf package (pip install -U gguf)",
            ) from None
        n = 1
        for d in shape:
            n *= d
        if n % block:
            raise ModelError(
                f"{path} is corrupt: tensor {name!r} shape {shape} does not fit its type", _HELP_CORRUPT
            )
        nbytes = n // block * type_size
        end = data_offset + offset + nbytes
        if end > size:
            raise ModelError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} but the file has {size} bytes "
                f"({end - size} missing)",
                _HELP_CORRUPT,
            )
        tensors.append(TensorInfo(name, shape, type_id, offset, nbytes))
    return GGUFHeader(path, version, size, alignment, data_offset, kv, array_lengths, tuple(tensors))


def known_architectures() -> frozenset[str]:
    import gguf

    return frozenset(gguf.MODEL_ARCH_NAMES.values())


def split_parts(first: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF named like `x-00001-of-00003.gguf`; () when `first` is not split."""
    m = SPLIT_RE.match(first.name)
    if not m:
        return ()
    count = int(m["count"])
    return tuple(first.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1))


def validate_model(parts: Sequence[Path]) -> dict[str, Any]:
    """Validate every part of a model and return its facts. Raises ModelError on any problem."""
    headers = [read_header(p) for p in parts]
    first = headers[0]
    arch = first.kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{first.path} has no general.architecture; it is not a model GGUF", _HELP_CORRUPT)
    if arch not in known_architectures():
        raise ModelError(
            f"{first.path} has architecture {arch!r}, which llama.cpp does not know",
            "use a model of a supported architecture, or update nativellm and llama.cpp",
        )
    split_count = int(first.kv.get("split.count", 1) or 1)
    if split_count != len(parts):
        raise ModelError(
            f"{first.path} is part of a {split_count}-part split model but {len(parts)} part(s) were given",
            "keep all parts (x-00001-of-0000N.gguf ...) side by side and name the first",
        )
    if len(parts) > 1:
        declared = first.kv.get("split.tensors.count")
        total = sum(len(h.tensors) for h in headers)
        if declared is not None and int(declared) != total:
            raise ModelError(
                f"{first.path}: the split model declares {declared} tensors but its parts hold {total}",
                _HELP_CORRUPT,
            )
    return facts_of(headers)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return int(max(value))  # per-layer values (head_count_kv on some archs): the worst case
    return None


def facts_of(headers: Sequence[GGUFHeader]) -> dict[str, Any]:
    """The facts `inspect` shows and `fit` uses, from validated headers."""
    import gguf

    first = headers[0]
    kv = first.kv
    arch = str(kv["general.architecture"])

    def a(key: str) -> int | None:
        return _int(kv.get(f"{arch}.{key}"))

    tensors = [t for h in headers for t in h.tensors]
    layer_bytes: dict[int, int] = {}
    other_bytes = output_bytes = 0
    type_counts: dict[str, int] = {}
    matrix_bytes: dict[str, int] = {}
    for t in tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m:
            layer_bytes[int(m[1])] = layer_bytes.get(int(m[1]), 0) + t.nbytes
        else:
            other_bytes += t.nbytes
            if t.name.startswith("output."):
                output_bytes += t.nbytes
        tname = gguf.GGMLQuantizationType(t.type_id).name
        type_counts[tname] = type_counts.get(tname, 0) + 1
        # Weight matrices the CPU backend may repack into an interleaved copy at load time.
        if len(t.shape) == 2 and t.shape[1] % 8 == 0 and not t.name.startswith("token_embd"):
            matrix_bytes[tname] = matrix_bytes.get(tname, 0) + t.nbytes
    file_type_id = _int(kv.get("general.file_type"))
    file_type: str | None = None
    if file_type_id is not None:
        try:
            file_type = gguf.LlamaFileType(file_type_id).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = f"type {file_type_id}"
    block_count = a("block_count")
    head_count = a("attention.head_count")
    embd = a("embedding_length")
    head_kv = a("attention.head_count_kv") or head_count
    key_length = a("attention.key_length") or (embd // head_count if embd and head_count else None)
    value_length = a("attention.value_length") or key_length
    n_vocab = a("vocab_size") or first.array_lengths.get("tokenizer.ggml.tokens")
    if n_vocab is None and isinstance(kv.get("tokenizer.ggml.tokens"), list):
        n_vocab = len(kv["tokenizer.ggml.tokens"])
    return {
        "architecture": arch,
        "name": kv.get("general.name"),
        "parameters": sum(t.n_elements for t in tensors),
        "file_type": file_type,
        "context_length": a("context_length"),
        "block_count": block_count,
        "head_count": head_count,
        "head_count_kv": head_kv,
        "embedding_length": embd,
        "key_length": key_length,
        "value_length": value_length,
        "feed_forward_length": a("feed_forward_length"),
        "vocab_size": n_vocab,
        "tensor_count": len(tensors),
        "tensor_types": dict(sorted(type_counts.items())),
        "tensor_bytes": sum(t.nbytes for t in tensors),
        "layer_bytes": [layer_bytes.get(i, 0) for i in range(max(layer_bytes, default=-1) + 1)],
        "other_bytes": other_bytes,
        "output_bytes": output_bytes,
        "matrix_bytes": dict(sorted(matrix_bytes.items())),
        "has_chat_template": isinstance(kv.get("tokenizer.chat_template"), str),
        "split_count": len(headers),
        "gguf_version": first.version,
    }
