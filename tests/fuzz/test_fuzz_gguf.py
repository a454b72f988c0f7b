"""Fuzz the GGUF header reader: structured headers, mutated valid files and random bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest
from ggufs import write_gguf
from hypothesis import example, given
from hypothesis import strategies as st

from nativellm.models.gguf import validate_model

from .conftest import INPUT_LIMIT, check

pytestmark = pytest.mark.fuzz

VT = gguf.GGUFValueType
SCALAR_FMT = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
    VT.FLOAT32: "<f", VT.BOOL: "<B", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
}  # fmt: skip
# The keys nativellm reads, and a few it does not.
KEYS = [
    "general.architecture", "general.alignment", "general.name", "general.file_type", "split.count",
    "split.tensors.count", "tokenizer.chat_template", "tokenizer.ggml.tokens", "llama.block_count",
    "llama.context_length", "llama.embedding_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.attention.key_length", "llama.feed_forward_length",
    "llama.vocab_size", "x",
]  # fmt: skip
# Integers at the edges of every width, and small ones.
EDGES = [0, 1, 2, 3, 4, 8, 31, 32, 64, 4096, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
         2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip
u64s = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1))
u32s = st.one_of(st.sampled_from([e for e in EDGES if e < 2**32]), st.integers(0, 2**32 - 1))


def gstr(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


@st.composite
def scalar(draw: st.DrawFn, vt: int) -> bytes:
    fmt = SCALAR_FMT[VT(vt)]
    size = struct.calcsize(fmt)
    if fmt[1] in "fd":
        return struct.pack(fmt, draw(st.floats(allow_nan=True, width=8 * size)))  # type: ignore[arg-type]
    return draw(st.binary(min_size=size, max_size=size))


@st.composite
def value(draw: st.DrawFn, depth: int = 0) -> bytes:
    vt = draw(st.sampled_from(list(VT)))
    body = struct.pack("<I", vt)
    if vt == VT.STRING:
        return body + gstr(draw(st.sampled_from([b"llama", b"", b"\xff\xfe", b"x" * 100])))
    if vt == VT.ARRAY:
        item = draw(st.sampled_from([*list(VT), 99])) if depth == 0 else VT.UINT32
        n = draw(st.integers(0, 40))
        claimed = draw(st.one_of(st.just(n), u64s))
        body = struct.pack("<IIQ", vt, item, claimed)
        if item == VT.STRING:
            return body + b"".join(gstr(b"t%d" % i) for i in range(n))
        if item in SCALAR_FMT:
            return body + b"".join(draw(scalar(item)) for _ in range(n))
        return body
    if vt in SCALAR_FMT:
        return body + draw(scalar(vt))
    return body


@st.composite
def tensor_info(draw: st.DrawFn) -> bytes:
    name = draw(
        st.one_of(
            st.sampled_from([b"token_embd.weight", b"output.weight", b"blk.0.attn_q.weight"]),
            st.builds(lambda n: b"blk.%d.x" % n, u64s),
            st.binary(max_size=80),
        )
    )
    n_dims = draw(st.one_of(st.integers(1, 4), u32s))
    dims = [draw(st.one_of(st.integers(0, 64), u64s)) for _ in range(min(n_dims, 5))]
    ttype = draw(st.one_of(st.sampled_from([int(t) for t in gguf.GGMLQuantizationType]), u32s))
    offset = draw(st.one_of(st.sampled_from([0, 32, 64]), u64s))
    return (
        gstr(name)
        + struct.pack("<I", n_dims)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    kvs = draw(st.lists(st.tuples(st.sampled_from(KEYS), value()), max_size=12))
    if draw(st.booleans()):
        kvs.insert(0, ("general.architecture", struct.pack("<I", VT.STRING) + gstr(b"llama")))
    tensors = draw(st.lists(tensor_info(), max_size=6))
    n_kv = draw(st.one_of(st.just(len(kvs)), u64s))
    n_t = draw(st.one_of(st.just(len(tensors)), u64s))
    version = draw(st.sampled_from([3, 3, 3, 2, 1, 4, 2**32 - 1]))
    head = b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv)
    body = b"".join(gstr(k.encode()) + v for k, v in kvs) + b"".join(tensors)
    tail = draw(st.sampled_from([b"", bytes(32), bytes(4096)]))
    return head + body + tail


BASE = bytearray()


def base() -> bytes:
    """A real GGUF from the fixtures (written once), the seed of the mutations."""
    if not BASE:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            BASE.extend(write_gguf(Path(d) / "b.gguf", n_vocab=64, n_embd=32, n_ff=32).read_bytes())
    return bytes(BASE)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(base())
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, min(len(data), 4096) - 1))
        kind = draw(st.sampled_from(["u64", "u32", "byte", "cut", "insert"]))
        if kind == "u64":
            data[at : at + 8] = struct.pack("<Q", draw(u64s))
        elif kind == "u32":
            data[at : at + 4] = struct.pack("<I", draw(u32s))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data[:INPUT_LIMIT])


inputs = st.one_of(
    structured(),
    mutated(),
    st.binary(max_size=2048),
    st.builds(lambda b: b"GGUF" + b, st.binary(max_size=2048)),
)


def run(workdir: Path, data: bytes) -> None:
    path = workdir / "m.gguf"
    path.write_bytes(data)
    check("gguf", lambda: validate_model([path]), len(data))


@given(data=inputs)
@example(
    data=b"GGUF"
    + struct.pack("<IQQ", 3, 1, 1)
    + gstr(b"general.alignment")
    + struct.pack("<I", 8)
    + gstr(b"x")
)
@example(
    data=b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr(b"split.count") + struct.pack("<I", 8) + gstr(b"2")
)
def test_gguf_header(workdir: Path, data: bytes) -> None:
    run(workdir, data)
