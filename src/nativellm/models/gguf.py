"""GGUF validation and facts: nothing broken gets registered or served.

The header is parsed here, by hand and with hard bounds, before anything
else touches the file: `gguf.GGUFReader` memory-maps the whole file and
builds numpy views of every field, so a corrupt or hostile header can make it
allocate gigabytes or spin for minutes. This reader refuses a count or a
length before it allocates or loops for it: each is checked against a hard
cap and against the bytes that remain in the file (N entries need at least
N times their smallest encoding), the memory the parsed header keeps is
budgeted, and long string arrays (token lists) are skipped without decoding.
A crafted header costs milliseconds and kilobytes. The `gguf` package
supplies the type tables: value types, quant block sizes, file types and the
architectures llama.cpp knows.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nativellm.errors import ModelError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Caps no real model comes near (the largest have ~2k tensors, ~100 keys, a 262k-token vocabulary);
# a count or length above them means a corrupt or hostile header, refused before anything is allocated.
MAX_TENSORS = 65_536
MAX_KV = 16_384
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY_LEN = 65_535  # the GGUF spec's bound on a key
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME is 64 with the terminating NUL; llama.cpp refuses longer names
MAX_ARRAY_LEN = 1 << 26  # elements in one metadata array
MAX_ARRAY_STRINGS = 1 << 21  # strings in all metadata arrays together: each one costs a read
MAX_HEADER_BYTES = 256 << 20  # metadata plus tensor infos
MAX_KEPT_BYTES = 32 << 20  # what the parsed header may keep in memory (estimated, Python objects included)
MAX_LAYERS = MAX_TENSORS  # a layer holds at least one tensor
# Arrays longer than this are skipped, not kept (token lists); shorter ones are kept (per-layer values).
KEEP_ARRAY_MAX = 4096

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_LAYER_RE = re.compile(r"blk\.(\d+)\.")
_EXPERTS_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")  # common.h LLM_FFN_EXPS_REGEX

# GGUF value-type ids (gguf.GGUFValueType) and how each scalar is packed: filled on first use, so that
# importing this module does not import gguf (and numpy) on every CLI start.
_PACKING = {
    "UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I", "INT32": "<i",
    "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q", "FLOAT64": "<d",
}  # fmt: skip


@functools.cache
def _value_types() -> tuple[dict[int, struct.Struct], int, int]:
    """({scalar type id: its packing}, the string type id, the array type id)."""
    import gguf

    vt = gguf.GGUFValueType
    scalars = {int(vt[name]): struct.Struct(fmt) for name, fmt in _PACKING.items()}
    return scalars, int(vt.STRING), int(vt.ARRAY)


_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_ZEROS = re.compile(rb"\0+")
_RUN = bytes(64)
_CHUNK = 1 << 16
# A tensor info after its name and n_dims: the dimensions, the type and the offset.
_TENSOR_TAIL = {n: struct.Struct("<" + "Q" * n + "IQ") for n in range(1, MAX_DIMS + 1)}


@functools.cache
def _quant_sizes() -> dict[int, tuple[int, int]]:
    """(block size, bytes per block) by ggml type id."""
    import gguf

    return {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}


# The smallest encodings: a key/value pair (empty key, type, a one-byte value) and a tensor info
# (empty name, n_dims, one dimension, type, offset).
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8
_OBJ = 64  # estimated bytes of one kept Python object beyond its payload

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
    """Bounded little-endian reads through a chunk buffer.

    Running past the end raises ModelError('truncated'); past MAX_HEADER_BYTES, ModelError('corrupt').
    `what` names the field for the message; `{}` in it is filled with the current key (`self.ctx`)
    only when a message is made, so the hot paths format nothing.
    """

    def __init__(self, f: IO[bytes], path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size
        self.limit = min(size, MAX_HEADER_BYTES)
        self.buf, self.off, self.base = b"", 0, 0  # buf holds the file from byte `base`
        self.kept = 0
        self.strings = 0
        self.ctx = ""
        self.scalars, self.string_t, self.array_t = _value_types()

    @property
    def pos(self) -> int:
        return self.base + self.off

    def corrupt(self, what: str) -> ModelError:
        return ModelError(f"{self.path} is corrupt: {what}", _HELP_CORRUPT)

    def _fail(self, n: int, what: str) -> ModelError:
        what = what.replace("{}", self.ctx)
        if n < 0 or self.pos + n > self.size:
            return ModelError(
                f"{self.path} is truncated: its header ends inside {what} at byte {self.pos} of {self.size}",
                _HELP_CORRUPT,
            )
        return self.corrupt(f"its header runs past {MAX_HEADER_BYTES >> 20} MiB (inside {what})")

    def need(self, n: int, what: str) -> None:
        """Refuse before reading when `n` more bytes would run past the file or the header cap."""
        if n < 0 or self.pos + n > self.limit:
            raise self._fail(n, what)

    def _fill(self, n: int, what: str) -> None:
        """Make buf[off:off+n] available."""
        self.need(n, what)
        rest = self.buf[self.off :]
        self.base += self.off
        self.f.seek(self.base + len(rest))
        more = self.f.read(max(_CHUNK, n - len(rest)))
        self.buf, self.off = rest + more, 0
        if len(self.buf) < n:  # the file shrank under us
            raise self._fail(self.size, what)

    def keep(self, n: int, what: str) -> None:
        """Charge `n` bytes to what the parsed header keeps in memory."""
        self.kept += n
        if self.kept > MAX_KEPT_BYTES:
            what = what.replace("{}", self.ctx)
            raise self.corrupt(f"its metadata would take over {MAX_KEPT_BYTES >> 20} MiB of memory ({what})")

    def read(self, n: int, what: str) -> bytes:
        if self.off + n > len(self.buf):
            self._fill(n, what)
        off = self.off
        self.off = off + n
        return self.buf[off : off + n]

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        off = self.off
        if off + st.size > len(self.buf):
            self._fill(st.size, what)
            off = self.off
        self.off = off + st.size
        return st.unpack_from(self.buf, off)

    def skip(self, n: int, what: str) -> None:
        if self.off + n <= len(self.buf):
            self.off += n
            return
        self.need(n, what)
        self.base, self.buf, self.off = self.pos + n, b"", 0

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what)[0])

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what)[0])

    def string(self, what: str, limit: int) -> str:
        """A length-prefixed string, refused before reading when longer than `limit` or the file."""
        n = int(self.unpack(_U64, what)[0])
        if n > self.size - self.pos:
            what = what.replace("{}", self.ctx)
            raise ModelError(
                f"{self.path} is corrupt or truncated: {what} claims {n} bytes but only "
                f"{self.size - self.pos} remain",
                _HELP_CORRUPT,
            )
        if n > limit:
            raise self.corrupt(f"{what.replace('{}', self.ctx)} is {n} bytes long (at most {limit})")
        self.keep(_OBJ + n, what)
        return self.read(n, what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Walk `count` length-prefixed strings without decoding them (a token list)."""
        self.strings += count
        if self.strings > MAX_ARRAY_STRINGS:
            raise self.corrupt(
                f"{what.replace('{}', self.ctx)} brings its metadata to over {MAX_ARRAY_STRINGS} strings"
            )
        unpack_from, zeros = _U64.unpack_from, _ZEROS.match
        left = count
        while left:
            buf, off = self.buf, self.off
            end = len(buf) - 8
            while left and off <= end:
                n = unpack_from(buf, off)[0]
                if n:
                    off += 8 + n
                    left -= 1
                    if off > len(buf):  # a long string runs past the buffer
                        break
                elif left > 8 and buf.startswith(_RUN, off):
                    # A run of empty strings (a sparse file): skip all of them at once.
                    m = zeros(buf, off, min(len(buf), off + 8 * left))
                    k = (m.end() - off) // 8 if m else 1
                    off += 8 * k
                    left -= k
                else:
                    off += 8
                    left -= 1
            if off > len(buf):
                self.off = len(buf)
                self.skip(off - len(buf), what)
            else:
                self.off = off
                if left:
                    self._fill(8, what)

    def value(self, type_id: int, key: str) -> tuple[Any, int | None]:
        """A value; arrays come back as their length, and their elements only when short and numeric."""
        if type_id in self.scalars:
            st = self.scalars[type_id]
            self.keep(_OBJ, key)
            return self.unpack(st, "the value of {}")[0], None
        if type_id == self.string_t:
            return self.string("the value of {}", MAX_HEADER_BYTES), None
        if type_id == self.array_t:
            item = self.u32("the array type of {}")
            count = self.u64("the array length of {}")
            width = self.scalars[item].size if item in self.scalars else 8 if item == self.string_t else 0
            if not width:
                raise self.corrupt(f"metadata key {key!r} has an array of unknown type {item}")
            if count > MAX_ARRAY_LEN:
                raise self.corrupt(f"the array {key!r} claims {count} elements (at most {MAX_ARRAY_LEN})")
            self.need(count * width, "the array {}")  # each element takes at least `width` bytes
            if item == self.string_t:  # token lists, merges: only their length is used
                self.skip_strings(count, "a string in {}")
                return None, count
            if count > KEEP_ARRAY_MAX:
                self.skip(count * width, "the array {}")
                return None, count
            self.keep(_OBJ + count * 32, key)
            fmt = "<" + self.scalars[item].format[1:] * count
            return list(struct.unpack(fmt, self.read(count * width, "the array {}"))), count
        raise self.corrupt(f"metadata key {key!r} has unknown value type {type_id}")


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


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "str": ((str,), "a string"),
}


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}


