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
from nativellm.models.fit_arch import (
    expert_bytes,
    experts_on_host,
    experts_used,
    ffn_width,
    kv_layout,
    swa_layers,
)
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
N_BATCH = 2048  # llama-server's default --batch-size
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
    output_bytes: int = 0  # the logits buffer: n_vocab floats per output (one per sequence)
    kv_swa_bytes: int = 0  # part of kv_cache_bytes: the sliding-window layers' cache
    kv_full_cells: int = 0  # KV cells per stream for full-attention layers
    kv_swa_cells: int = 0  # KV cells per stream for sliding-window layers (0: none)
    swa_layers: int = 0  # how many layers use the sliding window
    experts_host_bytes: int = 0  # expert tensors kept in host memory (part of weights_host_bytes)
    experts_gpu_bytes: int = 0  # expert tensors offloaded (part of weights_gpu_bytes)

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
            "output_bytes": self.output_bytes,
        }
        if self.swa_layers:  # only for sliding-window models: a dense model's report keeps its shape
            d["kv"] = {
                "full_bytes": self.kv_cache_bytes - self.kv_swa_bytes,
                "swa_bytes": self.kv_swa_bytes,
                "full_cells": self.kv_full_cells,
                "swa_cells": self.kv_swa_cells,
                "swa_layers": self.swa_layers,
            }
        if self.experts_host_bytes or self.experts_gpu_bytes:
            d["experts"] = {"host_bytes": self.experts_host_bytes, "gpu_bytes": self.experts_gpu_bytes}
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


def _kv_per_token(facts: Mapping[str, Any], cache_type_k: str, cache_type_v: str) -> float:
    """Bytes of K and V one cell holds in one layer."""
    for t in (cache_type_k, cache_type_v):
        if t not in CACHE_TYPE_BYTES:
            raise UsageError(f"unknown cache type {t!r}", f"use one of: {', '.join(CACHE_TYPE_BYTES)}")
    n_head_kv = _req(facts, "head_count_kv")
    k_dim = facts.get("key_length") or _req(facts, "embedding_length") // _req(facts, "head_count")
    v_dim = facts.get("value_length") or k_dim
    return float(
        n_head_kv * (k_dim * CACHE_TYPE_BYTES[cache_type_k] + v_dim * CACHE_TYPE_BYTES[cache_type_v])
    )


def kv_cache_bytes(
    facts: Mapping[str, Any],
    ctx: int,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    *,
    parallel: int = 1,
    n_ubatch: int = N_UBATCH,
    swa_full: bool = False,
    kv_unified: bool = False,
) -> int:
    """Sum over layers of cells x n_head_kv x head_dim x (bytes_k + bytes_v), cells padded like llama.cpp:
    the full context for full-attention layers, the window plus a micro-batch for sliding-window ones."""
    per_token = _kv_per_token(facts, cache_type_k, cache_type_v)
    return kv_layout(
        facts, _layers(facts), ctx, per_token, parallel=parallel, n_ubatch=_ubatch(ctx, n_ubatch),
        swa_full=swa_full, kv_unified=kv_unified,
    ).total_bytes  # fmt: skip


def _ubatch(ctx: int, n_ubatch: int) -> int:
    """llama_context: n_batch = min(n_ctx, 2048), n_ubatch = min(n_batch, --ubatch-size)."""
    return max(1, min(n_ubatch, N_BATCH, ctx))


def output_buffer_bytes(facts: Mapping[str, Any], parallel: int = 1) -> int:
    """llama_context::output_reserve: n_vocab floats for each of max(1, n_seq) outputs."""
    return 4 * int(facts.get("vocab_size") or 32000) * max(1, parallel)


