"""Fuzz the MLX model-directory reader (issue 17): safetensors headers (structured and random),
and config.json / tokenizer.json documents of any JSON shape, in an otherwise valid directory."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mlxdirs import write_mlx_dir

from nativellm.models.mlx import read_safetensors_header, validate_mlx_dir

from .conftest import check

pytestmark = pytest.mark.fuzz

DTYPES = ["F16", "BF16", "F32", "U32", "I8", "BOOL", "F64", "X9", ""]
ints = st.one_of(st.sampled_from([0, 1, 2, 7, 8, 2**31, 2**63 - 1, 2**64, -1]), st.integers(-4, 64))
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entries = st.one_of(
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(DTYPES),
            "shape": st.lists(ints, max_size=3),
            "data_offsets": st.lists(ints, min_size=0, max_size=3),
        }
    ),
    json_values,
)
headers = st.dictionaries(st.sampled_from(["w", "model.layers.0.x", "__metadata__", "embed_tokens.weight"]),
                          entries, max_size=4)  # fmt: skip


@st.composite
def safetensors(draw: st.DrawFn) -> bytes:
    doc = draw(headers)
    text = json.dumps(doc).encode()
    declared = draw(st.one_of(st.just(len(text)), ints.map(lambda n: n % 2**64)))
    return struct.pack("<Q", declared) + text + draw(st.binary(max_size=256))


@given(data=st.one_of(safetensors(), st.binary(max_size=512)))
@example(data=struct.pack("<Q", 2**64 - 1) + b"{}")
@example(data=struct.pack("<Q", 2) + b"[]")
def test_safetensors_header(workdir: Path, data: bytes) -> None:
    path = workdir / "w.safetensors"
    path.write_bytes(data)
    check("safetensors", lambda: read_safetensors_header(path), len(data))


@given(config=json_values, tokenizer=json_values)
@example(config={"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 40,
                 "text_config": []}, tokenizer={"model": {"vocab": {"a": "x"}}})  # fmt: skip
def test_config_and_tokenizer_documents(workdir: Path, config: object, tokenizer: object) -> None:
    d = workdir / "m"
    if not (d / "model.safetensors").exists():
        write_mlx_dir(d)
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text(json.dumps(tokenizer))
    check("mlx-dir", lambda: validate_mlx_dir(d), len(json.dumps(config)) + len(json.dumps(tokenizer)))
