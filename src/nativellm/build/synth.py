"""Synthetic llama-architecture GGUF models: random weights, a real tokenizer.

They serve smoke tests, the quickstart and benchmarks on machines with no
model and no internet. Their output is gibberish by construction. The
tokenizer metadata is copied from a vocab-only GGUF that llama.cpp ships in
its source tree (models/ggml-vocab-llama-spm.gguf).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nativellm.errors import ModelError, NotFoundError

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"


@dataclass(frozen=True)
class SynthShape:
    """Hyper-parameters of a synthetic model. Row sizes are multiples of 256 so K-quants apply."""

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 4096


class SynthSize(str, enum.Enum):
    TINY = "tiny"  # ~17M parameters: smoke tests and the quickstart
    SMALL = "small"  # ~0.4B parameters: throughput and memory-fit measurements

    @property
    def shape(self) -> SynthShape:
        return _SHAPES[self]


_SHAPES = {
    SynthSize.TINY: SynthShape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512),
    SynthSize.SMALL: SynthShape(n_embd=1024, n_layer=28, n_head=16, n_head_kv=4, n_ff=3072),
}

_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)

# A minimal chat template so /v1/chat/completions works without guessing.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def find_vocab(source_dir: Path) -> Path:
    path = source_dir / "models" / VOCAB_FILE
    if not path.is_file():
        raise NotFoundError(
            f"{path} does not exist",
            "use a llama.cpp source tree that ships models/ggml-vocab-llama-spm.gguf",
        )
    return path


def _field_value(field: Any) -> Any:
    """Decode a GGUFReader field into a Python value (scalar, string or list)."""
    import gguf

    types = list(field.types)
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def write_synthetic_llama(
    out: Path,
    vocab_gguf: Path,
    size: SynthSize = SynthSize.TINY,
    *,
    seed: int = 0,
    name: str = "nativellm-demo",
) -> Path:
    """Write an F16 llama model with random weights to `out` atomically."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    import gguf

    s = size.shape
    writer, n_vocab = _llama_writer(tmp, vocab_gguf, s, name, gguf.LlamaFileType.MOSTLY_F16)
    head_dim = s.n_embd // s.n_head

    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray[Any, np.dtype[np.float16]]:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(s.n_embd, dtype=np.float32)
    kv_dim = s.n_head_kv * head_dim
    writer.add_tensor("token_embd.weight", mat(n_vocab, s.n_embd))
    for i in range(s.n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        writer.add_tensor(p + "attn_q.weight", mat(s.n_embd, s.n_embd))
        writer.add_tensor(p + "attn_k.weight", mat(kv_dim, s.n_embd))
        writer.add_tensor(p + "attn_v.weight", mat(kv_dim, s.n_embd))
        writer.add_tensor(p + "attn_output.weight", mat(s.n_embd, s.n_embd))
        writer.add_tensor(p + "ffn_norm.weight", ones)
        writer.add_tensor(p + "ffn_gate.weight", mat(s.n_ff, s.n_embd))
        writer.add_tensor(p + "ffn_up.weight", mat(s.n_ff, s.n_embd))
        writer.add_tensor(p + "ffn_down.weight", mat(s.n_embd, s.n_ff))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", mat(n_vocab, s.n_embd))
    return _finish(writer, tmp, out)


def _finish(writer: Any, tmp: Path, out: Path) -> Path:
    """Write everything added to `writer` into `tmp`, then rename it to `out` (nothing half-written)."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _llama_writer(tmp: Path, vocab_gguf: Path, s: SynthShape, name: str, file_type: Any) -> tuple[Any, int]:
    """A GGUFWriter at `tmp` with the llama hyper-parameters of `s` and the tokenizer of `vocab_gguf`."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(vocab_gguf))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read vocab GGUF {vocab_gguf}: {exc}", "check the llama.cpp source tree"
        ) from exc
    tok = {k: _field_value(reader.fields[k]) for k in _TOKENIZER_KEYS if k in reader.fields}
    tokens: list[str] = tok["tokenizer.ggml.tokens"]
    n_vocab = len(tokens)
    head_dim = s.n_embd // s.n_head

    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    writer.add_name(name)
    writer.add_context_length(s.n_ctx_train)
    writer.add_embedding_length(s.n_embd)
    writer.add_block_count(s.n_layer)
    writer.add_feed_forward_length(s.n_ff)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model(tok["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in tok:
        writer.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_scores(tok["tokenizer.ggml.scores"])
    writer.add_token_types(tok["tokenizer.ggml.token_type"])
    writer.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    writer.add_add_bos_token(bool(tok.get("tokenizer.ggml.add_bos_token", True)))
    writer.add_add_eos_token(bool(tok.get("tokenizer.ggml.add_eos_token", False)))
    writer.add_chat_template(CHAT_TEMPLATE)

    return writer, n_vocab


SHAPE_7B = SynthShape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)
"""The Llama-2-7B shape: the usual yardstick for token-generation speed against memory bandwidth."""
BENCH_SHAPES = {
    "tiny": SynthSize.TINY.shape,
    "7b": SHAPE_7B,
    "13b": SynthShape(n_embd=5120, n_layer=40, n_head=40, n_head_kv=40, n_ff=13824),  # Llama-2-13B
    "34b": SynthShape(n_embd=8192, n_layer=48, n_head=64, n_head_kv=8, n_ff=22016),  # CodeLlama-34B (GQA)
}
"""Shapes a GPU run measures: bigger models spend a larger share of each token reading weights."""

# K-quant block sizes in bytes per 256 weights (ggml-common.h: block_q4_K, block_q6_K).
_BLOCK_BYTES = {"Q4_K": 144, "Q6_K": 210}


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits(): the layers Q4_K_M gives Q6_K for attn_v and ffn_down."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def write_synthetic_q4_k_m(
    out: Path,
    vocab_gguf: Path,
    shape: SynthShape = SHAPE_7B,
    *,
    seed: int = 0,
    name: str = "nativellm-7b-shape",
) -> Path:
    """A llama model laid out as llama-quantize's Q4_K_M would lay it out (Q4_K matrices, Q6_K for
    output, and for attn_v/ffn_down in the layers use_more_bits picks; F32 norms), written directly
    as random quantized blocks: seconds for a 7B shape instead of minutes of F16 and quantizing.
    Every block's scales are small finite halves, so the numbers stay finite; the output is noise.
    For speed measurements only: the bytes read per token are those of a real Q4_K_M model."""
    import gguf

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    writer, n_vocab = _llama_writer(tmp, vocab_gguf, shape, name, gguf.LlamaFileType.MOSTLY_Q4_K_M)
    kv_dim = shape.n_head_kv * (shape.n_embd // shape.n_head)
    rng = np.random.default_rng(seed)
    # One pool of random blocks, big enough for the largest tensor; tensors are views into it.
    biggest = max(n_vocab * shape.n_embd, shape.n_ff * shape.n_embd) // 256
    pools = {}
    for kind, size in _BLOCK_BYTES.items():
        pool = rng.integers(0, 256, size=(biggest, size), dtype=np.uint8)
        half = np.array([0.001], dtype=np.float16).view(np.uint8)
        d_at = (0, 2) if kind == "Q4_K" else (size - 2,)  # Q4_K: d, dmin first; Q6_K: d last
        for at in d_at:
            pool[:, at : at + 2] = half
        pools[kind] = pool.reshape(-1)

    def blocks(rows: int, cols: int, kind: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
        n = rows * cols // 256 * _BLOCK_BYTES[kind]
        return pools[kind][:n].reshape(rows, cols // 256 * _BLOCK_BYTES[kind])

    def add(tensor: str, rows: int, cols: int, kind: str) -> None:
        writer.add_tensor(
            tensor, blocks(rows, cols, kind), raw_dtype=getattr(gguf.GGMLQuantizationType, kind)
        )

    ones = np.ones(shape.n_embd, dtype=np.float32)
    add("token_embd.weight", n_vocab, shape.n_embd, "Q4_K")
    n = shape.n_layer
    for i in range(n):
        p = f"blk.{i}."
        more = "Q6_K" if _more_bits(i, n) else "Q4_K"
        writer.add_tensor(p + "attn_norm.weight", ones)
        add(p + "attn_q.weight", shape.n_embd, shape.n_embd, "Q4_K")
        add(p + "attn_k.weight", kv_dim, shape.n_embd, "Q4_K")
        add(p + "attn_v.weight", kv_dim, shape.n_embd, more)
        add(p + "attn_output.weight", shape.n_embd, shape.n_embd, "Q4_K")
        writer.add_tensor(p + "ffn_norm.weight", ones)
        add(p + "ffn_gate.weight", shape.n_ff, shape.n_embd, "Q4_K")
        add(p + "ffn_up.weight", shape.n_ff, shape.n_embd, "Q4_K")
        add(p + "ffn_down.weight", shape.n_embd, shape.n_ff, more)
    writer.add_tensor("output_norm.weight", ones)
    add("output.weight", n_vocab, shape.n_embd, "Q6_K")
    return _finish(writer, tmp, out)