def compute_buffer_bytes(
    facts: Mapping[str, Any],
    ctx: int,
    parallel: int = 1,
    *,
    n_ubatch: int = N_UBATCH,
    swa_cells: int = 0,
    kv_unified: bool = False,
) -> int:
    """The graph allocator's reserve for one worst-case micro-batch (the output buffer is apart).

    Calibrated on llama-server's own "compute buffer size" lines: the peak
    holds the FFN activations of one micro-batch (3 x n_ff + 4 x n_embd
    floats per token: gate, up and their product, with the residual stream
    and norms; exact for llama and qwen2, -1% for gemma3) and the f16
    attention mask (n_ubatch x the context of one slot: llama-server splits
    --ctx-size across slots). Flash attention is llama.cpp's default where
    supported, so there is no n_ctx x n_ctx score matrix. For
    mixture-of-experts models the FFN width is that of the experts a token
    uses together, and the down projection has one n_embd row per used
    expert before they are summed (1 + n_expert_used rows of n_embd).
    """
    n_embd = _req(facts, "embedding_length")
    n_ff = ffn_width(facts)
    # A unified cache is one stream: the mask spans all of it, not one slot's share.
    ctx_slot = -(-max(ctx // (1 if kv_unified else parallel), 1) // CTX_PAD) * CTX_PAD
    n_ubatch = min(_ubatch(ctx, n_ubatch), ctx_slot)
    used = experts_used(facts)
    activations = 4 * n_ubatch * (3 * n_ff + (4 if used == 1 else 1 + used) * n_embd)
    mask = 2 * n_ubatch * ctx_slot
    if swa_cells:  # interleaved SWA: a second f16 mask over the window cache
        mask += 2 * n_ubatch * min(swa_cells, ctx_slot)
    return activations + mask


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
    n_cpu_moe: int = 0,
    cpu_moe: bool = False,
    swa_full: bool = False,
    kv_unified: bool = False,
    n_ubatch: int = N_UBATCH,
) -> FitReport:
    """Estimate the memory `record` needs with these llama-server settings and compare it with `profile`.

    `record` is a ModelRecord (anything with a `facts` mapping and a `name`). `devices` is the GPU
    inventory (`hardware.vram.device_inventory`): with a device's free memory known, the offload is
    compared against what is free, as llama.cpp splits layers by free memory; without it, the
    profile's GPUs and their total memory.
    ctx 0 means the model's training context (a negative one is refused), as llama-server's `-c 0` does.
    `n_cpu_moe`/`cpu_moe` are llama-server's --n-cpu-moe N/--cpu-moe (expert tensors stay in host memory),
    `swa_full` its --swa-full, `kv_unified` its --kv-unified, `n_ubatch` its --ubatch-size.
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
    first_gpu = len(layer_bytes) - offloaded
    gpu_weights = sum(layer_bytes[first_gpu:]) if offloaded else 0
    experts = expert_bytes(facts, len(layer_bytes))
    pinned = experts_on_host(len(layer_bytes), n_cpu_moe=max(0, n_cpu_moe), cpu_moe=cpu_moe)
    experts_gpu = sum(e for i, e in enumerate(experts) if i >= first_gpu and offloaded and not pinned[i])
    gpu_weights -= sum(e for i, e in enumerate(experts) if i >= first_gpu and offloaded and pinned[i])
    if ngl > n_layer:
        gpu_weights += int(facts.get("output_bytes", 0))  # token_embd stays on the host
    host_share = (n_layer - offloaded) / n_layer
    matrices = facts.get("matrix_bytes") or {}
    repack = int(sum(int(n) for t, n in matrices.items() if t in repacked_types(profile)) * host_share)
    host_weights = sum(layer_bytes) + other - gpu_weights + repack
    ub = _ubatch(ctx, n_ubatch)
    layout = kv_layout(
        facts, n_layer, ctx, _kv_per_token(facts, cache_type_k, cache_type_v), parallel=parallel,
        n_ubatch=ub, swa_full=swa_full, kv_unified=kv_unified,
    )  # fmt: skip
    kv = layout.total_bytes
    kv_swa = layout.swa_bytes(swa_layers(facts, n_layer))
    kv_gpu = sum(layout.layer_bytes[n_layer - offloaded :]) if offloaded else 0
    compute = compute_buffer_bytes(
        facts, ctx, parallel, n_ubatch=ub, swa_cells=layout.swa_cells, kv_unified=kv_unified
    )
    output = output_buffer_bytes(facts, parallel)
    compute_gpu = compute if offloaded else 0
    host = host_weights + (kv - kv_gpu) + (compute if not offloaded else compute // 4) + output
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
    total = host_weights + gpu_weights + kv + compute + output
    kv_part = f"KV cache {_fmt(kv)}"
    if layout.swa_layers:
        kv_part += (
            f" ({_fmt(kv - kv_swa)} full context for {n_layer - layout.swa_layers} layers, {_fmt(kv_swa)} "
            f"{layout.swa_cells}-cell window for {layout.swa_layers})"
        )
    parts = f"weights {_fmt(host_weights + gpu_weights)}, {kv_part}, compute {_fmt(compute)}, output {_fmt(output)}"
    experts_host = sum(experts) - experts_gpu
    if experts_gpu or (offloaded and experts_host):
        parts += f"; experts {_fmt(experts_host)} on the host, {_fmt(experts_gpu)} on GPUs"
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
        output_bytes=output,
        kv_swa_bytes=kv_swa,
        kv_full_cells=layout.full_cells,
        kv_swa_cells=layout.swa_cells,
        swa_layers=layout.swa_layers,
        experts_host_bytes=experts_host,
        experts_gpu_bytes=experts_gpu,
    )
