"""Hardware parsers on real captured text, and flag verification with a fake executor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from nativellm import run
from nativellm.hardware import amd, apple, cpu, normalize_arch, nvidia, vulkan
from nativellm.hardware.cpu import ChildRunner, IsaInfo, parse_cpuinfo, verify_flags
from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hw"
XCR0_ALL = 0x602E7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM, PKRU, XTILECFG, XTILEDATA
XCR0_AVX512_NO_AMX = 0x2FF  # what the development VM reports
XCR0_AVX_ONLY = 0x7


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------ /proc/cpuinfo


def test_cpuinfo_dev_vm_cascade_lake() -> None:
    p = parse_cpuinfo(fixture("cpuinfo_xeon_cascadelake_vm.txt"))
    assert p.vendor == "GenuineIntel"
    assert p.model == "Intel(R) Xeon(R) Processor @ 2.50GHz"
    assert (p.physical_cores, p.logical_cores) == (2, 2)
    assert {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= set(
        p.flags
    )
    assert not {"amx_tile", "avx512_bf16", "avx512vbmi"} & set(p.flags)
    assert list(p.flags) == sorted(set(p.flags))


def test_cpuinfo_ivy_bridge_has_avx_but_not_avx2() -> None:
    p = parse_cpuinfo(fixture("cpuinfo_ivybridge_e5-2680v2.txt"))
    assert p.model == "Intel(R) Xeon(R) CPU E5-2680 v2 @ 2.80GHz"
    assert {"avx", "f16c", "sse4_2"} <= set(p.flags)
    assert not {"avx2", "fma", "bmi2"} & set(p.flags)
    # one core with two hyperthreads
    assert (p.physical_cores, p.logical_cores) == (1, 2)


def test_cpuinfo_four_sockets_tab_layout() -> None:
    p = parse_cpuinfo(fixture("cpuinfo_ivybridge_e5-2650v2.txt"))
    assert (p.physical_cores, p.logical_cores) == (4, 4)
    assert "avx" in p.flags and "avx2" not in p.flags


def test_cpuinfo_zen4_epyc() -> None:
    p = parse_cpuinfo(fixture("cpuinfo_epyc9224_zen4.txt"))
    assert p.vendor == "AuthenticAMD"
    assert p.model == "AMD EPYC 9224 24-Core Processor"
    wanted = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512vbmi"}
    assert wanted <= set(p.flags)
    assert "amx_tile" not in p.flags
    assert "bugs" not in p.flags and "spectre_v1" not in p.flags


def test_cpuinfo_graviton3_aarch64() -> None:
    p = parse_cpuinfo(fixture("cpuinfo_graviton3.txt"))
    assert p.vendor == "ARM"
    assert p.model == "ARM Neoverse-V1"
    assert {"asimd", "asimddp", "sve", "i8mm", "bf16", "svei8mm"} <= set(p.flags)
    assert (p.physical_cores, p.logical_cores) == (1, 1)


def test_cpuinfo_aarch64_unknown_part_falls_back() -> None:
    text = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0xc0\nCPU part\t: 0xac3\n"
    p = parse_cpuinfo(text)
    assert p.vendor == "Ampere"
    assert p.model == "Ampere part 0xac3"


def test_cpuinfo_without_avx() -> None:
    nehalem = parse_cpuinfo(fixture("cpuinfo_nehalem_x5570.txt"))
    assert nehalem.model == "Intel(R) Xeon(R) CPU X5570 @ 2.93GHz"
    assert not any(f.startswith("avx") for f in nehalem.flags)
    core2 = parse_cpuinfo(fixture("cpuinfo_core2_t7700_noavx.txt"))
    assert "ssse3" in core2.flags and "avx" not in core2.flags
    # no "physical id"/"core id": every logical CPU counts as a core
    assert (core2.physical_cores, core2.logical_cores) == (1, 1)


def test_meminfo() -> None:
    assert cpu.parse_meminfo("MemTotal:       24684096 kB\nMemFree: 1 kB\n") == 24684096 * 1024
    assert cpu.parse_meminfo("nothing") is None


def test_numa_nodes(tmp_path: Path) -> None:
    for name in ("node0", "node1", "possible", "online"):
        (tmp_path / name).mkdir()
    assert cpu.count_numa_nodes(tmp_path) == 2
    assert cpu.count_numa_nodes(tmp_path / "missing") == 1


# ------------------------------------------------------------------ verify_flags


class FakeRunner:
    """Answers like the isa_exec child would, without starting one."""

    def __init__(
        self,
        xcr0: int | None = XCR0_ALL,
        *,
        amx_permission: str | None = None,
        failing: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        self.xcr0 = xcr0
        self.amx_permission = amx_permission
        self.failing = dict(failing or {})
        self.error = error
        self.executed: list[str] = []
        self.info_calls = 0

    def info(self) -> IsaInfo:
        self.info_calls += 1
        return IsaInfo(self.xcr0, self.amx_permission, self.error)

    def execute(self, families: Sequence[str]) -> Mapping[str, str | None]:
        self.executed += families
        return {f: self.failing.get(f) for f in families}


SPR_LIKE = sorted(
    set(parse_cpuinfo(fixture("cpuinfo_epyc9224_zen4.txt")).flags)
    | {"amx_tile", "amx_int8", "amx_bf16", "avx_vnni", "avx512_fp16"}
)


def test_everything_passes() -> None:
    runner = FakeRunner()
    kept, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    assert kept == tuple(SPR_LIKE)
    assert dropped == {}
    assert {"avx", "avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"} <= set(runner.executed)
    assert "sse2" not in runner.executed


def test_amx_execution_fails_drops_all_amx() -> None:
    runner = FakeRunner(failing={"amx_tile": "the probe process was killed by SIGILL (illegal instruction)"})
    kept, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    assert not any(f.startswith("amx") for f in kept)
    assert "SIGILL" in dropped["amx_tile"]
    assert dropped["amx_int8"] == "requires amx_tile, which was dropped"
    assert dropped["amx_bf16"] == "requires amx_tile, which was dropped"
    assert "avx512f" in kept and "avx2" in kept


def test_amx_permission_refused() -> None:
    why = "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: Operation not supported (errno 95)"
    runner = FakeRunner(amx_permission=why)
    _, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    assert dropped["amx_tile"] == why
    assert {"amx_tile", "amx_int8", "amx_bf16"} <= set(dropped)
    assert not any(f.startswith("amx") for f in runner.executed)


def test_xcr0_without_amx_tile_state() -> None:
    kept, dropped = verify_flags(SPR_LIKE, runner=FakeRunner(XCR0_AVX512_NO_AMX), machine="x86_64")
    assert "AMX tile state" in dropped["amx_tile"] and "0x2ff" in dropped["amx_tile"]
    assert "avx512_bf16" in kept


def test_xcr0_lacking_avx512_state_drops_every_avx512_flag() -> None:
    runner = FakeRunner(XCR0_AVX_ONLY)
    kept, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    avx512 = [f for f in SPR_LIKE if f.startswith("avx512")]
    assert len(avx512) > 8
    for flag in avx512:
        assert flag in dropped and flag not in kept
        assert "XCR0 (0x7)" in dropped[flag]
    assert {"avx", "avx2", "fma", "f16c", "avx_vnni"} <= set(kept)
    # what XCR0 already ruled out is never executed
    assert not any(f.startswith(("avx512", "amx")) for f in runner.executed)


def test_avx_fails_drops_its_dependents() -> None:
    runner = FakeRunner(failing={"avx": "the probe process was killed by SIGILL (illegal instruction)"})
    kept, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    for flag in ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "vaes", "vpclmulqdq"):
        assert flag in dropped, flag
    assert "bmi2" in kept  # VEX-encoded GPR instructions need no YMM state
    assert "amx_tile" in kept  # AMX does not depend on AVX
    assert "sse4_2" in kept


def test_avx2_fails_drops_avx512_and_avx_vnni_but_keeps_avx() -> None:
    kept, dropped = verify_flags(SPR_LIKE, runner=FakeRunner(failing={"avx2": "SIGILL"}), machine="x86_64")
    assert {"avx2", "avx512f", "avx512_vnni", "avx_vnni"} <= set(dropped)
    assert {"avx", "fma", "f16c", "amx_tile"} <= set(kept)


def test_avx512f_fails_drops_all_avx512() -> None:
    kept, dropped = verify_flags(SPR_LIKE, runner=FakeRunner(failing={"avx512f": "boom"}), machine="x86_64")
    assert not any(f.startswith("avx512") for f in kept)
    assert dropped["avx512f"] == "the avx512f test instruction failed: boom"
    assert dropped["avx512_vbmi2"] == "requires avx512f, which was dropped"
    assert "avx2" in kept


def test_xgetbv_faulted_drops_all_vector_state() -> None:
    kept, dropped = verify_flags(SPR_LIKE, runner=FakeRunner(None), machine="x86_64")
    assert not any(f.startswith(("avx", "amx")) for f in kept)
    assert "XGETBV" in dropped["avx"]


def test_mechanism_unavailable_trusts_cpuid() -> None:
    runner = FakeRunner(error="cannot map executable memory")
    kept, dropped = verify_flags(SPR_LIKE, runner=runner, machine="x86_64")
    assert kept == tuple(SPR_LIKE) and dropped == {}
    assert runner.executed == []


def test_non_x86_and_no_vector_flags_skip_verification() -> None:
    runner = FakeRunner()
    graviton = parse_cpuinfo(fixture("cpuinfo_graviton3.txt"))
    assert verify_flags(graviton.flags, runner=runner, machine="aarch64") == (graviton.flags, {})
    nehalem = parse_cpuinfo(fixture("cpuinfo_nehalem_x5570.txt"))
    assert verify_flags(nehalem.flags, runner=runner, machine="x86_64") == (nehalem.flags, {})
    assert runner.info_calls == 0


def test_ivy_bridge_keeps_avx_and_f16c() -> None:
    flags = parse_cpuinfo(fixture("cpuinfo_ivybridge_e5-2680v2.txt")).flags
    runner = FakeRunner(XCR0_AVX_ONLY)
    _, dropped = verify_flags(flags, runner=runner, machine="x86_64")
    assert dropped == {}
    assert sorted(runner.executed) == ["avx", "f16c"]


def test_detect_cpu_records_reported_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: True)
    parsed = cpu.ParsedCpu("GenuineIntel", "test", tuple(SPR_LIKE), 4, 8)
    info = cpu.detect_cpu(parsed=parsed, runner=FakeRunner(failing={"amx_tile": "SIGILL"}))
    assert info.reported_flags == tuple(SPR_LIKE)
    assert info.dropped_flags is not None and set(info.dropped_flags) == {"amx_tile", "amx_int8", "amx_bf16"}
    assert set(info.flags) <= set(info.reported_flags)
    round_trip = HostProfile.from_dict(HostProfile("linux", "x86_64", info, 1).to_dict())
    assert round_trip.cpu == info


def test_child_runner_restarts_after_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def fake_probe(argv: Sequence[str], *, timeout: float = 10) -> run.Completed:
        fams = tuple(a for a in argv[4:])
        calls.append(fams)
        out, rc = [], 0
        for fam in fams:
            out.append(f"start {fam}")
            if fam == "avx512_bf16":
                rc = -4  # SIGILL
                break
            out.append(f"ok {fam}")
        return run.Completed(tuple(argv), rc, "\n".join(out) + "\n", "")

    monkeypatch.setattr(run, "probe", fake_probe)
    results = ChildRunner().execute(["avx", "avx512_bf16", "avx2"])
    assert results["avx"] is None and results["avx2"] is None
    assert results["avx512_bf16"] == "the probe process was killed by SIGILL (illegal instruction)"
    assert calls == [("avx", "avx512_bf16", "avx2"), ("avx2",)]


def test_child_runner_info_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "start base\nok base\namx-perm fail: nope\nstart xcr0\nxcr0 0x00000000000002ff\n"
    monkeypatch.setattr(run, "probe", lambda argv, timeout=10: run.Completed(tuple(argv), 0, text, ""))
    assert ChildRunner().info() == IsaInfo(0x2FF, "nope", None)
    monkeypatch.setattr(run, "probe", lambda argv, timeout=10: None)
    assert ChildRunner().info().error == "the probe process timed out or could not start"


# ------------------------------------------------------------------ NVIDIA


def test_nvidia_smi_with_header_and_units() -> None:
    gpus = nvidia.parse_nvidia_smi_csv(fixture("nvidia_smi_l4_x2.csv"))
    assert [(g.index, g.name, g.arch) for g in gpus] == [(0, "NVIDIA L4", "sm_89"), (1, "NVIDIA L4", "sm_89")]
    assert gpus[0].memory_bytes == 23034 * 1024 * 1024
    assert gpus[0].driver == "570.144"
    a4000 = nvidia.parse_nvidia_smi_csv(fixture("nvidia_smi_rtx_a4000_x4.csv"))
    assert [g.index for g in a4000] == [0, 1, 2, 3] and {g.arch for g in a4000} == {"sm_86"}


def test_nvidia_smi_blackwell_without_index_column() -> None:
    (gpu,) = nvidia.parse_nvidia_smi_csv(fixture("nvidia_smi_rtx5070ti.csv"))
    assert (gpu.index, gpu.name, gpu.arch) == (0, "NVIDIA GeForce RTX 5070 Ti", "sm_120")
    assert gpu.memory_bytes == 16303 * 1024 * 1024


def test_nvidia_smi_noheader_nounits() -> None:
    (gpu,) = nvidia.parse_nvidia_smi_csv(fixture("nvidia_smi_h100_noheader_nounits.csv"))
    assert gpu == GpuInfo("nvidia", 0, "NVIDIA H100 80GB HBM3", "sm_90", 81559 * 1024 * 1024, "535.129.03")


def test_nvidia_smi_real_h200_capture() -> None:
    """Captured on a real H200 (driver 580) by scripts/gpu_validate.py, with detect's own query."""
    (gpu,) = nvidia.parse_nvidia_smi_csv(fixture("nvidia_smi_h200.csv"))
    assert gpu == GpuInfo("nvidia", 0, "NVIDIA H200", "sm_90", 143771 * 1024 * 1024, "580.159.04")


