"""The fit for real architectures: sliding-window KV caches, expert placement, output buffer, router sums.

The expected numbers are llama.cpp's own (llama-kv-cache-iswa.cpp, llama-context.cpp, common.h), worked
out by hand here; the integration tier checks them against llama-server's reported buffers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from nativellm.errors import NotFoundError, UsageError
from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile
from nativellm.models.fit import estimate_fit, kv_cache_bytes, output_buffer_bytes
from nativellm.models.fit_arch import swa_layers
from nativellm.models.fit_router import FitSettings, estimate_router_fit, fit_router_models
from nativellm.models.gguf import validate_model
from nativellm.models.registry import ModelRegistry, add_model
from nativellm.paths import resolve_paths

MiB = 1 << 20
GiB = 1 << 30

# Gemma 3 270M's shape: 18 layers, 5 of every 6 on a 512-token window, one KV head of 256.
GEMMA3: dict[str, Any] = {
    "architecture": "gemma3",
    "block_count": 18,
    "head_count": 4,
    "head_count_kv": 1,
    "embedding_length": 640,
    "key_length": 256,
    "value_length": 256,
    "feed_forward_length": 2048,
    "vocab_size": 262144,
    "context_length": 32768,
    "sliding_window": 512,
    "sliding_window_pattern": None,
    "layer_bytes": [3 * MiB] * 18,
    "other_bytes": 170 * MiB,
    "output_bytes": 0,
}
PER_CELL = 1 * (256 + 256) * 2  # one KV head, K and V of 256, f16

# A small qwen3moe-like shape: 4 layers, 8 experts of 256 wide, 2 used; experts 6 MiB a layer.
MOE: dict[str, Any] = {
    "architecture": "qwen3moe",
    "block_count": 4,
    "head_count": 8,
    "head_count_kv": 2,
    "embedding_length": 512,
    "key_length": 64,
    "value_length": 64,
    "feed_forward_length": 512,
    "vocab_size": 32000,
    "expert_count": 8,
    "expert_used_count": 2,
    "expert_feed_forward_length": 256,
    "layer_bytes": [8 * MiB] * 4,
    "expert_bytes": [6 * MiB] * 4,
    "other_bytes": 62 * MiB,
    "output_bytes": 31 * MiB,
}


@dataclass(frozen=True)
class Rec:
    facts: dict[str, Any] = field(default_factory=lambda: dict(GEMMA3))
    name: str = "gemma3"


def host(ram: int = 64 * GiB, *gpus: int) -> HostProfile:
    cpu = CpuInfo("GenuineIntel", "Xeon", ("avx2",), 8, 16)
    gpu = tuple(GpuInfo("nvidia", i, "GPU", "sm_90", m) for i, m in enumerate(gpus))
    return HostProfile("linux", "x86_64", cpu, ram, gpu)


def test_gemma3_pattern_is_five_swa_of_six() -> None:
    flags = swa_layers(GEMMA3, 18)
    assert sum(flags) == 15
    assert [i for i, s in enumerate(flags) if not s] == [5, 11, 17]


def test_swa_layers_get_the_window_plus_a_ubatch() -> None:
    # llama-server's own report for Gemma 3 270M: 48 MiB non-SWA (16384 cells x 3 layers),
    # 15 MiB SWA (1024 cells x 15 layers).
    assert kv_cache_bytes(GEMMA3, 16384) == 3 * 16384 * PER_CELL + 15 * 1024 * PER_CELL == 63 * MiB
    assert kv_cache_bytes(GEMMA3, 4096) == 3 * 4096 * PER_CELL + 15 * 1024 * PER_CELL == 27 * MiB
    # The window never exceeds the context.
    assert kv_cache_bytes(GEMMA3, 512) == 18 * 512 * PER_CELL
    # --swa-full: every layer the full context, the old estimate.
    assert kv_cache_bytes(GEMMA3, 16384, swa_full=True) == 18 * 16384 * PER_CELL


def test_swa_cache_is_per_sequence() -> None:
    # Not unified (llama-server with an explicit --parallel): one stream per slot, each
    # ctx/4 cells for full layers and min(ctx/4, 512 + 512) for SWA ones.
    assert kv_cache_bytes(GEMMA3, 16384, parallel=4) == 4 * (3 * 4096 + 15 * 1024) * PER_CELL
    # Unified: one stream; the window is counted once per sequence.
    unified = kv_cache_bytes(GEMMA3, 16384, parallel=4, kv_unified=True)
    assert unified == (3 * 16384 + 15 * 2560) * PER_CELL
    # A smaller --ubatch-size shrinks the window cache (padded to 256).
    assert kv_cache_bytes(GEMMA3, 16384, n_ubatch=128) == (3 * 16384 + 15 * 768) * PER_CELL


def test_unified_cache_mask_spans_the_whole_context() -> None:
    # llama-server -c 16384 -np 3 --kv-unified on Gemma 3 270M: compute 35.84 MiB (2 and 3 slots apart:
    # 26.77 MiB); the f16 mask covers the one stream and the window cache, not a slot's share.
    split = estimate_fit(Rec(), host(), ctx=16384, parallel=3)
    unified = estimate_fit(Rec(), host(), ctx=16384, parallel=3, kv_unified=True)
    assert unified.compute_bytes - split.compute_bytes == 2 * 512 * (16384 - 5632) + 2 * 512 * (2048 - 1024)
    assert (unified.kv_full_cells, unified.kv_swa_cells) == (16384, 2048)


def test_pattern_from_the_gguf_overrides_the_default() -> None:
    assert sum(swa_layers({**GEMMA3, "sliding_window_pattern": 2}, 18)) == 9
    per_layer = [True, False] * 9
    assert swa_layers({**GEMMA3, "sliding_window_pattern": per_layer}, 18) == tuple(per_layer)
    assert all(swa_layers({**GEMMA3, "sliding_window_pattern": 0}, 18))  # 0: every layer


def test_no_window_means_full_context_everywhere() -> None:
    assert not any(swa_layers({**GEMMA3, "sliding_window": None}, 18))
    assert not any(swa_layers({**GEMMA3, "sliding_window": 0}, 18))
    # An architecture llama.cpp gives no SWA cache ignores a stray sliding_window key.
    assert not any(swa_layers({**GEMMA3, "architecture": "llama"}, 18))
    # llama4 attends in 8192-token chunks unless told otherwise: 3 of every 4 layers.
    assert sum(swa_layers({**GEMMA3, "architecture": "llama4", "sliding_window": None}, 8)) == 6


def test_report_splits_kv_and_counts_the_output_buffer() -> None:
    r = estimate_fit(Rec(), host(), ctx=16384)
    assert r.kv_cache_bytes == 63 * MiB and r.kv_swa_bytes == 15 * MiB
    assert (r.kv_full_cells, r.kv_swa_cells, r.swa_layers) == (16384, 1024, 15)
    assert r.output_bytes == output_buffer_bytes(GEMMA3) == 262144 * 4 == 1 * MiB
    assert r.total_bytes == r.weights_host_bytes + r.kv_cache_bytes + r.compute_bytes + r.output_bytes
    assert "15 MiB 1024-cell window for 15" in r.message and "48 MiB full context for 3 layers" in r.message
    d = r.to_dict()
    assert d["kv"] == {"full_bytes": 48 * MiB, "swa_bytes": 15 * MiB, "full_cells": 16384,
                       "swa_cells": 1024, "swa_layers": 15}  # fmt: skip
    assert d["output_bytes"] == 1 * MiB and "experts" not in d


def test_swa_fit_is_far_below_the_old_full_context_estimate() -> None:
    swa = estimate_fit(Rec(), host(), ctx=16384)
    full = estimate_fit(Rec(), host(), ctx=16384, swa_full=True)
    assert full.kv_cache_bytes - swa.kv_cache_bytes == 15 * (16384 - 1024) * PER_CELL


def test_offloaded_layers_carry_their_own_kv() -> None:
    # The last 6 layers on the GPU: 5 SWA (window) + 1 full (layer 17).
    r = estimate_fit(Rec(), host(64 * GiB, 24 * GiB), ctx=16384, gpu_layers=6)
    kv_gpu = (1 * 16384 + 5 * 1024) * PER_CELL
    assert r.host_bytes - r.weights_host_bytes - r.output_bytes - r.compute_bytes // 4 == 63 * MiB - kv_gpu


def test_moe_experts_stay_on_the_host_with_n_cpu_moe() -> None:
    rec = Rec(facts=dict(MOE), name="moe")
    gpu = host(64 * GiB, 24 * GiB)
    all_gpu = estimate_fit(rec, gpu, ctx=4096, gpu_layers=99)
    assert all_gpu.experts_gpu_bytes == 24 * MiB and all_gpu.experts_host_bytes == 0
    assert all_gpu.weights_gpu_bytes == 32 * MiB + 31 * MiB
    two = estimate_fit(rec, gpu, ctx=4096, gpu_layers=99, n_cpu_moe=2)
    assert two.experts_host_bytes == 12 * MiB and two.experts_gpu_bytes == 12 * MiB
    assert two.weights_gpu_bytes == all_gpu.weights_gpu_bytes - 12 * MiB
    assert two.weights_host_bytes == all_gpu.weights_host_bytes + 12 * MiB
    assert two.total_bytes == all_gpu.total_bytes  # placement moves bytes, it adds none
    every = estimate_fit(rec, gpu, ctx=4096, gpu_layers=99, cpu_moe=True)
    assert every.experts_host_bytes == 24 * MiB and every.weights_gpu_bytes == 8 * MiB + 31 * MiB
    assert "experts 24 MiB on the host, 0 MiB on GPUs" in every.message
    assert every.to_dict()["experts"] == {"host_bytes": 24 * MiB, "gpu_bytes": 0}
    assert "kv" not in every.to_dict()  # no sliding window: no split to show


def test_moe_partial_offload_and_pinning_combine() -> None:
    # Layers 2 and 3 offloaded; --n-cpu-moe 3 keeps layer 2's experts on the host.
    r = estimate_fit(Rec(facts=dict(MOE)), host(64 * GiB, 24 * GiB), ctx=4096, gpu_layers=2, n_cpu_moe=3)
    assert r.experts_gpu_bytes == 6 * MiB and r.experts_host_bytes == 18 * MiB
    assert r.weights_gpu_bytes == 8 * MiB + 2 * MiB
    # On a CPU-only host everything is on the host whatever the flags say.
    cpu = estimate_fit(Rec(facts=dict(MOE)), host(), ctx=4096, gpu_layers=99, n_cpu_moe=1)
    assert cpu.weights_gpu_bytes == 0 and cpu.experts_host_bytes == 24 * MiB


def test_moe_compute_uses_the_experts_a_token_uses() -> None:
    wide = {**MOE, "expert_used_count": 8, "expert_feed_forward_length": 1024}
    a = estimate_fit(Rec(facts=dict(MOE)), host(), ctx=4096).compute_bytes
    b = estimate_fit(Rec(facts=wide), host(), ctx=4096).compute_bytes
    assert b - a == 4 * 512 * (3 * (8 * 1024 - 512) + 512 * (9 - 3))
    # llama-server reports 10.01 MiB for this shape at ctx 4096: gate, up and product of the two used
    # experts, one n_embd row per used expert plus the residual, and 4 MiB of f16 mask.
    assert a == 4 * 512 * (3 * 512 + 3 * 512) + 2 * 512 * 4096 == 10 * MiB


def test_dense_compute_matches_llama_server_on_qwen2_and_llama() -> None:
    # Qwen2.5-Coder 0.5B (n_embd 896, n_ff 4864): llama-server reports 39.51 MiB at ctx 4096, 51.51 at
    # 16384; the synthetic 0.4B llama (1024, 3072): 30.01 and 42.01.
    qwen2 = {**MOE, "embedding_length": 896, "feed_forward_length": 4864, "expert_count": None}
    llama = {**qwen2, "embedding_length": 1024, "feed_forward_length": 3072}
    for facts, at_4k, at_16k in ((qwen2, 39.5, 51.5), (llama, 30.0, 42.0)):
        assert estimate_fit(Rec(facts=facts), host(), ctx=4096).compute_bytes == at_4k * MiB
        assert estimate_fit(Rec(facts=facts), host(), ctx=16384).compute_bytes == at_16k * MiB


def _moe_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), arch="qwen3moe")
    w.add_name("moe")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_expert_count(4)
    w.add_expert_used_count(2)
    w.add_expert_feed_forward_length(32)
    w.add_sliding_window(128)
    w.add_array("qwen3moe.attention.sliding_window_pattern", [True, False])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", np.zeros((4, 64), dtype=np.float32))
        for kind in ("gate", "up", "down"):
            w.add_tensor(f"blk.{i}.ffn_{kind}_exps.weight", np.zeros((4, 32, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_facts_carry_window_pattern_and_experts(tmp_path: Path) -> None:
    facts = validate_model([_moe_gguf(tmp_path / "moe.gguf")])
    assert facts["sliding_window"] == 128
    assert facts["sliding_window_pattern"] == [True, False]
    assert facts["expert_count"] == 4 and facts["expert_used_count"] == 2
    assert facts["expert_feed_forward_length"] == 32
    assert facts["expert_bytes"] == [3 * 4 * 32 * 64 * 2] * 2  # three f16 expert tensors a layer
    assert swa_layers(facts, 2) == (True, False)


def test_router_fit_sums_the_largest_models_max() -> None:
    big = Rec(facts={**GEMMA3}, name="big")
    small = Rec(facts={**GEMMA3, "layer_bytes": [1 * MiB] * 18, "other_bytes": 10 * MiB}, name="small")
    moe = Rec(facts=dict(MOE), name="moe")
    s = FitSettings(ctx=4096)
    models = [(big, s), (small, s), (moe, s)]
    alone = [estimate_fit(r, host(), ctx=4096) for r in (big, small, moe)]
    every = estimate_router_fit(models, host(), models_max=0)
    assert every.loaded_at_once == 3 and every.total_bytes == sum(r.total_bytes for r in alone)
    assert every.host_bytes == sum(r.host_bytes for r in alone)
    two = estimate_router_fit(models, host(), models_max=2)
    largest = sorted((r.total_bytes for r in alone), reverse=True)[:2]
    assert two.loaded_at_once == 2 and two.total_bytes == sum(largest)
    assert [r.total_bytes for r in two.models] == [r.total_bytes for r in alone]
    assert estimate_router_fit(models, host(), models_max=9).loaded_at_once == 3
    # Per-model settings count: a longer context for one model raises the sum.
    longer = estimate_router_fit([(big, FitSettings(ctx=16384)), (small, s)], host())
    assert longer.total_bytes > estimate_router_fit([(big, s), (small, s)], host()).total_bytes
    d = two.to_dict()
    assert [m["name"] for m in d["models"]] == ["big", "small", "moe"] and d["loaded_at_once"] == 2
    assert "3 models, the 2 largest loaded at once, fits" in two.message


def test_router_fit_verdict_and_bad_input() -> None:
    s = FitSettings(ctx=4096)
    models = [(Rec(name="a"), s), (Rec(name="b"), s)]
    one = estimate_router_fit(models, host(), models_max=1).host_bytes
    assert estimate_router_fit(models, host(int(one * 1.5)), models_max=1).verdict == "fits"
    tight = estimate_router_fit(models, host(int(one * 1.5)), models_max=2)
    assert tight.verdict == "does_not_fit" and "does not fit" in tight.message
    gpu = estimate_router_fit([(r, FitSettings(ctx=4096, gpu_layers=99)) for r, _ in models],
                              host(64 * GiB, 24 * GiB))  # fmt: skip
    assert gpu.gpu_bytes[0] == 2 * gpu.models[0].gpu_bytes[0] and "on GPU 0" in gpu.message
    with pytest.raises(UsageError, match="negative"):
        estimate_router_fit(models, host(), models_max=-1)
    with pytest.raises(UsageError, match="at least one model"):
        estimate_router_fit([], host())


def test_router_fit_by_name_rereads_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models are looked up in the store and their facts re-read: a record written before the SWA facts
    existed (no sliding_window in its stored facts) still gets the window cache."""
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    paths = resolve_paths()
    path = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    for key, value in (("block_count", 6), ("embedding_length", 64), ("feed_forward_length", 128),
                       ("attention.head_count", 4), ("attention.head_count_kv", 1), ("attention.sliding_window", 32),
                       ("context_length", 4096)):  # fmt: skip
        w.add_uint32(f"gemma3.{key}", value)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float16))
    for i in range(6):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    add_model(paths, path, name="g")
    index = paths.home / "models" / "index.json"
    doc = json.loads(index.read_text())
    del doc["models"]["g"]["facts"]["sliding_window"]  # as an older nativellm stored it: no SWA facts
    index.write_text(json.dumps(doc))
    assert "sliding_window" not in ModelRegistry(paths).get("g").facts
    report = fit_router_models(paths, [("g", FitSettings(ctx=4096))], host(), models_max=1)
    assert report.models[0].swa_layers == 5 and report.models[0].kv_swa_cells == 768  # 32 + 512 -> 768
    with pytest.raises(NotFoundError):
        fit_router_models(paths, [("nope", FitSettings())], host())