def _typed(path: Path, kv: dict[str, Any], key: str, kind: str) -> Any:
    """kv[key] if it has the type nativellm reads it as, None when absent; ModelError naming both if not."""
    if key not in kv:
        return None
    value = kv[key]
    types, expected = _KINDS[kind]
    if isinstance(value, types) and not isinstance(value, bool):
        return value
    got = _TYPE_NAMES.get(type(value), "an array")  # long arrays are kept as None
    raise ModelError(
        f"{path} is corrupt: metadata key {key!r} is {got} but must be {expected}",
        _HELP_CORRUPT,
    )


def _open(path: Path) -> tuple[IO[bytes], int]:
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the read or never end
            raise ModelError(f"{path} is not a regular file", "give the path of a .gguf file")
        f = path.open("rb", buffering=1 << 16)
        size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist", "check the path") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a GGUF file", "give the path of a .gguf file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}", "check its permissions") from None
    return f, size


def read_header(path: Path) -> GGUFHeader:
    """Parse and bound-check the header of one GGUF file. Raises ModelError naming the problem."""
    f, size = _open(path)
    try:
        with f:
            return _read_header(f, path, size)
    except OSError as exc:
        raise ModelError(
            f"cannot read {path}: {exc.strerror or exc}", "check the file and its disk"
        ) from None


