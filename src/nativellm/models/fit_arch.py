"""Architecture-specific sizing for the memory fit: sliding-window attention and mixture-of-experts.

Both follow the llama.cpp tree nativellm builds (src/llama-kv-cache-iswa.cpp, src/llama-hparams.cpp,
src/models/*.cpp, common/common.h):

- Interleaved sliding-window attention (iSWA): the layers that attend within a window get their own
  KV cache of `GGML_PAD(min(n_ctx_seq, n_swa * (unified ? n_seq : 1) + n_ubatch), 256)` cells per
  stream, the others the full context. `--swa-full` sizes both for the full context.
- Mixture-of-experts: `--cpu-moe` keeps every `ffn_{up,down,gate,gate_up}_(ch)exps` tensor in host
  memory; `--n-cpu-moe N` those of the first N layers. The rest of an offloaded layer goes to the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CTX_PAD = 256  # llama.cpp pads the KV cache (and the SWA cache) to a multiple of this

# (default n_pattern, dense_first) per architecture, as each model's load_arch_hparams calls
# load_swa_pattern(ml, n, dense_first); a GGUF `<arch>.attention.sliding_window_pattern` overrides it.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "olmo2": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "afmoe": (4, False),
    "laguna": (4, True),
    "mellum": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "muse-glimmer": (4, False),
}
LLAMA4_CHUNK = 8192  # llama4 attends in chunks of 8192 unless its GGUF sets sliding_window to 0


def pad(n: int, to: int = CTX_PAD) -> int:
    return -(-n // to) * to


def swa_window(facts: Mapping[str, Any]) -> int:
    """n_swa, or 0 where the model has no sliding-window layers (as llama.cpp reads it)."""
    arch = str(facts.get("architecture") or "")
    window = facts.get("sliding_window")
    if arch == "llama4" and window is None:
        return LLAMA4_CHUNK
    if arch not in SWA_PATTERNS and not isinstance(facts.get("sliding_window_pattern"), list):
        return 0  # an architecture llama.cpp gives no SWA cache: every layer keeps the full context
    return int(window) if isinstance(window, int) and window > 0 else 0


def swa_layers(facts: Mapping[str, Any], n_layer: int) -> tuple[bool, ...]:
    """Which layers use the sliding window (llama_hparams::set_swa_pattern)."""
    if not swa_window(facts):
        return (False,) * n_layer
    pattern = facts.get("sliding_window_pattern")
    if isinstance(pattern, list):
        flags = [bool(v) for v in pattern[:n_layer]]
        return tuple(flags + [False] * (n_layer - len(flags)))
    n_pattern, dense_first = SWA_PATTERNS.get(str(facts.get("architecture")), (0, False))
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
        n_pattern = pattern
    if dense_first:
        return tuple(n_pattern == 0 or il % n_pattern != 0 for il in range(n_layer))
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


@dataclass(frozen=True)
class KvLayout:
    """The KV cache as llama.cpp lays it out: cells per stream for full and SWA layers, per-layer bytes."""

    full_cells: int  # per stream
    swa_cells: int  # per stream; 0 where no layer uses the window
    streams: int  # 1 with a unified cache, else one per parallel sequence
    swa_layers: int
    layer_bytes: tuple[int, ...]  # KV bytes of each layer, in layer order

    @property
    def total_bytes(self) -> int:
        return sum(self.layer_bytes)

    def swa_bytes(self, flags: Sequence[bool]) -> int:
        return sum(b for b, s in zip(self.layer_bytes, flags, strict=True) if s)


def kv_layout(
    facts: Mapping[str, Any],
    n_layer: int,
    ctx: int,
    per_token: float,
    *,
    parallel: int = 1,
    n_ubatch: int = 512,
    swa_full: bool = False,
    kv_unified: bool = False,
) -> KvLayout:
    """llama_context + llama_kv_cache_iswa sizing: n_ctx padded, split per stream unless unified."""
    n_ctx = pad(max(ctx, 1))
    streams = 1 if kv_unified else parallel
    full = n_ctx if kv_unified else pad(n_ctx // parallel or 1)
    flags = swa_layers(facts, n_layer)
    n_swa = swa_window(facts)
    swa = 0
    if any(flags):
        swa = full if swa_full else pad(min(full, n_swa * (parallel if kv_unified else 1) + n_ubatch))
    cells = [swa if s else full for s in flags]
    return KvLayout(full, swa, streams, sum(flags), tuple(int(c * streams * per_token) for c in cells))


def expert_bytes(facts: Mapping[str, Any], n_layer: int) -> list[int]:
    raw = facts.get("expert_bytes") or []
    values = [int(b) for b in raw][:n_layer] if isinstance(raw, list) else []
    return values + [0] * (n_layer - len(values))


def experts_on_host(n_layer: int, *, n_cpu_moe: int = 0, cpu_moe: bool = False) -> tuple[bool, ...]:
    """Layers whose expert tensors --cpu-moe / --n-cpu-moe N pin to host memory."""
    return tuple(cpu_moe or il < n_cpu_moe for il in range(n_layer))


def ffn_width(facts: Mapping[str, Any]) -> int:
    """The widest FFN activation per token: dense n_ff, or the used experts' n_ff_exp x n_expert_used."""
    n_embd = int(facts.get("embedding_length") or 0)
    n_ff = int(facts.get("feed_forward_length") or 4 * n_embd)
    used, n_ff_exp = facts.get("expert_used_count"), facts.get("expert_feed_forward_length")
    if isinstance(used, int) and used > 0:
        n_ff = max(n_ff, used * int(n_ff_exp if isinstance(n_ff_exp, int) and n_ff_exp > 0 else n_ff))
    return n_ff


def experts_used(facts: Mapping[str, Any]) -> int:
    """n_expert_used, 1 for a dense model: the down projection's output has one row per used expert."""
    used = facts.get("expert_used_count")
    return used if isinstance(used, int) and used > 0 and facts.get("expert_count") else 1