def test_nvidia_legacy_driver_maps_names() -> None:
    text = fixture("nvidia_smi_legacy_no_compute_cap.csv")
    gpus = nvidia.parse_nvidia_smi_csv(text, ("index", "name", "memory.total", "driver_version"))
    assert [g.arch for g in gpus] == ["sm_70", "sm_75"]


@pytest.mark.parametrize(
    ("cap", "arch"), [("12.0", "sm_120"), ("9.0", "sm_90"), ("8.6", "sm_86"), ("10.0", "sm_100"), ("x", None)]
)
def test_compute_cap(cap: str, arch: str | None) -> None:
    assert nvidia.arch_from_compute_cap(cap) == arch


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("NVIDIA H100 80GB HBM3", "sm_90"),
        ("NVIDIA A100-SXM4-80GB", "sm_80"),
        ("NVIDIA GeForce RTX 4090", "sm_89"),
        ("NVIDIA GeForce RTX 3090", "sm_86"),
        ("NVIDIA GeForce RTX 5090", "sm_120"),
        ("Tesla V100-SXM2-16GB", "sm_70"),
        ("Tesla T4", "sm_75"),
        ("NVIDIA L40S", "sm_89"),
        ("NVIDIA A10", "sm_86"),
        ("NVIDIA RTX A4000", "sm_86"),
        ("Some Future GPU", None),
    ],
)
def test_arch_from_name(name: str, arch: str | None) -> None:
    assert nvidia.arch_from_name(name) == arch


