"""Apple silicon detection on reconstructed macOS outputs (tests/fixtures/macos/README.md), the GPU
working-set rule of unified memory, and `fit` counting that memory once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from nativellm.hardware import apple
from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile, Toolkits
from nativellm.models.fit import estimate_fit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MACOS = FIXTURES / "macos"
GiB = 2**30


def _text(name: str) -> str:
    return (MACOS / name).read_text()


def _host(sysctl: str, displays: str | None = None) -> apple.AppleHost:
    found = apple.parse_displays(_text(displays)) if displays else ()
    return apple.apple_host_from_sysctl(apple.parse_sysctl(_text(sysctl)), found)


def _profile(host: apple.AppleHost) -> HostProfile:
    """What detect_host makes of an Apple host (hardware/__init__.py), without the probes."""
    cpu = CpuInfo("Apple", host.brand, host.flags, host.physical_cores, host.logical_cores)
    gpus = (host.gpu,) if host.gpu is not None else ()
    return HostProfile("darwin", "arm64", cpu, host.memory_bytes, gpus, Toolkits(metal=True))


def test_m4_pro_sysctl_and_system_profiler() -> None:
    host = _host("sysctl_m4_pro_48g_reconstructed.txt", "system_profiler_displays_m4_pro_reconstructed.json")
    assert (host.brand, host.memory_bytes, host.physical_cores) == ("Apple M4 Pro", 48 * GiB, 14)
    assert (host.performance_cores, host.efficiency_cores, host.wired_limit_mb) == (10, 4, None)
    assert {"sme", "sme2", "i8mm", "bf16", "asimddp"} <= set(host.flags)
    gpu = host.gpu
    assert gpu is not None
    assert (gpu.vendor, gpu.name, gpu.arch, gpu.cores, gpu.driver, gpu.unified) == (
        "apple", "Apple M4 Pro", "apple-m4", 20, "metal3", True,
    )  # fmt: skip
    assert gpu.memory_bytes == 36 * GiB  # 3/4 of 48 GiB: above 36 GiB


def test_profile_fixture_is_what_detect_makes_of_the_m4_pro_outputs() -> None:
    """tests/fixtures/profiles/apple-m4-pro-48g.json (a golden plan's input) comes from the parsers."""
    host = _host("sysctl_m4_pro_48g_reconstructed.txt", "system_profiler_displays_m4_pro_reconstructed.json")
    path = FIXTURES / "profiles" / "apple-m4-pro-48g.json"
    made = _profile(host).to_dict()
    if os.environ.get("NATIVELLM_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(made, indent=2) + "\n")
    assert json.loads(path.read_text()) == made
    assert HostProfile.from_dict(made) == _profile(host)  # the additive fields round-trip


@pytest.mark.parametrize(
    ("memory", "wired", "expected"),
    [
        # ggml-metal's recommendedMaxWorkingSetSize as users logged it (fixtures/macos/README.md):
        (32 * GiB, None, int(21845.34 * 2**20)),  # M2 Max 32 GB: 21845.34 MB (ollama#434)
        (96 * GiB, None, 73728 * 2**20),  # M2 Max 96 GB: 73728.00 MB (llama.cpp#3213)
        (128 * GiB, None, 96 * GiB),  # 128 GB Mac Studio: 96 GB
        (16 * GiB, None, 16 * GiB * 2 // 3),
        (36 * GiB, None, 24 * GiB),  # the boundary stays at 2/3
        (192 * GiB, 180000, 180000 * 2**20),  # iogpu.wired_limit_mb set: it wins
        (16 * GiB, 65536, 16 * GiB),  # a limit above RAM is capped at RAM
        (16 * GiB, 0, 16 * GiB * 2 // 3),  # 0: macOS's default
        (0, None, 0),
    ],
)
def test_gpu_working_set(memory: int, wired: int | None, expected: int) -> None:
    assert abs(apple.gpu_working_set_bytes(memory, wired) - expected) < 2**20


def test_wired_limit_from_sysctl_wins() -> None:
    host = _host("sysctl_m2_ultra_192g_wired_reconstructed.txt")
    assert host.wired_limit_mb == 180000
    assert host.gpu is not None and host.gpu.memory_bytes == 180000 * 2**20
    # Without system_profiler: the brand names the GPU, cores and Metal family are unknown.
    assert (host.gpu.name, host.gpu.cores, host.gpu.driver) == ("Apple M2 Ultra", None, None)


def test_m2_max_32g_matches_the_logged_working_set() -> None:
    host = _host(
        "sysctl_m2_max_32g_reconstructed.txt", "system_profiler_displays_m1_headless_reconstructed.json"
    )
    assert host.gpu is not None
    assert round(host.gpu.memory_bytes / 2**20, 2) == 21845.33  # ggml-metal printed 21845.34 MB
    assert host.performance_cores is None  # no perflevel keys captured: unknown, not 0


def test_intel_mac_has_no_apple_gpu() -> None:
    host = _host("sysctl_intel_i9_reconstructed.txt")
    assert host.gpu is None and host.logical_cores == 16


def test_headless_m1_system_profiler() -> None:
    (gpu,) = apple.parse_displays(_text("system_profiler_displays_m1_headless_reconstructed.json"))
    assert gpu == apple.AppleGpu("Apple M1", 8, "metal3", True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"SPDisplaysDataType": {}}',
        '{"SPDisplaysDataType": [1, null, "x"]}',
        '{"SPDisplaysDataType": [{"sppci_device_type": "spdisplays_display"}]}',
    ],
)
def test_parse_displays_is_total(text: str) -> None:
    assert apple.parse_displays(text) == ()


def test_absent_or_malformed_keys_give_none_not_errors() -> None:
    values = {
        "machdep.cpu.brand_string": "Apple M3",
        "hw.memsize": "lots",
        "hw.perflevel0.physicalcpu": "",
        "iogpu.wired_limit_mb": "-5",
    }
    host = apple.apple_host_from_sysctl(
        values, apple.parse_displays('{"SPDisplaysDataType": [{"sppci_cores": "x"}]}')
    )
    assert (host.memory_bytes, host.performance_cores, host.wired_limit_mb) == (0, None, None)
    assert host.gpu is not None and (host.gpu.memory_bytes, host.gpu.cores) == (0, None)


def _model(gib: float, layers: int = 32) -> SimpleNamespace:
    per = int(gib * GiB) // layers
    facts = {"block_count": layers, "layer_bytes": [per] * layers, "tensor_bytes": per * layers,
             "context_length": 4096, "embedding_length": 4096, "head_count": 32, "head_count_kv": 8}  # fmt: skip
    return SimpleNamespace(name="m", facts=facts)


def _mac(memory: int, working_set: int, unified: bool | None) -> HostProfile:
    cpu = CpuInfo("Apple", "Apple M4 Pro", ("asimd",), 14, 14)
    gpu = GpuInfo("apple", 0, "Apple M4 Pro", "apple-m4", working_set, unified=unified)
    return HostProfile("darwin", "arm64", cpu, memory, (gpu,), Toolkits(metal=True))


def test_fit_counts_unified_memory_once() -> None:
    """A 30 GiB model, half offloaded, on a 32 GiB Mac: ~15 GiB on the GPU and ~15 GiB (plus KV and
    compute) for the host. As separate pools each half fits; out of one 32 GiB pool they are more
    than 85% of it, so the verdict must be tight, not fits."""
    model = _model(30.0)
    shared = estimate_fit(model, _mac(32 * GiB, 32 * GiB * 2 // 3, True), ctx=4096, gpu_layers=16)
    separate = estimate_fit(model, _mac(32 * GiB, 32 * GiB * 2 // 3, None), ctx=4096, gpu_layers=16)
    assert separate.verdict == "fits"
    assert shared.verdict in ("tight", "does_not_fit")
    assert shared.total_bytes == separate.total_bytes  # the same bytes, counted once against RAM


def test_fit_full_offload_is_bound_by_the_working_set() -> None:
    model = _model(30.0)
    report = estimate_fit(model, _mac(32 * GiB, 32 * GiB * 2 // 3, True), ctx=4096, gpu_layers=99)
    assert report.verdict == "does_not_fit"  # 26 GiB > 21.3 GiB working set, though RAM is 32 GiB
    small = estimate_fit(_model(8.0), _mac(32 * GiB, 32 * GiB * 2 // 3, True), ctx=4096, gpu_layers=99)
    assert small.verdict == "fits"
