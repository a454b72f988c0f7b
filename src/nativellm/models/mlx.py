"""MLX model directories (Hugging Face layout): validation, facts, and their registry records.

An MLX model is a directory: config.json, weights in *.safetensors (a sharded model also has
model.safetensors.index.json), and a tokenizer (tokenizer.json, usually with
tokenizer_config.json). Validation reads only JSON and the safetensors headers (8 bytes of
little-endian header length, then that many bytes of JSON): no torch, no mlx, no weights loaded.
It checks that the config names the architecture and sizes, that every weight file is whole (its
tensors' byte ranges fit the file and match their shapes), that the tensors agree with the config
(embedding rows = vocab_size, layer count = num_hidden_layers), and that the tokenizer's vocabulary
fits the model's.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm.errors import ModelError, NotFoundError
from nativellm.fsutil import canonical_hash, sha256_file

FORMAT = "mlx"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
               "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}  # fmt: skip
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_HINT = (
    "give a complete MLX model directory (config.json, *.safetensors, tokenizer.json), or download it again"
)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def is_mlx_dir(path: Path) -> bool:
    """A directory that holds a config.json: what `model add` treats as an MLX model."""
    return path.is_dir() and (path / "config.json").is_file()


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent} has no {path.name}", _HINT) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{what} {path} is not valid JSON ({exc})", _HINT) from None


def read_safetensors_header(path: Path) -> list[Tensor]:
    """The tensors a safetensors file declares, checked against the file's size. ModelError if not."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path} is too short to be a safetensors file", _HINT)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ModelError(f"{path} has a header length of {n} bytes, beyond the file", _HINT)
            raw = f.read(n)
    except OSError as exc:
        raise ModelError(
            f"cannot read {path}: {exc.strerror}", "check the file and its permissions"
        ) from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path} has a corrupt safetensors header", _HINT) from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path} has a corrupt safetensors header", _HINT)
    data = size - 8 - n
    tensors = []
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = (
                entry["dtype"],
                tuple(int(d) for d in entry["shape"]),
                entry["data_offsets"],
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ModelError(f"{path}: tensor {name!r} has a malformed header entry", _HINT) from None
        width = DTYPE_BYTES.get(str(dtype))
        if width is None:
            raise ModelError(f"{path}: tensor {name!r} has an unknown dtype {dtype!r}", _HINT)
        want = math.prod(shape) * width
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end) or end - begin != want:
            raise ModelError(
                f"{path}: tensor {name!r} of shape {list(shape)} ({dtype}) needs {want} bytes, "
                f"its header gives {end - begin}",
                _HINT,
            )
        if end > data:
            raise ModelError(f"{path} is truncated: tensor {name!r} ends beyond the file", _HINT)
        tensors.append(Tensor(str(name), str(dtype), shape, want))
    return tensors


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs keep the language model's sizes under text_config."""
    inner = config.get("text_config")
    return inner if isinstance(inner, Mapping) and "hidden_size" not in config else config


def _config_int(cfg: Mapping[str, Any], key: str, path: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"{path} has no valid {key} (got {value!r})", _HINT)
    return value


def weight_files(model: Path) -> list[Path]:
    """The weight files: those the index names when sharded, else every *.safetensors."""
    index = model / INDEX_FILE
    if index.is_file():
        doc = _json(index, "the weight index")
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise ModelError(f"{index} has no weight_map", _HINT)
        names = sorted({str(v) for v in wmap.values()})
        bad = [n for n in names if "/" in n or n.startswith(".")]
        if bad:
            raise ModelError(f"{index} names a weight file outside the model directory: {bad[0]}", _HINT)
        missing = [n for n in names if not (model / n).is_file()]
        if missing:
            raise ModelError(
                f"{model} is missing weight file {missing[0]} ({len(missing)} of {len(names)} shards absent)",
                "download the missing shards, or the whole model again",
            )
        return [model / n for n in names]
    files = sorted(p for p in model.glob("*.safetensors") if p.is_file())
    if not files:
        raise ModelError(
            f"{model} has no weights (no *.safetensors file)", "download the model's weights too"
        )
    return files


def tokenizer_size(model: Path) -> int | None:
    """Tokens in tokenizer.json (its model's vocabulary plus added tokens); None for a
    SentencePiece-only tokenizer (tokenizer.model), whose size needs sentencepiece to read."""
    path = model / "tokenizer.json"
    if not path.is_file():
        if (model / "tokenizer.model").is_file():
            return None
        raise ModelError(f"{model} has no tokenizer (tokenizer.json or tokenizer.model)", _HINT)
    doc = _json(path, "the tokenizer")
    inner = doc.get("model") if isinstance(doc, dict) else None
    vocab = inner.get("vocab") if isinstance(inner, dict) else None
    if not isinstance(vocab, (dict, list)):
        raise ModelError(f"{path} has no model.vocab", _HINT)
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    added = doc.get("added_tokens")
    ids += [t.get("id") for t in added if isinstance(t, dict)] if isinstance(added, list) else []
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ModelError(f"{path} has token ids that are not non-negative integers", _HINT)
    return max(ids) + 1 if ids else 0