def test_nvcc_version() -> None:
    assert nvidia.parse_nvcc_version(fixture("nvcc_version_13.0.txt")) == "13.0"
    assert nvidia.parse_nvcc_version(fixture("nvcc_version_12.0_line.txt")) == "12.0"
    assert nvidia.parse_nvcc_version("Cuda compilation tools, release 12.8, V12.8.93") == "12.8"
    assert nvidia.parse_nvcc_version("bash: nvcc: command not found") is None


def test_detect_nvidia_falls_back_for_old_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = fixture("nvidia_smi_legacy_no_compute_cap.csv")

    def fake_probe(argv: Sequence[str], *, timeout: float = 10) -> run.Completed:
        if "compute_cap" in argv[1]:
            return run.Completed(tuple(argv), 2, 'Field "compute_cap" is not a valid field to query.\n', "")
        return run.Completed(tuple(argv), 0, legacy, "")

    monkeypatch.setattr(nvidia, "_from_nvml", lambda: None)
    monkeypatch.setattr(run, "probe", fake_probe)
    assert [g.arch for g in nvidia.detect_nvidia_gpus()] == ["sm_70", "sm_75"]
    monkeypatch.setattr(run, "probe", lambda argv, timeout=10: None)
    assert nvidia.detect_nvidia_gpus() == []


