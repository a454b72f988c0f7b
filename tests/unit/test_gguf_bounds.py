"""Finding 5 of issue 14: a crafted GGUF header costs milliseconds and kilobytes, then a ModelError.

Every attack is a file the test writes: valid bases with the `gguf` package's GGUFWriter, malformed
headers with raw struct packing, sparse files with truncate(). Each refusal is timed and its peak
Python allocation measured with tracemalloc.
"""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from ggufs import write_gguf, write_split, write_vocab

from nativellm.errors import ModelError
from nativellm.models import gguf as reader
from nativellm.models.fit import estimate_fit, kv_cache_bytes
from nativellm.models.gguf import read_header, validate_model

MiB = 1 << 20
PEAK_LIMIT = 64 * MiB
TIME_LIMIT = 1.0


def bounded(fn: Callable[[], Any]) -> tuple[ModelError, float, int]:
    """Run fn, which must raise ModelError, within TIME_LIMIT seconds and PEAK_LIMIT bytes.

    Timed on a plain run (tracemalloc slows allocation-heavy code tenfold), then measured on a traced one.
    """
    t0 = time.perf_counter()
    with pytest.raises(ModelError):
        fn()
    elapsed = time.perf_counter() - t0
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as exc:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.exit_code == 9 and exc.value.hint
    assert elapsed < TIME_LIMIT, f"took {elapsed:.2f} s: {exc.value.message}"
    assert peak < PEAK_LIMIT, f"peak allocation {peak / MiB:.1f} MiB: {exc.value.message}"
    return exc.value, elapsed, peak


def refused(path: Path) -> str:
    return bounded(lambda: validate_model([path]))[0].message


# Raw GGUF pieces, for headers GGUFWriter would never write.
def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def kv_str(key: bytes, value: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", gguf.GGUFValueType.STRING) + gstr(value)


def kv_u32(key: bytes, value: int) -> bytes:
    return gstr(key) + struct.pack("<II", gguf.GGUFValueType.UINT32, value)


def string_array(key: bytes, count: int) -> bytes:
    """The head of a string array; the strings themselves follow (or a sparse hole does)."""
    return gstr(key) + struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, count)


def write(path: Path, data: bytes, sparse_size: int = 0) -> Path:
    path.write_bytes(data)
    if sparse_size:
        with path.open("r+b") as f:
            f.truncate(sparse_size)  # a hole of zero bytes: no disk, but a lot of file
    return path