def validate_mlx_dir(model: Path) -> dict[str, Any]:
    """Check an MLX model directory and return its facts (the keys `inspect` shows for GGUF, plus
    format = "mlx"). ModelError naming the first problem otherwise."""
    if not model.is_dir():
        raise NotFoundError(f"{model} is not a directory", "give the model directory")
    cfg_path = model / "config.json"
    config = _json(cfg_path, "the config")
    if not isinstance(config, dict):
        raise ModelError(f"{cfg_path} is not a JSON object", _HINT)
    cfg = _text_config(config)
    model_type = cfg.get("model_type") or config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelError(f"{cfg_path} has no model_type", _HINT)
    hidden = _config_int(cfg, "hidden_size", cfg_path)
    layers = _config_int(cfg, "num_hidden_layers", cfg_path)
    vocab = _config_int(cfg, "vocab_size", cfg_path)
    tensors: list[Tensor] = []
    for f in weight_files(model):
        tensors += read_safetensors_header(f)
    if not tensors:
        raise ModelError(f"{model}'s weight files hold no tensors", _HINT)
    quantized = isinstance(config.get("quantization"), dict)
    embed = next((t for t in tensors if t.name.endswith(("embed_tokens.weight", "wte.weight"))), None)
    if embed is not None:
        if embed.shape[0] != vocab:
            raise ModelError(
                f"{model}: config.json says vocab_size {vocab}, but {embed.name} has {embed.shape[0]} rows",
                "the config does not belong to these weights; download the model again",
            )
        if not quantized and len(embed.shape) == 2 and embed.shape[1] != hidden:
            raise ModelError(
                f"{model}: config.json says hidden_size {hidden}, but {embed.name} is {embed.shape[1]} wide",
                "the config does not belong to these weights; download the model again",
            )
    found = {int(m.group(1)) for t in tensors if (m := _LAYER.search(t.name))}
    if found and (len(found) != layers or max(found) != layers - 1):
        raise ModelError(
            f"{model}: config.json says num_hidden_layers {layers}, but the weights hold {len(found)} layers",
            "the config does not belong to these weights, or shards are missing; download the model again",
        )
    n_tok = tokenizer_size(model)
    if n_tok is not None and n_tok > vocab:
        raise ModelError(
            f"{model}: the tokenizer has {n_tok} tokens, more than vocab_size {vocab} in config.json",
            "the tokenizer does not belong to this model; download the model again",
        )
    tok_cfg = model / "tokenizer_config.json"
    tok_doc = _json(tok_cfg, "the tokenizer config") if tok_cfg.is_file() else {}
    dtypes = sorted({t.dtype for t in tensors})
    return {
        "format": FORMAT,
        "architecture": model_type,
        "parameters": sum(math.prod(t.shape) for t in tensors),
        "file_type": f"mlx {config['quantization'].get('bits', '?')}-bit" if quantized else "/".join(dtypes),
        "context_length": cfg.get("max_position_embeddings"),
        "block_count": layers,
        "head_count": cfg.get("num_attention_heads"),
        "head_count_kv": cfg.get("num_key_value_heads") or cfg.get("num_attention_heads"),
        "embedding_length": hidden,
        "feed_forward_length": cfg.get("intermediate_size"),
        "vocab_size": vocab,
        "tensor_count": len(tensors),
        "tensor_bytes": sum(t.nbytes for t in tensors),
        "tokenizer_tokens": n_tok,
        "has_chat_template": bool(isinstance(tok_doc, dict) and tok_doc.get("chat_template"))
        or (model / "chat_template.jinja").is_file(),
    }


def file_hashes(model: Path) -> dict[str, str]:
    """sha256 of every regular file directly in the directory (what an MLX model is made of)."""
    return {
        p.name: sha256_file(p) for p in sorted(model.iterdir()) if p.is_file() and not p.name.startswith(".")
    }


def dir_sha256(hashes: Mapping[str, str]) -> str:
    """One hash for the directory: of its files' names and hashes."""
    return canonical_hash(dict(hashes))


def dir_size(model: Path) -> int:
    return sum(p.stat().st_size for p in model.iterdir() if p.is_file())


def real_dir(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def verify_mlx(rec: Any) -> None:
    """`model verify` of an MLX record: every file's hash as recorded, and the directory valid."""
    want: Mapping[str, str] = rec.metadata.get("file_sha256", {})
    for fname, digest in want.items():
        p = rec.path / fname
        if not p.is_file():
            raise ModelError(
                f"model {rec.name!r}: its file {p} is missing",
                f"`nativellm model rm {rec.name}` and add it again",
            )
        got = sha256_file(p)
        if got != digest:
            raise ModelError(
                f"model {rec.name!r}: {p} has sha256 {got}, but {digest} was recorded; the file changed",
                f"add it again (`nativellm model rm {rec.name}` first)",
            )
    validate_mlx_dir(rec.path)