# ------------------------------------------------------------------ AMD


def test_rocminfo_mi300x() -> None:
    text = fixture("rocminfo_mi300x.txt")
    agents = amd.parse_rocminfo(text)
    assert [a.device_type for a in agents] == ["CPU", "GPU", "GPU"]
    gpus = amd.gpus_from_rocminfo(text)
    assert [(g.vendor, g.index, g.arch, g.name) for g in gpus] == [
        ("amd", 0, "gfx942", "AMD Instinct MI300X"),
        ("amd", 1, "gfx942", "AMD Instinct MI300X"),
    ]
    assert gpus[0].memory_bytes == 201310208 * 1024  # 192 GiB, from the first GLOBAL pool


def test_rocm_versions_and_smi() -> None:
    assert amd.parse_rocm_version("6.2.41133-dd7f95766") == "6.2"
    assert amd.parse_rocm_version("6.2.0-66\n") == "6.2"
    assert amd.parse_rocm_version("") is None
    smi = (
        '{"card1": {"VRAM Total Memory (B)": "68702699520"},'
        ' "card0": {"VRAM Total Memory (B)": "25753026560"}}'
    )
    assert amd.parse_rocm_smi_vram(smi) == [25753026560, 68702699520]
    assert amd.parse_rocm_smi_vram("not json") == []