def _read_header(f: IO[bytes], path: Path, size: int) -> GGUFHeader:
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
        raise r.corrupt(f"its header claims {n_tensors} tensors and {n_kv} metadata keys")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > size - r.pos:
        raise ModelError(
            f"{path} is corrupt or truncated: its header claims {n_tensors} tensors and {n_kv} metadata "
            f"keys, more than its {size} bytes can hold",
            _HELP_CORRUPT,
        )
    kv: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for i in range(n_kv):
        r.ctx = f"#{i}"
        key = r.string("metadata key {}", MAX_KEY_LEN)
        if key in kv:
            raise r.corrupt(f"metadata key {key!r} appears twice")
        r.ctx = repr(key)
        type_id = r.u32("the type of {}")
        value, length = r.value(type_id, key)
        kv[key] = value
        if length is not None:
            array_lengths[key] = length
    alignment = _typed(path, kv, "general.alignment", "int")
    if alignment is None:
        import gguf

        alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.corrupt(f"general.alignment is {alignment}")
    r.keep(n_tensors * (4 * _OBJ + MAX_TENSOR_NAME), "its tensor infos")
    tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        r.ctx = f"#{i}"
        name = r.string("the name of tensor {}", MAX_TENSOR_NAME)
        r.ctx = repr(name)
        n_dims = r.u32("the dimensions of {}")
        if n_dims == 0 or n_dims > MAX_DIMS:
            raise r.corrupt(f"tensor {name!r} has {n_dims} dimensions")
        fields = r.unpack(_TENSOR_TAIL[n_dims], "the shape of {}")
        tensors.append((name, fields[:n_dims], fields[n_dims], fields[n_dims + 1]))
    data_offset = -(-r.pos // alignment) * alignment

    infos = []
    for name, dims, type_id, offset in tensors:
        shape = tuple(int(d) for d in dims)
        sizes = _quant_sizes().get(type_id)
        if sizes is None:
            raise ModelError(
                f"{path}: tensor {name!r} has type {type_id}, which this nativellm does not know",
                "the file is corrupt, or newer than the installed gguf package (pip install -U gguf)",
            )
        block, type_size = sizes
        n = 1
        for d in shape:
            n *= d
        if n % block:
            raise r.corrupt(f"tensor {name!r} shape {shape} does not fit its type")
        nbytes = n // block * type_size
        end = data_offset + offset + nbytes
        if end > size:
            raise ModelError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} but the file has {size} bytes "
                f"({end - size} missing)",
                _HELP_CORRUPT,
            )
        infos.append(TensorInfo(name, shape, type_id, offset, nbytes))
    return GGUFHeader(path, version, size, alignment, data_offset, kv, array_lengths, tuple(infos))


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
    arch = _typed(first.path, first.kv, "general.architecture", "str")
    if not arch:
        raise ModelError(f"{first.path} has no general.architecture; it is not a model GGUF", _HELP_CORRUPT)
    if arch not in known_architectures():
        raise ModelError(
            f"{first.path} has architecture {arch!r}, which llama.cpp does not know",
            "use a model of a supported architecture, or update nativellm and llama.cpp",
        )
    split_count = _typed(first.path, first.kv, "split.count", "int") or 1
    if split_count != len(parts):
        raise ModelError(
            f"{first.path} is part of a {split_count}-part split model but {len(parts)} part(s) were given",
            "keep all parts (x-00001-of-0000N.gguf ...) side by side and name the first",
        )
    if len(parts) > 1:
        declared = _typed(first.path, first.kv, "split.tensors.count", "int")
        total = sum(len(h.tensors) for h in headers)
        if declared is not None and declared != total:
            raise ModelError(
                f"{first.path}: the split model declares {declared} tensors but its parts hold {total}",
                _HELP_CORRUPT,
            )
    return facts_of(headers)


