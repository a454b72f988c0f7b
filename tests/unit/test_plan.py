"""plan_build: golden plans for real hardware profiles, the plan contract, and the planning rules.

Regenerate the goldens after an intended change with:
    NATIVELLM_UPDATE_GOLDEN=1 PYTHONPATH=src python -m pytest tests/unit/test_plan.py -q
and review the diff of tests/fixtures/plans/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from nativellm.build.plan import (
    FALLBACK_ORDER,
    SCHEMA,
    Backend,
    BuildPlan,
    PlanOptions,
    next_fallback,
    plan_build,
)
from nativellm.errors import PlanError, UsageError
from nativellm.hardware.profile import GpuInfo, HostProfile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROFILES = sorted((FIXTURES / "profiles").glob("*.json"))
PLANS = FIXTURES / "plans"
UPDATE = os.environ.get("NATIVELLM_UPDATE_GOLDEN") == "1"

X86_ISA = (
    "GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX_VNNI",
    "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
    "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16",
)  # fmt: skip
AVX512_AND_AMX = tuple(d for d in X86_ISA if d.startswith(("GGML_AVX512", "GGML_AMX")))
AMX = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
OPTION_SETS = {
    "default": PlanOptions(),
    "portable": PlanOptions(portable=True),
    "native": PlanOptions(native=True),
    "baseline": PlanOptions(baseline=True),
    "rpc": PlanOptions(rpc=True),
    "cpu": PlanOptions(backend=Backend.CPU),
    "single-binary": PlanOptions(single_binary=True),
    "disable-all": PlanOptions(disable=frozenset({"amx", "avx512", "sve", "i8mm"})),
    "no-ui": PlanOptions(ui=False),
}


def load(name: str) -> HostProfile:
    return HostProfile.from_dict(json.loads((FIXTURES / "profiles" / f"{name}.json").read_text()))


def with_flags(profile: HostProfile, add: str = "", drop: str = "") -> HostProfile:
    flags = (set(profile.cpu.flags) | set(add.split())) - set(drop.split())
    return dataclasses.replace(profile, cpu=dataclasses.replace(profile.cpu, flags=tuple(sorted(flags))))


def with_toolkits(profile: HostProfile, **toolkits: object) -> HostProfile:
    return dataclasses.replace(profile, toolkits=dataclasses.replace(profile.toolkits, **toolkits))  # type: ignore[arg-type]


def nvidia(arch: str, name: str = "NVIDIA Test GPU", index: int = 0) -> GpuInfo:
    return GpuInfo("nvidia", index, name, arch, 24 << 30)


def refused(profile: HostProfile, options: PlanOptions | None = None) -> PlanError:
    with pytest.raises(PlanError) as info:
        plan_build(profile, options or PlanOptions())
    assert info.value.exit_code == 4
    assert info.value.hint, "a refusal must carry a hint"
    return info.value


# --- goldens -------------------------------------------------------------------------------------


def test_fixture_set_is_complete() -> None:
    names = {p.stem for p in PROFILES}
    assert len(names) >= 12
    for required in ("ivybridge-avx-only-xeon", "nehalem-no-avx", "zen4-epyc", "sapphire-rapids",
                     "rtx5090-cuda128", "blackwell-cuda124", "2x-h100", "mixed-3090-4090", "apple-m2",
                     "mi300x", "graviton3", "intel-arc-vulkan", "v100-cuda13", "this-dev-vm"):  # fmt: skip
        assert required in names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_golden_plan(path: Path) -> None:
    profile = HostProfile.from_dict(json.loads(path.read_text()))
    golden, golden_error = PLANS / f"{path.stem}.json", PLANS / f"{path.stem}.error.txt"
    try:
        plan, error = plan_build(profile), None
    except PlanError as exc:
        plan, error = None, exc
    if UPDATE:
        PLANS.mkdir(parents=True, exist_ok=True)
        golden.unlink(missing_ok=True)
        golden_error.unlink(missing_ok=True)
        if plan is not None:
            golden.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
        else:
            assert error is not None
            golden_error.write_text(error.message + "\n")
    assert golden.exists() != golden_error.exists(), f"need exactly one golden for {path.stem}"
    if golden_error.exists():
        assert plan is None, f"{path.stem} should be refused"
        assert error is not None and golden_error.read_text().strip() in error.message
    else:
        assert error is None, f"{path.stem} was refused: {error}"
        assert plan is not None and plan.to_dict() == json.loads(golden.read_text())


def test_no_orphan_goldens() -> None:
    stems = {p.stem for p in PROFILES}
    for golden in PLANS.iterdir():
        assert golden.name.removesuffix(".json").removesuffix(".error.txt") in stems, golden.name


# --- the contract, for every profile and option set -------------------------------------------


def all_plans() -> list[tuple[str, BuildPlan]]:
    out = []
    for path in PROFILES:
        profile = HostProfile.from_dict(json.loads(path.read_text()))
        for opt_name, options in OPTION_SETS.items():
            try:
                out.append((f"{path.stem}/{opt_name}", plan_build(profile, options)))
            except PlanError:
                pass
    return out


@pytest.mark.parametrize(("name", "plan"), all_plans(), ids=lambda v: v if isinstance(v, str) else "")
def test_plan_contract(name: str, plan: BuildPlan) -> None:
    d = plan.to_dict()
    assert list(d) == ["schema", "backend", "cmake_defines", "reasons", "targets", "warnings"]
    assert d["schema"] == SCHEMA == "nativellm.plan/1"
    assert d["backend"] in {"cpu", "cuda", "hip", "vulkan", "metal", "sycl"}
    assert list(d["cmake_defines"]) == sorted(d["cmake_defines"])
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in d["cmake_defines"].items())
    assert set(d["reasons"]) == set(d["cmake_defines"]), "every define needs a reason"
    assert all(isinstance(r, str) and r for r in d["reasons"].values())
    assert d["cmake_defines"]["GGML_NATIVE"] in ("ON", "OFF")
    for key in ("LLAMA_USE_PREBUILT_UI", "LLAMA_OPENSSL"):
        assert d["cmake_defines"][key] == "OFF"
    # The web UI is on unless --no-ui: built with npm by nativellm, never downloaded by CMake.
    assert d["cmake_defines"]["LLAMA_BUILD_UI"] == ("OFF" if name.endswith("/no-ui") else "ON")
    assert d["cmake_defines"]["CMAKE_BUILD_TYPE"] == "Release"
    assert d["targets"][:3] == ["llama-server", "llama-bench", "llama-quantize"]
    assert all(isinstance(w, str) for w in d["warnings"])
    assert BuildPlan.from_dict(json.loads(json.dumps(d))) == plan
    if plan.backend is not Backend.CPU:
        assert plan.cmake_defines[plan.backend.cmake_option or ""] == "ON"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_same_profile_same_plan(path: Path) -> None:
    data = json.loads(path.read_text())
    try:
        first = plan_build(HostProfile.from_dict(data)).to_dict()
    except PlanError as exc:
        assert refused(HostProfile.from_dict(data)).message == exc.message
        return
    data["cpu"]["flags"] = list(reversed(data["cpu"]["flags"]))
    assert plan_build(HostProfile.from_dict(data)).to_dict() == first
    assert json.dumps(first) == json.dumps(plan_build(HostProfile.from_dict(data)).to_dict())


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_backend_cpu_always_works(path: Path) -> None:
    plan = plan_build(HostProfile.from_dict(json.loads(path.read_text())), PlanOptions(backend=Backend.CPU))
    assert plan.backend is Backend.CPU
    assert not any(k in plan.cmake_defines for k in ("GGML_CUDA", "GGML_HIP", "GGML_VULKAN", "GGML_SYCL"))


# --- x86 instruction sets ------------------------------------------------------------------------


def test_every_x86_isa_define_is_explicit() -> None:
    for name in ("ivybridge-avx-only-xeon", "zen4-epyc", "sapphire-rapids", "2x-h100", "this-dev-vm"):
        plan = plan_build(load(name))
        assert plan.cmake_defines["GGML_NATIVE"] == "OFF"
        for define in X86_ISA:
            assert plan.cmake_defines[define] in ("ON", "OFF"), (name, define)


def test_nehalem_gets_only_sse42() -> None:
    plan = plan_build(load("nehalem-no-avx"))
    assert [d for d in X86_ISA if plan.cmake_defines[d] == "ON"] == ["GGML_SSE42"]
    assert plan.reasons["GGML_AVX"] == "CPU lacks avx"
    assert plan.features() == {"sse42"}


def test_ivybridge_has_avx_but_not_avx2() -> None:
    plan = plan_build(load("ivybridge-avx-only-xeon"))
    assert plan.features() == {"sse42", "avx", "f16c"}
    assert plan.cmake_defines["GGML_AVX2"] == "OFF"
    assert plan.reasons["GGML_AVX2"] == "CPU lacks avx2"
    assert plan.reasons["GGML_AVX"] == "avx verified on this CPU"


def test_zen4_gets_avx512_extensions_but_no_amx() -> None:
    plan = plan_build(load("zen4-epyc"))
    assert plan.features() >= {"avx512", "avx512_vbmi", "avx512_vnni", "avx512_bf16"}
    assert "amx" not in plan.features() and "avx_vnni" not in plan.features()
    assert plan.reasons["GGML_AVX512_VNNI"] == "avx512_vnni verified on this CPU"


def test_sapphire_rapids_gets_amx_with_a_warning() -> None:
    plan = plan_build(load("sapphire-rapids"))
    assert all(plan.cmake_defines[d] == "ON" for d in X86_ISA)
    assert any("AMX" in w and "smoke test" in w for w in plan.warnings)


def test_avx512_needs_all_five_subsets_ggml_compiles_with() -> None:
    plan = plan_build(with_flags(load("zen4-epyc"), drop="avx512bw"))
    assert plan.reasons["GGML_AVX512"] == "CPU lacks avx512bw"
    assert plan.cmake_defines["GGML_AVX512_VNNI"] == "OFF"
    assert "avx512" in plan.reasons["GGML_AVX512_VNNI"]
    assert not plan.features() & {"avx512", "avx512_vbmi", "avx512_vnni", "avx512_bf16"}


def test_amx_needs_avx512_vnni() -> None:
    plan = plan_build(with_flags(load("sapphire-rapids"), drop="avx512_vnni"))
    assert all(plan.cmake_defines[d] == "OFF" for d in AMX)
    assert "avx512_vnni" in plan.reasons["GGML_AMX_INT8"]
    no_avx512 = plan_build(with_flags(load("sapphire-rapids"), drop="avx512f"))
    assert all(no_avx512.cmake_defines[d] == "OFF" for d in AVX512_AND_AMX)
    assert no_avx512.cmake_defines["GGML_AVX_VNNI"] == "ON"


def test_amx_int8_needs_the_tile_flag_too() -> None:
    plan = plan_build(with_flags(load("sapphire-rapids"), drop="amx_tile"))
    assert all(plan.cmake_defines[d] == "OFF" for d in AMX)
    assert plan.reasons["GGML_AMX_INT8"] == "CPU lacks amx_tile"


def test_flags_the_os_does_not_enable_are_explained() -> None:
    plan = plan_build(load("sapphire-rapids-vm-amx-dropped"))
    assert "amx" not in plan.features()
    assert "not usable: XCR0 lacks the AMX tile state" in plan.reasons["GGML_AMX_TILE"]


# --- disable and fallback ------------------------------------------------------------------------


def test_tune_follows_the_microarchitecture_the_flags_identify() -> None:
    cpu = PlanOptions(backend=Backend.CPU)
    tunes = {name: plan_build(load(name), cpu).cmake_defines.get("NATIVELLM_CPU_TUNE") for name in (
        "this-dev-vm", "sapphire-rapids", "sapphire-rapids-vm-amx-dropped", "2x-h100", "blackwell-cuda124",
        "intel-arc-vulkan", "ivybridge-avx-only-xeon", "nehalem-no-avx", "zen4-epyc", "rtx5090-cuda128",
        "mixed-3090-4090", "graviton3", "apple-m2",
    )}  # fmt: skip
    skx = with_flags(load("this-dev-vm"), drop="avx512_vnni")
    skx = dataclasses.replace(skx, cpu=dataclasses.replace(skx.cpu, reported_flags=None))
    assert plan_build(skx).cmake_defines["NATIVELLM_CPU_TUNE"] == "skylake-avx512"
    assert tunes == {
        "this-dev-vm": "cascadelake",  # AVX-512 + VNNI, no BF16: what gcc -march=native says here
        "sapphire-rapids": "sapphirerapids,icelake-server",
        "sapphire-rapids-vm-amx-dropped": "sapphirerapids,icelake-server",  # AMX unusable, still the same core
        "2x-h100": "icelake-server",
        "blackwell-cuda124": "alderlake,skylake",
        "intel-arc-vulkan": "alderlake,skylake",
        "ivybridge-avx-only-xeon": "sandybridge",
        "nehalem-no-avx": "nehalem",
        "zen4-epyc": "znver4,znver3",  # GCC 12 lacks znver4: the build falls back to znver3
        "rtx5090-cuda128": "znver5,znver4,znver3",
        "mixed-3090-4090": "znver3,znver2",
        "graviton3": None,  # aarch64: GGML_CPU_ARM_ARCH is the whole story
        "apple-m2": None,
    }
    reason = plan_build(load("zen4-epyc")).reasons["NATIVELLM_CPU_TUNE"]
    assert "znver4" in reason and "znver3 if the compiler lacks it" in reason and "instruction set" in reason


def test_tune_never_changes_the_instruction_set() -> None:
    """Tuning is the only difference from an untuned plan; modes that are not per-CPU are not tuned."""
    profile = load("this-dev-vm")
    tuned = plan_build(profile).cmake_defines
    unknown = dataclasses.replace(profile, cpu=dataclasses.replace(profile.cpu, vendor="HygonGenuine"))
    untuned = plan_build(unknown).cmake_defines
    assert {k: v for k, v in tuned.items() if k != "NATIVELLM_CPU_TUNE"} == untuned
    for options in (PlanOptions(portable=True), PlanOptions(native=True), PlanOptions(baseline=True)):
        assert "NATIVELLM_CPU_TUNE" not in plan_build(profile, options).cmake_defines, options
    # Leaving AVX-512 out keeps the tuning: it describes the CPU, not the code.
    no512 = plan_build(
        profile, PlanOptions(disable=frozenset({"avx512"}), disable_reasons=(("avx512", "t"),))
    )
    assert no512.cmake_defines["NATIVELLM_CPU_TUNE"] == "cascadelake"


def test_disable_amx_keeps_avx512() -> None:
    options = PlanOptions(disable=frozenset({"amx"}), disable_reasons=(("amx", "SIGILL in tileloadd"),))
    plan = plan_build(load("sapphire-rapids"), options)
    for define in AMX:
        assert plan.cmake_defines[define] == "OFF"
        assert plan.reasons[define] == "disabled: SIGILL in tileloadd"
    assert "amx" not in plan.features() and "avx512" in plan.features()
    assert not any("AMX is on" in w for w in plan.warnings)


def test_disable_avx512_also_removes_its_extensions_and_amx() -> None:
    options = PlanOptions(disable=frozenset({"avx512"}), disable_reasons=(("avx512", "smoke test crashed"),))
    plan = plan_build(load("sapphire-rapids"), options)
    for define in AVX512_AND_AMX:
        assert plan.cmake_defines[define] == "OFF"
        assert plan.reasons[define].startswith("disabled: smoke test crashed")
    assert plan.cmake_defines["GGML_AVX2"] == plan.cmake_defines["GGML_AVX_VNNI"] == "ON"


def test_disable_without_reason_and_reason_without_disable() -> None:
    plan = plan_build(load("sapphire-rapids"), PlanOptions(disable=frozenset({"amx"})))
    assert plan.reasons["GGML_AMX_TILE"] == "disabled: requested"
    by_reason = plan_build(load("sapphire-rapids"), PlanOptions(disable_reasons=(("amx", "crashed"),)))
    assert by_reason.reasons["GGML_AMX_TILE"] == "disabled: crashed"


def test_unknown_family_is_refused() -> None:
    err = refused(load("zen4-epyc"), PlanOptions(disable=frozenset({"avx-512"})))
    assert "avx-512" in err.message and "avx512" in err.hint


def test_next_fallback_order() -> None:
    assert FALLBACK_ORDER == ("amx", "avx512")
    spr = plan_build(load("sapphire-rapids"))
    assert next_fallback(spr, frozenset()) == "amx"
    assert next_fallback(spr, frozenset({"amx"})) == "avx512"
    assert next_fallback(spr, frozenset({"amx", "avx512"})) is None
    assert next_fallback(plan_build(load("zen4-epyc")), frozenset()) == "avx512"
    assert next_fallback(plan_build(load("ivybridge-avx-only-xeon")), frozenset()) is None
    assert next_fallback(plan_build(load("graviton3")), frozenset()) is None


def test_fallback_loop_terminates_with_a_plan_that_has_neither() -> None:
    disabled: dict[str, str] = {}
    plan = plan_build(load("sapphire-rapids"))
    while (family := next_fallback(plan, frozenset(disabled))) is not None:
        disabled[family] = "crashed"
        plan = plan_build(
            load("sapphire-rapids"), PlanOptions(disable_reasons=tuple(sorted(disabled.items())))
        )
    assert list(disabled) == ["amx", "avx512"]
    assert plan.features() == {"sse42", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni"}


# --- modes ---------------------------------------------------------------------------------------


def test_portable() -> None:
    plan = plan_build(load("sapphire-rapids"), PlanOptions(portable=True))
    assert plan.cmake_defines["GGML_BACKEND_DL"] == plan.cmake_defines["GGML_CPU_ALL_VARIANTS"] == "ON"
    assert plan.cmake_defines["GGML_NATIVE"] == "OFF"
    assert not set(X86_ISA) & set(plan.cmake_defines)
    assert plan.reasons["GGML_CPU_ALL_VARIANTS"].startswith("fleet build: runs on any x86-64")
    assert plan.features() == frozenset()
    arm = plan_build(load("graviton3"), PlanOptions(portable=True))
    assert "GGML_CPU_ARM_ARCH" not in arm.cmake_defines  # ggml refuses it together with ALL_VARIANTS
    assert arm.cmake_defines["GGML_CPU_ALL_VARIANTS"] == "ON"


def test_portable_cannot_drop_a_family_and_says_what_to_remove() -> None:
    plan = plan_build(load("sapphire-rapids"), PlanOptions(portable=True, disable=frozenset({"amx"})))
    assert any("ggml-cpu-sapphirerapids" in w for w in plan.warnings)


def test_portable_cuda_adds_forward_compatible_ptx() -> None:
    cases = {"rtx5090-cuda128": "120a-real;90-virtual", "2x-h100": "90-real;90-virtual",
             "mixed-3090-4090": "86-real;89-real;89-virtual"}  # fmt: skip
    for name, archs in cases.items():
        plan = plan_build(load(name), PlanOptions(portable=True))
        assert plan.cmake_defines["CMAKE_CUDA_ARCHITECTURES"] == archs


def test_native() -> None:
    plan = plan_build(load("zen4-epyc"), PlanOptions(native=True))
    assert plan.cmake_defines["GGML_NATIVE"] == "ON"
    assert not set(X86_ISA) & set(plan.cmake_defines)
    assert "GGML_CPU_ARM_ARCH" not in plan_build(load("graviton3"), PlanOptions(native=True)).cmake_defines
    err = refused(load("sapphire-rapids"), PlanOptions(native=True, disable=frozenset({"amx"})))
    assert "--native" in err.message


def test_baseline_is_the_generic_avx2_build() -> None:
    plan = plan_build(load("zen4-epyc"), PlanOptions(baseline=True))
    assert plan.cmake_defines["GGML_NATIVE"] == "OFF"
    on = [d for d in X86_ISA if plan.cmake_defines[d] == "ON"]
    assert on == ["GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"]
    assert plan.reasons["GGML_AVX512"] == "--baseline: nothing above AVX2"
    old = plan_build(load("ivybridge-avx-only-xeon"), PlanOptions(baseline=True))
    assert any("avx2" in w and "will not run here" in w for w in old.warnings)
    arm = plan_build(load("graviton3"), PlanOptions(baseline=True))
    assert arm.cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8-a"


def test_modes_exclude_each_other() -> None:
    refused(load("zen4-epyc"), PlanOptions(portable=True, native=True))
    refused(load("zen4-epyc"), PlanOptions(baseline=True, native=True))


def test_build_type_and_rpc() -> None:
    plan = plan_build(load("zen4-epyc"), PlanOptions(rpc=True, build_type="RelWithDebInfo"))
    assert plan.cmake_defines["CMAKE_BUILD_TYPE"] == "RelWithDebInfo"
    assert plan.cmake_defines["GGML_RPC"] == "ON"
    assert plan.targets == ("llama-server", "llama-bench", "llama-quantize", "rpc-server")
    refused(load("zen4-epyc"), PlanOptions(build_type="Fast"))


# --- --single-binary ------------------------------------------------------------------------------

SINGLE = {
    "BUILD_SHARED_LIBS": "OFF",
    "GGML_BACKEND_DL": "OFF",
    "GGML_OPENMP": "OFF",
    "CMAKE_EXE_LINKER_FLAGS": "-static-libstdc++ -static-libgcc",
}


def test_single_binary_links_statically_and_keeps_the_cpu_plan() -> None:
    xeon = load("ivybridge-avx-only-xeon")
    shared, single = plan_build(xeon), plan_build(xeon, PlanOptions(single_binary=True))
    assert {k: single.cmake_defines[k] for k in SINGLE} == SINGLE
    assert shared.cmake_defines["BUILD_SHARED_LIBS"] == "ON" and "GGML_OPENMP" not in shared.cmake_defines
    assert (
        "libgomp" in single.reasons["GGML_OPENMP"]
        and "only glibc" in single.reasons["CMAKE_EXE_LINKER_FLAGS"]
    )
    # Everything else, the instruction set above all, is the plan the host would get anyway.
    rest = {k: v for k, v in single.cmake_defines.items() if k not in SINGLE}
    assert rest == {k: v for k, v in shared.cmake_defines.items() if k not in SINGLE}
    assert single.features() == {"sse42", "avx", "f16c"} and single.targets == shared.targets
    assert (single.single_binary, shared.single_binary) == (True, False)
    assert BuildPlan.from_dict(single.to_dict()).single_binary


def test_single_binary_on_a_gpu_host_is_a_cpu_build() -> None:
    plan = plan_build(load("2x-h100"), PlanOptions(single_binary=True))
    assert plan.backend is Backend.CPU and "GGML_CUDA" not in plan.cmake_defines
    assert plan_build(load("2x-h100"), PlanOptions(single_binary=True, backend=Backend.CPU)) == plan


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (PlanOptions(single_binary=True, portable=True), "--single-binary and --portable exclude each other",
         "drop --portable"),
        (PlanOptions(single_binary=True, backend=Backend.CUDA), "--single-binary builds the CPU backend only, "
         "not cuda", "use --backend cpu"),
        (PlanOptions(single_binary=True, backend=Backend.VULKAN), "not vulkan", "drop --single-binary"),
    ],
)  # fmt: skip
def test_single_binary_refuses_shared_module_and_gpu_builds(
    options: PlanOptions, message: str, hint: str
) -> None:
    with pytest.raises(UsageError) as info:
        plan_build(load("2x-h100"), options)
    assert info.value.exit_code == 2
    assert message in info.value.message and hint in info.value.hint


def test_single_binary_needs_linux() -> None:
    error = refused(load("apple-m2"), PlanOptions(single_binary=True, backend=Backend.CPU))
    assert "--single-binary needs Linux, not darwin" in error.message


# --- aarch64 and Apple ---------------------------------------------------------------------------


def test_graviton3_arm_arch() -> None:
    plan = plan_build(load("graviton3"))
    assert plan.cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8.6-a+dotprod+fp16+sve+i8mm+bf16"
    assert "CPU lacks sve2" in plan.reasons["GGML_CPU_ARM_ARCH"]
    assert plan.features() == {"dotprod", "fp16", "sve", "i8mm", "bf16"}
    no_sve = plan_build(load("graviton3"), PlanOptions(disable_reasons=(("sve", "crashed"),)))
    assert no_sve.cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8.6-a+dotprod+fp16+i8mm+bf16"
    assert "sve disabled: crashed" in no_sve.reasons["GGML_CPU_ARM_ARCH"]


def test_arm_base_version_follows_the_features() -> None:
    neoverse_n1 = with_flags(load("graviton3"), drop="sve i8mm bf16 svei8mm svebf16")
    assert plan_build(neoverse_n1).cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8.2-a+dotprod+fp16"
    a72 = with_flags(load("graviton3"), drop="sve i8mm bf16 asimddp fphp asimdhp")
    assert plan_build(a72).cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8-a"


def test_apple_metal() -> None:
    plan = plan_build(load("apple-m2"))
    assert plan.backend is Backend.METAL
    assert plan.cmake_defines["GGML_METAL"] == plan.cmake_defines["GGML_METAL_EMBED_LIBRARY"] == "ON"
    assert plan.cmake_defines["GGML_CPU_ARM_ARCH"] == "armv8.6-a+dotprod+fp16+i8mm+bf16"
    assert "MLX fallback is not implemented yet; use mlx-lm for models llama.cpp cannot run" in plan.warnings
    cpu = plan_build(load("apple-m2"), PlanOptions(backend=Backend.CPU))
    assert cpu.cmake_defines["GGML_METAL"] == "OFF"  # ggml turns Metal on by default on Apple


# --- GPU backends --------------------------------------------------------------------------------


def test_cuda_archs_are_exactly_the_gpus_present() -> None:
    expected = {"rtx5090-cuda128": "120a-real", "2x-h100": "90-real", "mixed-3090-4090": "86-real;89-real"}
    for name, archs in expected.items():
        plan = plan_build(load(name))
        assert plan.backend is Backend.CUDA
        assert plan.cmake_defines["CMAKE_CUDA_ARCHITECTURES"] == archs
        assert plan.cmake_defines["GGML_CUDA_FA_QUANTS"] == "q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16"
        assert plan.cmake_defines["GGML_AVX2"] == "ON", "the CPU backend still runs in CUDA builds"
    reason = plan_build(load("rtx5090-cuda128")).reasons["GGML_CUDA"]
    assert reason == "GPU 0 NVIDIA GeForce RTX 5090 is sm_120 and CUDA 12.8 is installed"


def test_gpu_order_does_not_change_the_build() -> None:
    profile = load("mixed-3090-4090")
    flipped = dataclasses.replace(profile, gpus=tuple(reversed(profile.gpus)))
    assert plan_build(flipped).cmake_defines == plan_build(profile).cmake_defines


def test_blackwell_with_old_cuda_is_refused_with_the_fix() -> None:
    err = refused(load("blackwell-cuda124"))
    assert err.message == (
        "GPU 0 NVIDIA GeForce RTX 5090 is sm_120, which needs CUDA 12.8 or newer; CUDA 12.4 is installed. "
        "Upgrade to CUDA 12.8 or newer, or build with --backend cpu"
    )


def test_sm121_needs_cuda_12_9() -> None:
    spark = dataclasses.replace(load("graviton3"), gpus=(nvidia("sm_121", "NVIDIA GB10"),))
    assert "CUDA 12.9 or newer" in refused(with_toolkits(spark, cuda="12.8")).message
    plan = plan_build(with_toolkits(spark, cuda="12.9"))
    assert plan.cmake_defines["CMAKE_CUDA_ARCHITECTURES"] == "121a-real"


def test_cuda13_refuses_volta() -> None:
    err = refused(load("v100-cuda13"))
    assert "no longer compiles for sm_70" in err.message and "Tesla V100" in err.message
    assert err.message.endswith("install CUDA 12.x or build with --backend cpu")
    ok = plan_build(with_toolkits(load("v100-cuda13"), cuda="12.9"))
    assert ok.cmake_defines["CMAKE_CUDA_ARCHITECTURES"] == "70-real"


def test_unknown_nvidia_arch_is_refused() -> None:
    profile = with_toolkits(dataclasses.replace(load("zen4-epyc"), gpus=(nvidia("unknown"),)), cuda="12.8")
    assert "nvidia-smi" in refused(profile).message
    future = with_toolkits(dataclasses.replace(load("zen4-epyc"), gpus=(nvidia("sm_140"),)), cuda="14.0")
    assert "--backend cpu" in refused(future).message


def test_explicit_cuda_without_gpu_or_toolkit() -> None:
    err = refused(load("zen4-epyc"), PlanOptions(backend=Backend.CUDA))
    assert "NVIDIA GPU" in err.message and "--backend cpu" in err.message
    no_toolkit = with_toolkits(load("rtx5090-cuda128"), cuda=None)
    err = refused(no_toolkit, PlanOptions(backend=Backend.CUDA))
    assert "install the CUDA toolkit (nvcc) or build with --backend cpu" in err.message


def test_auto_without_cuda_toolkit_falls_back_and_says_so() -> None:
    no_toolkit = with_toolkits(load("rtx5090-cuda128"), cuda=None)
    plan = plan_build(no_toolkit)
    assert plan.backend is Backend.CPU
    assert any("no CUDA toolkit" in w for w in plan.warnings)
    assert plan_build(with_toolkits(no_toolkit, vulkan="1.3")).backend is Backend.VULKAN


def test_hip() -> None:
    plan = plan_build(load("mi300x"))
    assert plan.backend is Backend.HIP
    assert plan.cmake_defines["GPU_TARGETS"] == "gfx942"
    assert "AMDGPU_TARGETS" not in plan.cmake_defines
    assert "6.1" in refused(with_toolkits(load("mi300x"), rocm="5.7")).message
    err = refused(with_toolkits(load("mi300x"), rocm=None), PlanOptions(backend=Backend.HIP))
    assert "install ROCm 6.1 or newer" in err.message
    assert "AMD GPU" in refused(load("rtx5090-cuda128"), PlanOptions(backend=Backend.HIP)).message


def test_vulkan() -> None:
    plan = plan_build(load("intel-arc-vulkan"))
    assert plan.backend is Backend.VULKAN
    assert plan.cmake_defines["GGML_VULKAN"] == "ON"
    assert plan.cmake_defines["GGML_AVX_VNNI"] == "ON"
    err = refused(with_toolkits(load("intel-arc-vulkan"), vulkan=None), PlanOptions(backend=Backend.VULKAN))
    assert "install the Vulkan SDK" in err.message
    assert "1.2" in refused(with_toolkits(load("intel-arc-vulkan"), vulkan="1.1")).message
    assert "GPU" in refused(load("zen4-epyc"), PlanOptions(backend=Backend.VULKAN)).message


def test_metal_needs_macos() -> None:
    err = refused(load("zen4-epyc"), PlanOptions(backend=Backend.METAL))
    assert "macOS" in err.message and "--backend cpu" in err.message
    no_metal = with_toolkits(load("apple-m2"), metal=False)
    assert plan_build(no_metal).backend is Backend.CPU
    refused(no_metal, PlanOptions(backend=Backend.METAL))


def test_sycl_only_when_asked_and_only_for_intel_gpus() -> None:
    assert plan_build(load("intel-arc-vulkan")).backend is not Backend.SYCL
    plan = plan_build(load("intel-arc-vulkan"), PlanOptions(backend=Backend.SYCL))
    assert plan.cmake_defines["GGML_SYCL"] == "ON"
    assert plan.cmake_defines["CMAKE_CXX_COMPILER"] == "icpx"
    assert any("oneAPI" in w for w in plan.warnings)
    assert "Intel GPU" in refused(load("rtx5090-cuda128"), PlanOptions(backend=Backend.SYCL)).message


def test_unsupported_cpu_arch_is_refused() -> None:
    refused(dataclasses.replace(load("zen4-epyc"), arch="riscv64"))


# --- the value types -----------------------------------------------------------------------------


def test_backend_is_a_string_enum() -> None:
    assert str(Backend.CUDA) == "cuda" and Backend("metal") is Backend.METAL
    assert f"{Backend.HIP}" == "hip"
    assert Backend.CUDA.cmake_option == "GGML_CUDA" and Backend.CPU.cmake_option is None


def test_from_dict_rejects_other_schemas_and_garbage() -> None:
    d = plan_build(load("zen4-epyc")).to_dict()
    with pytest.raises(UsageError):
        BuildPlan.from_dict({**d, "schema": "nativellm.plan/2"})
    with pytest.raises(UsageError):
        BuildPlan.from_dict({**d, "backend": "opencl"})
    with pytest.raises(UsageError):
        BuildPlan.from_dict({**d, "cmake_defines": {"GGML_AVX": True}})


def test_cmake_args_are_sorted_defines() -> None:
    plan = plan_build(load("mixed-3090-4090"))
    args = plan.cmake_args()
    assert [a.partition("=")[0] for a in args] == [f"-D{k}" for k in sorted(plan.cmake_defines)]
    assert "-DCMAKE_CUDA_ARCHITECTURES=86-real;89-real" in args
