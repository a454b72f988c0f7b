"""Memory-fit estimate: will this model, at this context, fit in this host's RAM and VRAM?

The estimate follows how llama.cpp allocates: the weights (one buffer per
device, layers offloaded from the last block down), the KV cache
(n_layer x n_ctx x n_head_kv x head_dim x 2 x bytes per element, with the
cache type), and the compute buffer the graph allocator reserves for the
worst-case micro-batch. `ctx` is llama-server's `--ctx-size`: the total that
all parallel slots share, so the KV cache does not grow with `parallel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nativellm.errors import ModelError, UsageError
from nativellm.hardware.apple import host_ram_left  # unified memory: GPU bytes are RAM too
from nativellm.hardware.profile import HostProfile
from nativellm.hardware.vram import GpuDevice, profile_devices
from nativellm.models.gguf import MAX_LAYERS

# Bytes per KV-cache element for llama.cpp's --cache-type-k/-v values.
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
N_UBATCH = 512  # llama-server's default --ubatch-size
CTX_PAD = 256  # llama.cpp pads the KV cache to a multiple of this
FITS_BELOW = 0.85  # above this share of a device's memory the verdict is "tight"
MIB = 1 << 20


@dataclass(frozen=True)
class FitReport:
    """The estimate for one model and one configuration on one host."""

    verdict: str  # "fits" | "tight" | "does_not_fit"
    weights_host_bytes: int
    weights_gpu_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    total_bytes: int
    available_ram_bytes: int
    available_vram_bytes: tuple[int, ...]
    message: str
    host_bytes: int = 0  # what lands in RAM: host weights, host KV, host compute
    repack_bytes: int = 0  # part of weights_host_bytes: the CPU backend's repacked copy
    gpu_bytes: tuple[int, ...] = ()  # what lands on each GPU
    devices: tuple[GpuDevice, ...] = ()  # the GPUs compared against (the inventory `status` uses too)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "verdict": self.verdict,
            "weights_host_bytes": self.weights_host_bytes,
            "weights_gpu_bytes": self.weights_gpu_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "compute_bytes": self.compute_bytes,
            "total_bytes": self.total_bytes,
            "host_bytes": self.host_bytes,
            "repack_bytes": self.repack_bytes,
            "gpu_bytes": list(self.gpu_bytes),
            "available_ram_bytes": self.available_ram_bytes,
            "available_vram_bytes": list(self.available_vram_bytes),
            "message": self.message,
        }
        if self.devices:  # only where there are GPUs: a CPU-only host's report keeps its old shape
            d["gpus"] = [g.to_dict() for g in self.devices]
        return d


def _req(facts: Mapping[str, Any], key: str) -> int:
    value = facts.get(key)
    if not isinstance(value, int) or value <= 0:
        raise UsageError(
            f"the model's GGUF facts lack {key}", "run `nativellm model verify NAME` to re-read it"
        )
    return value


def _layers(facts: Mapping[str, Any]) -> int:
    """block_count, bounded like the GGUF reader bounds it: a layer holds at least one tensor."""
    n_layer = _req(facts, "block_count")
    layer_bytes = facts.get("layer_bytes") or []
    if n_layer > MAX_LAYERS or not isinstance(layer_bytes, list) or len(layer_bytes) > MAX_LAYERS:
        raise ModelError(
            f"the model's GGUF facts claim {n_layer} layers, more than any model file can hold",
            "run `nativellm model verify NAME` to re-read it",
        )
    return n_layer


def kv_cache_bytes(
    facts: Mapping[str, Any], ctx: int, cache_type_k: str = "f16", cache_type_v: str = "f16"
) -> int:
    """n_layer x n_ctx x n_head_kv x head_dim x (bytes_k + bytes_v), n_ctx padded like llama.cpp."""
    for t in (cache_type_k, cache_type_v):
        if t not in CACHE_TYPE_BYTES:
            raise UsageError(f"unknown cache type {t!r}", f"use one of: {', '.join(CACHE_TYPE_BYTES)}")
    n_layer = _layers(facts)
    n_head_kv = _req(facts, "head_count_kv")
    k_dim = facts.get("key_length") or _req(facts, "embedding_length") // _req(facts, "head_count")
    v_dim = facts.get("value_length") or k_dim
    n_ctx = -(-ctx // CTX_PAD) * CTX_PAD
    per_token = n_head_kv * (k_dim * CACHE_TYPE_BYTES[cache_type_k] + v_dim * CACHE_TYPE_BYTES[cache_type_v])
    return int(n_layer * n_ctx * per_token)


def compute_buffer_bytes(facts: Mapping[str, Any], ctx: int, parallel: int = 1) -> int:
    """The graph allocator's reserve for one worst-case micro-batch, plus the logits output buffer.

    Calibrated on llama-server's own "compute buffer size" lines: the peak
    holds the FFN activations of one micro-batch (about 4 x n_ff + n_embd
    floats per token) and the f16 attention mask (n_ubatch x the context of
    one slot: llama-server splits --ctx-size across slots). Flash attention
    is llama.cpp's default where supported, so there is no n_ctx x n_ctx
    score matrix.
    """
    n_embd = _req(facts, "embedding_length")
    n_ff = int(facts.get("feed_forward_length") or 4 * n_embd)
    n_vocab = int(facts.get("vocab_size") or 32000)
    ctx_slot = -(-max(ctx // parallel, 1) // CTX_PAD) * CTX_PAD
    n_ubatch = min(N_UBATCH, ctx_slot)
    activations = 4 * n_ubatch * (4 * n_ff + n_embd)
    mask = 2 * n_ubatch * ctx_slot
    logits = 4 * n_vocab * parallel
    return activations + mask + logits


# Weight types the CPU backend repacks into an interleaved copy at load (ggml-cpu/repack.cpp),
# by the ISA feature that enables it. The copy is a second buffer: resident memory holds both.
_REPACK_X86 = (("avx2", frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})), ("avx512f", frozenset({"Q2_K"})))
_REPACK_ARM = (
    ("asimddp", frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q5_K", "Q6_K", "Q8_0"})),
    ("i8mm", frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q5_K", "Q6_K", "Q8_0"})),
)


def repacked_types(profile: HostProfile) -> frozenset[str]:
    table = _REPACK_X86 if profile.arch == "x86_64" else _REPACK_ARM
    types: frozenset[str] = frozenset()
    for flag, kinds in table:
        if profile.cpu.has(flag):
            types |= kinds
    return types


def _fmt(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / MIB:.0f} MiB"


def _level(need: int, have: int) -> int:
    if have <= 0:
        return 2 if need > 0 else 0
    if need <= have * FITS_BELOW:
        return 0
    return 1 if need <= have else 2


class HasFacts(Protocol):
    """What a fit needs of a model: its name and the facts read from its GGUF header."""

    @property
    def name(self) -> str: ...
    @property
    def facts(self) -> Mapping[str, Any]: ...


def estimate_fit(
    record: HasFacts,
    profile: HostProfile,
    *,
    ctx: int,
    parallel: int = 1,
    gpu_layers: int = 0,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    devices: Sequence[GpuDevice] | None = None,
) -> FitReport:
    """Estimate the memory `record` needs with these llama-server settings and compare it with `profile`.

    `record` is a ModelRecord (anything with a `facts` mapping and a `name`). `devices` is the GPU
    inventory (`hardware.vram.device_inventory`): with a device's free memory known, the offload is
    compared against what is free, as llama.cpp splits layers by free memory; without it, the
    profile's GPUs and their total memory.
    ctx 0 means the model's training context (a negative one is refused), as llama-server's `-c 0` does.
    """
    facts: Mapping[str, Any] = record.facts
    if ctx < 0:
        raise UsageError(f"--ctx {ctx} is negative", "give a context size, or 0 for the model's own")
    if ctx == 0:
        ctx = int(facts.get("context_length") or 4096)
    if parallel < 1:
        raise UsageError("--parallel must be at least 1", "give --parallel 1 or more")
    n_layer = _layers(facts)
    layer_bytes = [int(b) for b in facts.get("layer_bytes") or []]
    if not layer_bytes:  # no per-layer sizes: spread the weights evenly, without a list per layer
        layer_bytes = [int(facts.get("tensor_bytes", 0)) // n_layer] * n_layer
    other = int(facts.get("other_bytes", 0))
    inventory = tuple(devices) if devices is not None else profile_devices(profile)
    gpus = [d.capacity for d in inventory]
    ngl = max(0, min(gpu_layers, n_layer + 1)) if gpus else 0
    offloaded = min(ngl, n_layer)
    # llama.cpp offloads the last `ngl` blocks; the output layer too once ngl > n_layer.
    gpu_weights = sum(layer_bytes[len(layer_bytes) - offloaded :]) if offloaded else 0
    if ngl > n_layer:
        gpu_weights += int(facts.get("output_bytes", 0))  # token_embd stays on the host
    host_share = (n_layer - offloaded) / n_layer
    matrices = facts.get("matrix_bytes") or {}
    repack = int(sum(int(n) for t, n in matrices.items() if t in repacked_types(profile)) * host_share)
    host_weights = sum(layer_bytes) + other - gpu_weights + repack
    kv = kv_cache_bytes(facts, ctx, cache_type_k, cache_type_v)
    kv_gpu = kv * offloaded // n_layer
    compute = compute_buffer_bytes(facts, ctx, parallel)
    compute_gpu = compute if offloaded else 0
    host = host_weights + (kv - kv_gpu) + (compute if not offloaded else compute // 4)
    total_vram = sum(gpus)
    per_gpu = tuple(
        int((gpu_weights + kv_gpu + compute_gpu) * m / total_vram) if total_vram and offloaded else 0
        for m in gpus
    )
    level = max(
        [_level(host, host_ram_left(profile.memory_bytes, profile.gpus, per_gpu))]
        + [_level(u, m) for u, m in zip(per_gpu, gpus, strict=True) if u]
    )
    verdict = ("fits", "tight", "does_not_fit")[level]
    total = host_weights + gpu_weights + kv + compute
    parts = f"weights {_fmt(host_weights + gpu_weights)}, KV cache {_fmt(kv)}, compute {_fmt(compute)}"
    if repack:
        parts = parts.replace(", KV", f" (incl. a {_fmt(repack)} CPU repack copy), KV", 1)
    where = f"{_fmt(host)} of {_fmt(profile.memory_bytes)} RAM"
    if any(per_gpu):
        where += "; " + ", ".join(
            f"{_fmt(u)} of {_fmt(m)}{' free' if d.free_bytes is not None else ''} on GPU {d.index}"
            for d, u, m in zip(inventory, per_gpu, gpus, strict=True)
        )
    word = {"fits": "fits", "tight": "fits tightly", "does_not_fit": "does not fit"}[verdict]
    message = (
        f"{record.name} at ctx {ctx} {word}: needs {_fmt(total)} ({parts}); {where}"
        + (" (over 85% is tight)" if verdict == "tight" else "")
        + "."
    )
    return FitReport(
        verdict=verdict,
        weights_host_bytes=host_weights,
        weights_gpu_bytes=gpu_weights,
        kv_cache_bytes=kv,
        compute_bytes=compute,
        total_bytes=total,
        available_ram_bytes=profile.memory_bytes,
        available_vram_bytes=tuple(gpus),
        message=message,
        host_bytes=host,
        gpu_bytes=per_gpu,
        repack_bytes=repack,
        devices=inventory,
    )