def _int(path: Path, kv: dict[str, Any], key: str) -> int | None:
    """An integer fact; per-layer arrays (head_count_kv on some archs) give their worst case."""
    value = kv.get(key)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return int(max(value))
    if value is None and key in kv:  # a long array, skipped by the reader
        return None
    return _typed(path, kv, key, "int")  # type: ignore[no-any-return]


def facts_of(headers: Sequence[GGUFHeader]) -> dict[str, Any]:
    """The facts `inspect` shows and `fit` uses, from validated headers."""
    import gguf

    first = headers[0]
    kv, path = first.kv, first.path
    arch = _typed(path, kv, "general.architecture", "str")
    if not arch:
        raise ModelError(f"{path} has no general.architecture; it is not a model GGUF", _HELP_CORRUPT)

    def a(key: str) -> int | None:
        return _int(path, kv, f"{arch}.{key}")

    tensors = [t for h in headers for t in h.tensors]
    block_count = a("block_count")
    if block_count is not None and (block_count > MAX_LAYERS or (tensors and block_count > len(tensors))):
        raise ModelError(
            f"{path} is corrupt: {arch}.block_count is {block_count} but the model has {len(tensors)} tensors",
            _HELP_CORRUPT,
        )
    layer_bytes: dict[int, int] = {}
    expert_bytes: dict[int, int] = {}
    other_bytes = output_bytes = 0
    type_counts: dict[str, int] = {}
    matrix_bytes: dict[str, int] = {}
    for t in tensors:
        m = _LAYER_RE.match(t.name)
        if m:
            layer = int(m[1])
            if layer >= len(tensors):  # a layer holds at least one tensor: no real model has gaps this big
                raise ModelError(
                    f"{path} is corrupt: tensor {t.name!r} names layer {layer} but the model has "
                    f"{len(tensors)} tensors",
                    _HELP_CORRUPT,
                )
            layer_bytes[layer] = layer_bytes.get(layer, 0) + t.nbytes
            if _EXPERTS_RE.search(t.name):
                expert_bytes[layer] = expert_bytes.get(layer, 0) + t.nbytes
        else:
            other_bytes += t.nbytes
            if t.name.startswith("output."):
                output_bytes += t.nbytes
        tname = gguf.GGMLQuantizationType(t.type_id).name
        type_counts[tname] = type_counts.get(tname, 0) + 1
        # Weight matrices the CPU backend may repack into an interleaved copy at load time.
        if len(t.shape) == 2 and t.shape[1] % 8 == 0 and not t.name.startswith("token_embd"):
            matrix_bytes[tname] = matrix_bytes.get(tname, 0) + t.nbytes
    file_type_id = _int(path, kv, "general.file_type")
    file_type: str | None = None
    if file_type_id is not None:
        try:
            file_type = gguf.LlamaFileType(file_type_id).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = f"type {file_type_id}"
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
        "name": _typed(path, kv, "general.name", "str"),
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
        **_arch_facts(path, kv, arch, expert_bytes, len(layer_bytes) and max(layer_bytes) + 1),
    }


def _arch_facts(
    path: Path, kv: dict[str, Any], arch: str, expert_bytes: dict[int, int], n_layers: int
) -> dict[str, Any]:
    """Sliding-window attention and mixture-of-experts facts, as llama.cpp's hparams read them."""
    window = _int(path, kv, f"{arch}.attention.sliding_window")
    pattern = kv.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # per layer: true where the layer uses the window
        pattern = [bool(v) for v in pattern]
    elif pattern is not None:
        pattern = _int(path, kv, f"{arch}.attention.sliding_window_pattern")
    return {
        "sliding_window": window,
        "sliding_window_pattern": pattern,
        "expert_count": _int(path, kv, f"{arch}.expert_count"),
        "expert_used_count": _int(path, kv, f"{arch}.expert_used_count"),
        "expert_feed_forward_length": _int(path, kv, f"{arch}.expert_feed_forward_length"),
        "expert_bytes": [expert_bytes.get(i, 0) for i in range(n_layers)] if expert_bytes else [],
    }
