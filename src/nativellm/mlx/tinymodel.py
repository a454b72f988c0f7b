"""Write a tiny random-weight llama in Hugging Face / MLX format, and generate with it.

Runs under the MLX runtime's own Python (`<venv>/bin/python tinymodel.py ...`), so it imports
only the standard library and what the runtime installs (mlx, tokenizers, mlx_lm): it must not
import nativellm. The runtime's smoke test uses it, and so do the tests.

    write DIR [--vocab FILE]      config.json, model.safetensors (written with mlx),
                                  tokenizer.json (built with `tokenizers`), tokenizer_config.json
    generate DIR [--max-tokens N] load DIR with mlx_lm and generate; prints the text and
                                  `tokens=N` on the last line

--vocab is a JSON list of [token, score] pairs (a SentencePiece vocabulary, e.g. the one in a
llama GGUF's tokenizer.ggml.tokens/scores); without it a small built-in vocabulary is used.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

# Small on purpose: it loads and generates in about a second on 2 CPU cores.
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def builtin_vocab() -> list[tuple[str, float]]:
    """<unk> <s> </s>, the 256 byte-fallback pieces, then single characters and a few words."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["\u2581" + w for w in ("the", "a", "hello", "world", "is", "of", "and", "to", "in", "it")]
    chars = ["\u2581", *string.ascii_letters, *string.digits, *".,!?'-:;"]
    out = [(p, 0.0) for p in pieces]
    out += [(w, -1.0 - i * 0.01) for i, w in enumerate(words)]
    out += [(c, -5.0 - i * 0.01) for i, c in enumerate(chars)]
    return out


def build_tokenizer(vocab: list[tuple[str, float]]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


def write(out: Path, vocab: list[tuple[str, float]]) -> None:
    import mlx.core as mx

    out.mkdir(parents=True, exist_ok=True)
    n_vocab = len(vocab)
    head_dim = HIDDEN // HEADS
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": n_vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    mx.random.seed(0)

    def rnd(*shape: int) -> Any:
        return (mx.random.normal(shape) * 0.02).astype(mx.float16)

    w: dict[str, Any] = {
        "model.embed_tokens.weight": rnd(n_vocab, HIDDEN),
        "model.norm.weight": mx.ones((HIDDEN,), dtype=mx.float16),
        "lm_head.weight": rnd(n_vocab, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = mx.ones((HIDDEN,), dtype=mx.float16)
        w[p + "post_attention_layernorm.weight"] = mx.ones((HIDDEN,), dtype=mx.float16)
        w[p + "self_attn.q_proj.weight"] = rnd(HEADS * head_dim, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * head_dim, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = rnd(KV_HEADS * head_dim, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * head_dim)
        w[p + "mlp.gate_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = rnd(HIDDEN, FFN)
    mx.save_safetensors(str(out / "model.safetensors"), w, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    build_tokenizer(vocab).save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")


def generate(model: Path, max_tokens: int) -> int:
    from mlx_lm import load, stream_generate

    mdl, tok = load(str(model))
    text, n = "", 0
    for resp in stream_generate(mdl, tok, "hello world", max_tokens=max_tokens):
        text += resp.text
        n = resp.generation_tokens
    print(text)
    print(f"tokens={n}")
    return 0 if n > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinymodel")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir", type=Path)
    w.add_argument("--vocab", type=Path)
    g = sub.add_parser("generate")
    g.add_argument("dir", type=Path)
    g.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    if args.cmd == "write":
        vocab = builtin_vocab()
        if args.vocab is not None:
            vocab = [(str(t), float(s)) for t, s in json.loads(args.vocab.read_text(encoding="utf-8"))]
        write(args.dir, vocab)
        return 0
    return generate(args.dir, args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
