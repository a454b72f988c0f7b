"""The memory-fit estimate: the KV formula exactly, offload splits, verdicts with their numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from nativellm.errors import UsageError
from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile
from nativellm.models.fit import compute_buffer_bytes, kv_cache_bytes
from nativellm.models.registry import estimate_fit

GiB = 1 << 30
MiB = 1 << 20

# An 8B llama-3-like shape: 32 layers, 32 heads, 8 KV heads, head_dim 128.
LLAMA8B: dict[str, Any] = {
    "architecture": "llama",
    "block_count": 32,
    "head_count": 32,
    "head_count_kv": 8,
    "embedding_length": 4096,
    "key_length": 128,
    "value_length": 128,
    "feed_forward_length": 14336,
    "vocab_size": 128256,
    "context_length": 8192,
    "layer_bytes": [140 * MiB] * 32,
    "other_bytes": 1000 * MiB,
    "output_bytes": 500 * MiB,
    "tensor_bytes": 32 * 140 * MiB + 1000 * MiB,
}


@dataclass(frozen=True)
class Rec:
    facts: dict[str, Any] = field(default_factory=lambda: dict(LLAMA8B))
    name: str = "llama8b"


def host(ram: int, *gpus: int) -> HostProfile:
    cpu = CpuInfo("GenuineIntel", "Xeon", ("avx2",), 8, 16)
    return HostProfile(
        "linux",
        "x86_64",
        cpu,
        ram,
        tuple(GpuInfo("nvidia", i, "GPU", "sm_90", m) for i, m in enumerate(gpus)),
    )


def test_kv_cache_formula() -> None:
    # n_layer x ctx x n_head_kv x head_dim x 2 (K and V) x 2 bytes (f16)
    assert kv_cache_bytes(LLAMA8B, 8192) == 32 * 8192 * 8 * 128 * 2 * 2 == 1 * GiB
    assert kv_cache_bytes(LLAMA8B, 8192, "q8_0", "q8_0") == 32 * 8192 * 8 * 128 * 2 * 34 // 32
    assert kv_cache_bytes(LLAMA8B, 8192, "f32", "f16") == 32 * 8192 * 8 * 128 * (4 + 2)
    # llama.cpp pads the context to a multiple of 256
    assert kv_cache_bytes(LLAMA8B, 1000) == kv_cache_bytes(LLAMA8B, 1024)
    with pytest.raises(UsageError, match="unknown cache type"):
        kv_cache_bytes(LLAMA8B, 8192, "q3")


def test_cpu_only_fits_with_numbers() -> None:
    r = estimate_fit(Rec(), host(64 * GiB), ctx=8192)
    assert r.verdict == "fits"
    assert r.weights_gpu_bytes == 0
    assert r.weights_host_bytes == 32 * 140 * MiB + 1000 * MiB
    assert r.kv_cache_bytes == 1 * GiB
    assert r.compute_bytes == compute_buffer_bytes(LLAMA8B, 8192)
    # llama.cpp reports the logits output buffer apart from the compute buffer (n_vocab floats per slot).
    assert r.output_bytes == 4 * 128256
    assert r.total_bytes == r.weights_host_bytes + r.kv_cache_bytes + r.compute_bytes + r.output_bytes
    assert r.available_ram_bytes == 64 * GiB and r.available_vram_bytes == ()
    assert "llama8b at ctx 8192 fits" in r.message and "GiB" in r.message


def test_kv_grows_linearly_with_context() -> None:
    a = estimate_fit(Rec(), host(64 * GiB), ctx=4096)
    b = estimate_fit(Rec(), host(64 * GiB), ctx=16384)
    assert b.kv_cache_bytes == 4 * a.kv_cache_bytes
    assert b.total_bytes > a.total_bytes


def test_verdicts_tight_and_does_not_fit() -> None:
    need = estimate_fit(Rec(), host(1000 * GiB), ctx=8192).total_bytes
    assert estimate_fit(Rec(), host(int(need / 0.95)), ctx=8192).verdict == "tight"
    r = estimate_fit(Rec(), host(need // 2), ctx=8192)
    assert r.verdict == "does_not_fit"
    assert "does not fit" in r.message


def test_full_gpu_offload_moves_weights_and_kv() -> None:
    r = estimate_fit(Rec(), host(16 * GiB, 24 * GiB), ctx=8192, gpu_layers=99)
    assert r.weights_gpu_bytes == 32 * 140 * MiB + 500 * MiB  # all blocks plus the output layer
    assert r.weights_host_bytes == 500 * MiB  # token embeddings stay on the host
    assert r.gpu_bytes[0] > r.weights_gpu_bytes + r.kv_cache_bytes - 1
    assert r.available_vram_bytes == (24 * GiB,)
    assert r.verdict == "fits"
    assert "on GPU 0" in r.message


def test_partial_offload_and_two_gpus() -> None:
    r = estimate_fit(Rec(), host(64 * GiB, 8 * GiB, 8 * GiB), ctx=8192, gpu_layers=16)
    assert r.weights_gpu_bytes == 16 * 140 * MiB
    assert r.gpu_bytes[0] == r.gpu_bytes[1]
    small = estimate_fit(Rec(), host(64 * GiB, 4 * GiB), ctx=8192, gpu_layers=33)
    assert small.verdict == "does_not_fit"


def test_gpu_layers_ignored_without_gpus() -> None:
    r = estimate_fit(Rec(), host(64 * GiB), ctx=8192, gpu_layers=99)
    assert r.weights_gpu_bytes == 0 and r.gpu_bytes == ()


def test_ctx_zero_means_the_training_context() -> None:
    assert estimate_fit(Rec(), host(64 * GiB), ctx=0).kv_cache_bytes == kv_cache_bytes(LLAMA8B, 8192)


def test_a_negative_ctx_is_refused() -> None:
    with pytest.raises(UsageError, match="--ctx -5 is negative"):
        estimate_fit(Rec(), host(64 * GiB), ctx=-5)


def test_missing_facts_are_a_clear_error() -> None:
    with pytest.raises(UsageError, match="lack block_count"):
        estimate_fit(Rec(facts={"architecture": "llama"}), host(GiB), ctx=512)


def test_report_to_dict_is_json_ready() -> None:
    d = estimate_fit(Rec(), host(64 * GiB, 24 * GiB), ctx=4096, gpu_layers=10).to_dict()
    assert d["verdict"] in ("fits", "tight", "does_not_fit")
    assert isinstance(d["available_vram_bytes"], list) and isinstance(d["gpu_bytes"], list)


def test_cpu_repack_copy_counts_on_avx2_hosts() -> None:
    facts = {**LLAMA8B, "matrix_bytes": {"Q4_K": 3000 * MiB, "Q6_K": 900 * MiB}}
    with_avx2 = estimate_fit(Rec(facts=facts), host(64 * GiB), ctx=4096)
    assert with_avx2.repack_bytes == 3000 * MiB  # Q4_K is repacked with AVX2, Q6_K is not
    assert with_avx2.weights_host_bytes == 32 * 140 * MiB + 1000 * MiB + 3000 * MiB
    assert "repack" in with_avx2.message
    plain = HostProfile("linux", "x86_64", CpuInfo("GenuineIntel", "Xeon", ("avx",), 8, 16), 64 * GiB)
    assert estimate_fit(Rec(facts=facts), plain, ctx=4096).repack_bytes == 0
    # Offloaded layers are not repacked on the host.
    half = estimate_fit(Rec(facts=facts), host(64 * GiB, 24 * GiB), ctx=4096, gpu_layers=16)
    assert half.repack_bytes == 1500 * MiB


def test_parallel_slots_split_the_context_for_the_mask() -> None:
    one = compute_buffer_bytes(LLAMA8B, 8192, 1)
    four = compute_buffer_bytes(LLAMA8B, 8192, 4)
    assert one - four == 2 * 512 * (8192 - 2048)  # the output buffer is no longer folded in here