def model(path: Path, *, arch: str = "llama", tensors: list[str] | None = None, **kv: Any) -> Path:
    """A small valid model GGUF; keyword arguments add metadata (`key__sub` spells `key.sub`)."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_head_count(2)
    for key, value in kv.items():
        name = key.replace("__", ".")
        if isinstance(value, str):
            w.add_string(name, value)
        elif isinstance(value, list):
            w.add_array(name, value)
        else:
            w.add_uint64(name, value)
    for name in tensors or ["token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_q.weight"]:
        w.add_tensor(name, np.ones((2, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- The attacks of finding 5 ---------------------------------------------------------------------


def test_a_huge_layer_index_in_a_tensor_name(tmp_path: Path) -> None:
    path = model(tmp_path / "m.gguf", tensors=["token_embd.weight", "blk.999999999999.x"])
    assert "names layer 999999999999" in refused(path)


def test_a_huge_block_count(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch="llama")
    w.add_uint64("llama.block_count", 10**12)
    w.add_tensor("blk.0.x", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "llama.block_count is 1000000000000" in refused(tmp_path / "m.gguf")


class _Rec:
    name = "m"

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts


def test_fit_refuses_a_huge_block_count_from_stored_facts() -> None:
    """Facts from an older registry (or edited) never make fit build a list per claimed layer."""
    from nativellm.hardware.profile import CpuInfo, HostProfile

    facts: dict[str, Any] = {
        "block_count": 10**12,
        "head_count": 2,
        "head_count_kv": 2,
        "embedding_length": 8,
    }
    cpu = CpuInfo(vendor="x", model="x", flags=(), physical_cores=1, logical_cores=1)
    profile = HostProfile(os="linux", arch="x86_64", cpu=cpu, memory_bytes=8 << 30)
    err, _, _ = bounded(lambda: estimate_fit(_Rec(facts), profile, ctx=512))
    assert "claim 1000000000000 layers" in err.message
    bounded(lambda: kv_cache_bytes(facts, 512))
    facts = {**facts, "block_count": 2, "layer_bytes": [1] * (reader.MAX_LAYERS + 1)}
    bounded(lambda: estimate_fit(_Rec(facts), profile, ctx=512))


def test_a_string_length_is_bounded_before_it_is_read(tmp_path: Path) -> None:
    # A 200-byte file whose first key claims 2**62 bytes.
    path = write(tmp_path / "a.gguf", header(0, 1) + struct.pack("<Q", 2**62) + bytes(176))
    assert "claims 4611686018427387904 bytes" in refused(path)
    # A key of 1 MiB that is really there: over the spec's bound on keys, refused before reading it.
    path = write(tmp_path / "b.gguf", header(0, 1) + gstr(b"k" * MiB) + struct.pack("<IB", 0, 1))
    assert "metadata key #0 is 1048576 bytes long (at most 65535)" in refused(path)
    # A tensor name over GGML_MAX_NAME.
    path = write(tmp_path / "c.gguf", header(1, 0) + gstr(b"t" * 100) + bytes(64))
    assert "the name of tensor #0 is 100 bytes long" in refused(path)


def test_a_huge_string_value_in_a_sparse_file(tmp_path: Path) -> None:
    """A 100 MiB chat template (a hole): refused by the memory budget, never allocated."""
    data = header(0, 1) + gstr(b"tokenizer.chat_template")
    data += struct.pack("<IQ", gguf.GGUFValueType.STRING, 100 * MiB)
    path = write(tmp_path / "m.gguf", data, sparse_size=len(data) + 100 * MiB)
    assert "would take over 32 MiB of memory" in refused(path)


def test_a_sparse_gigabyte_of_empty_strings(tmp_path: Path) -> None:
    """1 GiB sparse file claiming 10**8 empty strings: 40 s of CPU before; refused at once now."""
    data = header(0, 1) + string_array(b"tokenizer.ggml.tokens", 10**8)
    path = write(tmp_path / "m.gguf", data, sparse_size=1 << 30)
    assert "claims 100000000 elements" in refused(path)


def test_empty_strings_up_to_the_cap_are_walked_fast(tmp_path: Path) -> None:
    """Just under the caps, a hole of empty strings is skipped in runs, not one read per string."""
    n = reader.MAX_ARRAY_STRINGS
    data = header(0, 1) + string_array(b"tokenizer.ggml.tokens", n)
    path = write(tmp_path / "m.gguf", data, sparse_size=len(data) + 8 * n)
    t0 = time.perf_counter()
    h = read_header(path)
    elapsed = time.perf_counter() - t0
    tracemalloc.start()
    try:
        read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert h.array_lengths == {"tokenizer.ggml.tokens": n}
    assert elapsed < TIME_LIMIT and peak < PEAK_LIMIT
    # One string more in a second array crosses the cap on strings.
    data = header(0, 2) + string_array(b"a", n) + bytes(8 * n) + string_array(b"b", 1) + bytes(8)
    assert f"over {n} strings" in refused(write(tmp_path / "n.gguf", data))


@pytest.mark.parametrize(
    ("n_tensors", "n_kv", "words"),
    [
        (10**12, 0, "claims 1000000000000 tensors"),
        (0, 10**9, "1000000000 metadata keys"),
        (60_000, 0, "more than its 224 bytes can hold"),  # under the cap, but not in 200 bytes
        (0, 10_000, "more than its 224 bytes can hold"),
    ],
)
def test_counts_beyond_what_the_file_can_hold(tmp_path: Path, n_tensors: int, n_kv: int, words: str) -> None:
    path = write(tmp_path / "m.gguf", header(n_tensors, n_kv) + bytes(200))
    assert words in refused(path)


def test_array_lengths_are_bounded_by_the_file(tmp_path: Path) -> None:
    data = header(0, 1) + gstr(b"x") + struct.pack("<IIQ", 9, gguf.GGUFValueType.UINT64, 2**20) + bytes(64)
    assert "truncated" in refused(write(tmp_path / "m.gguf", data))
    data = header(0, 1) + gstr(b"x") + struct.pack("<IIQ", 9, gguf.GGUFValueType.ARRAY, 1) + bytes(64)
    assert "array of unknown type 9" in refused(write(tmp_path / "n.gguf", data))


def test_a_duplicate_key(tmp_path: Path) -> None:
    data = header(0, 2) + kv_u32(b"general.alignment", 32) + kv_u32(b"general.alignment", 64)
    assert "'general.alignment' appears twice" in refused(write(tmp_path / "m.gguf", data))


def test_many_small_keys_stay_cheap(tmp_path: Path) -> None:
    """The most keys the reader takes: refused (no architecture) in well under a second."""
    n = reader.MAX_KV
    data = header(0, n) + b"".join(kv_u32(b"k%d" % i, i) for i in range(n))
    assert "no general.architecture" in refused(write(tmp_path / "m.gguf", data))


# --- Keys of the wrong type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kv", "words"),
    [
        ({"general__alignment": "abc"}, "'general.alignment' is a string but must be an integer"),
        ({"split__count": "two"}, "'split.count' is a string but must be an integer"),
        ({"general__name": ["a", "b"]}, "'general.name' is an array but must be a string"),
        ({"general__file_type": "q4"}, "'general.file_type' is a string but must be an integer"),
        ({"llama__context_length": "4k"}, "'llama.context_length' is a string but must be an integer"),
        ({"llama__attention__head_count_kv": "x"}, "'llama.attention.head_count_kv' is a string"),
    ],
)
def test_keys_of_the_wrong_type(tmp_path: Path, kv: dict[str, Any], words: str) -> None:
    assert words in refused(model(tmp_path / "m.gguf", **kv))


def test_architecture_of_the_wrong_type(tmp_path: Path) -> None:
    data = header(0, 1) + gstr(b"general.architecture") + struct.pack("<IQ", gguf.GGUFValueType.UINT64, 7)
    assert "'general.architecture' is an integer but must be a string" in refused(
        write(tmp_path / "m.gguf", data)
    )


def test_split_tensor_count_of_the_wrong_type(tmp_path: Path) -> None:
    parts = write_split(tmp_path, "big", 2)
    data = parts[0].read_bytes()
    key = gstr(b"split.tensors.count") + struct.pack("<I", gguf.GGUFValueType.INT32)
    at = data.index(key) + len(key) - 4
    bad = data[:at] + struct.pack("<If", gguf.GGUFValueType.FLOAT32, 21.0) + data[at + 8 :]
    parts[0].write_bytes(bad)
    err, _, _ = bounded(lambda: validate_model(parts))
    assert "'split.tensors.count' is a float but must be an integer" in err.message


# --- Real files still parse -----------------------------------------------------------------------


def test_valid_files_still_parse(tmp_path: Path) -> None:
    facts = validate_model([write_gguf(tmp_path / "a.gguf")])
    assert facts["block_count"] == 2 and facts["layer_bytes"] and facts["vocab_size"] == 300
    facts = validate_model(write_split(tmp_path, "s", 3))
    assert facts["tensor_count"] == 21 and facts["split_count"] == 3
    h = read_header(write_vocab(tmp_path / "v.gguf"))
    assert h.tensors == () and h.array_lengths["tokenizer.ggml.tokens"] == 300


def test_a_large_real_shaped_vocabulary(tmp_path: Path) -> None:
    """A 262k-token list with scores and types (Gemma-sized) and per-layer head counts parse."""
    n = 262_144
    path = model(
        tmp_path / "m.gguf",
        llama__attention__head_count_kv=[1, 2],
        tokenizer__ggml__tokens=[f"tok{i}" for i in range(n)],
        tokenizer__ggml__scores=[0.5] * n,
        tokenizer__chat_template="{{ x }}",
    )
    facts = validate_model([path])
    assert facts["vocab_size"] == n and facts["head_count_kv"] == 2 and facts["has_chat_template"]
    assert facts["layer_bytes"] == [64, 64]


def test_token_lists_with_runs_of_empty_strings_are_walked_exactly(tmp_path: Path) -> None:
    """The fast path for runs of empty strings lands exactly on the next key, across chunk borders."""
    tokens = [""] * 5000 + [("" if i % 3 else f"t{i}") for i in range(100_000)] + ["x" * 70_000] + [""] * 9
    path = model(
        tmp_path / "m.gguf",
        tokenizer__ggml__tokens=tokens,
        tokenizer__ggml__merges=["a b"] * 10 + [""] * 100,
        tokenizer__chat_template="after the lists",
    )
    h = read_header(path)
    assert h.array_lengths["tokenizer.ggml.tokens"] == len(tokens)
    assert h.array_lengths["tokenizer.ggml.merges"] == 110
    assert h.kv["tokenizer.chat_template"] == "after the lists"
    assert [t.name for t in h.tensors] == ["token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_q.weight"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    assert "is not a regular file" in refused(fifo)