# ------------------------------------------------------------------ Vulkan


def test_vulkan_intel_arc_and_llvmpipe() -> None:
    devices = vulkan.parse_vulkaninfo(fixture("vulkaninfo_summary_arc_a770_constructed.txt"))
    assert [d.device_type for d in devices] == ["DISCRETE_GPU", "CPU"]
    (gpu,) = vulkan.gpus_from_vulkan(devices)
    assert (gpu.vendor, gpu.arch, gpu.name) == ("intel", "intel", "Intel(R) Arc(tm) A770 Graphics (DG2)")


def test_vulkan_real_captures() -> None:
    mixed = vulkan.gpus_from_vulkan(vulkan.parse_vulkaninfo(fixture("vulkaninfo_summary_hd530_r9380.txt")))
    assert [(g.vendor, g.index) for g in mixed] == [("intel", 0), ("amd", 1)]
    rx = vulkan.parse_vulkaninfo(fixture("vulkaninfo_summary_rx6600xt.txt"))
    assert rx[0].api_version == "1.3.260" and rx[0].vendor_id == 0x1002
    only_cpu = vulkan.parse_vulkaninfo(fixture("vulkaninfo_full_llvmpipe_only.txt"))
    assert only_cpu[0].api_version == "1.0.2"
    assert vulkan.gpus_from_vulkan(only_cpu) == []


def test_vulkan_radv_arch_and_headers() -> None:
    dev = vulkan.VulkanDevice(0, "AMD Radeon RX 7900 XTX (RADV NAVI31)", "DISCRETE_GPU", 0x1002, "1.3.0")
    assert vulkan.gpus_from_vulkan([dev])[0].arch == "gfx1100"
    dev = vulkan.VulkanDevice(0, "AMD Radeon Graphics (RADV GFX1201)", "DISCRETE_GPU", 0x1002, "1.4.0")
    assert vulkan.gpus_from_vulkan([dev])[0].arch == "gfx1201"
    header = "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)\n"
    assert vulkan.parse_vulkan_header_version(header) == "1.3"
    assert vulkan.parse_vulkan_header_version("#define VK_HEADER_VERSION 275") is None


# ------------------------------------------------------------------ Apple


def test_apple_m3_sysctl() -> None:
    values = apple.parse_sysctl(fixture("sysctl_apple_m3.txt") + "hw.memsize: 17179869184\n")
    host = apple.apple_host_from_sysctl(values)
    assert host.brand == "Apple M3"
    assert host.gpu is not None
    # Unified memory: the GPU is reported with Metal's working set, 2/3 of 16 GiB (hardware/apple.py).
    assert (host.gpu.vendor, host.gpu.arch) == ("apple", "apple-m3")
    assert host.gpu.memory_bytes == 17179869184 * 2 // 3
    assert {"asimd", "asimddp", "i8mm", "bf16", "fphp", "crc32"} <= set(host.flags)
    assert "sme" not in host.flags


@pytest.mark.parametrize(
    ("brand", "family"),
    [
        ("Apple M2 Pro", "apple-m2"),
        ("Apple M1 Max", "apple-m1"),
        ("Apple M4", "apple-m4"),
        ("Intel(R) Core(TM) i9", None),
    ],
)
def test_apple_chip_family(brand: str, family: str | None) -> None:
    assert apple.chip_family(brand) == family


def test_normalize_arch() -> None:
    assert normalize_arch("x86_64", "Linux") == "x86_64"
    assert normalize_arch("AMD64", "Linux") == "x86_64"
    assert normalize_arch("aarch64", "Linux") == "aarch64"
    assert normalize_arch("arm64", "Darwin") == "arm64"


def test_cpuinfo_type_is_the_contract() -> None:
    info = CpuInfo("v", "m", ("avx",), 1, 1)
    assert info.has("avx")
