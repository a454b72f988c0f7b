"""Build planning: HostProfile + PlanOptions -> BuildPlan (`nativellm.plan/1`, DESIGN.md section 4).

Pure and table-driven. Option names and their semantics follow the llama.cpp tree we build:
ggml/CMakeLists.txt (options), ggml/src/CMakeLists.txt (GGML_CPU_ALL_VARIANTS variants),
ggml/src/ggml-cpu/CMakeLists.txt (what each ISA option compiles with). This module holds the CPU ISA
defines, source-aware adaptation and the BuildPlan document; GPU backends are planned in plan_gpu.py,
and both share draft.py (PlanOptions, Backend, the plan under construction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Backend and PlanOptions are part of this module's interface (re-exported from draft.py).
from nativellm.build.draft import MACOS, Draft, refuse
from nativellm.build.draft import Backend as Backend
from nativellm.build.draft import PlanOptions as PlanOptions
from nativellm.build.plan_apple import macos_defines
from nativellm.build.plan_gpu import plan_backend
from nativellm.build.tree import TreeOptions
from nativellm.errors import PlanError, UsageError
from nativellm.hardware.profile import HostProfile

SCHEMA = "nativellm.plan/1"
TARGETS: tuple[str, ...] = ("llama-server", "llama-bench", "llama-quantize")
BUILD_TYPES = frozenset({"Release", "RelWithDebInfo", "MinSizeRel", "Debug"})
FALLBACK_ORDER: tuple[str, ...] = ("amx", "avx512")
"""Which family the auto build drops first after a smoke-test crash (DESIGN.md section 6)."""


# Set on every plan. Each is offline-safe or keeps the build small.
_ALWAYS: tuple[tuple[str, str, str], ...] = (
    ("LLAMA_OPENSSL", "OFF", "no OpenSSL dependency: nativellm fetches models itself, not llama-server"),
    ("LLAMA_BUILD_TESTS", "OFF", "only the planned targets are built"),
    ("LLAMA_BUILD_EXAMPLES", "OFF", "only the planned targets are built"),
    ("GGML_CCACHE", "ON", "reuses compiler output when ccache is installed; harmless without it"),
    ("BUILD_SHARED_LIBS", "ON", "bin/ finds lib/ through RPATH $ORIGIN/../lib; GGML_BACKEND_DL needs it"),
)

# x86-64: define, family, cpu flags it needs (/proc/cpuinfo spelling), families it needs ON first.
# GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw, so all five are required.
# ggml's AMX kernels are compiled only with __AMX_INT8__ && __AVX512VNNI__, hence amx -> avx512_vnni.
_X86: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("GGML_SSE42", "sse42", ("sse4_2",), ()),
    ("GGML_AVX", "avx", ("avx",), ()),
    ("GGML_AVX2", "avx2", ("avx2",), ("avx",)),
    ("GGML_FMA", "fma", ("fma",), ("avx",)),
    ("GGML_F16C", "f16c", ("f16c",), ("avx",)),
    ("GGML_BMI2", "bmi2", ("bmi2",), ()),
    ("GGML_AVX_VNNI", "avx_vnni", ("avx_vnni",), ("avx2",)),
    ("GGML_AVX512", "avx512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), ("avx2", "fma")),
    ("GGML_AVX512_VBMI", "avx512_vbmi", ("avx512vbmi",), ("avx512",)),
    ("GGML_AVX512_VNNI", "avx512_vnni", ("avx512_vnni",), ("avx512",)),
    ("GGML_AVX512_BF16", "avx512_bf16", ("avx512_bf16",), ("avx512",)),
    ("GGML_AMX_TILE", "amx", ("amx_tile",), ("avx512_vnni",)),
    ("GGML_AMX_INT8", "amx", ("amx_tile", "amx_int8"), ("avx512_vnni",)),
    ("GGML_AMX_BF16", "amx", ("amx_tile", "amx_bf16"), ("avx512_vnni",)),
)
# llama.cpp's default with GGML_NATIVE=OFF (INS_ENB): what a generic distro package is built with.
_X86_BASELINE = frozenset({"sse42", "avx", "avx2", "fma", "f16c", "bmi2"})
# GGML_CPU_ALL_VARIANTS on x86 (ggml/src/CMakeLists.txt): the variants compiled with each family past AVX2.
_X86_VARIANTS: dict[str, str] = {
    "avx512": "skylakex cannonlake cascadelake icelake cooperlake zen4 sapphirerapids",
    "avx512_vbmi": "cannonlake icelake zen4 sapphirerapids",
    "avx512_vnni": "cascadelake icelake cooperlake zen4 sapphirerapids",
    "avx512_bf16": "cooperlake zen4 sapphirerapids",
    "avx_vnni": "alderlake",
    "amx": "sapphirerapids",
}
# x86-64 microarchitecture for -mtune, from the vendor and the CPU's flags; the first row whose flags are
# all present wins. Tuning changes instruction scheduling only, never the instruction set (that stays the
# GGML_* defines above), so the binary still runs on any CPU with those flags, and a wrong guess costs
# speed, not correctness. -march=native tunes the same way; without it GCC tunes for "generic". Names
# newer compilers added come with an older fallback: cpp/CMakeLists.txt uses the first one it accepts.
_X86_TUNE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("GenuineIntel", ("amx_tile",), "sapphirerapids,icelake-server"),
    ("GenuineIntel", ("avx512_fp16",), "sapphirerapids,icelake-server"),
    ("GenuineIntel", ("avx512_vbmi2",), "icelake-server"),
    ("GenuineIntel", ("avx512_bf16",), "cooperlake,cascadelake"),
    ("GenuineIntel", ("avx512_vnni",), "cascadelake"),
    ("GenuineIntel", ("avx512f",), "skylake-avx512"),
    ("GenuineIntel", ("avx_vnni",), "alderlake,skylake"),
    ("GenuineIntel", ("avx2",), "haswell"),
    ("GenuineIntel", ("avx",), "sandybridge"),
    ("GenuineIntel", ("sse4_2",), "nehalem"),
    ("AuthenticAMD", ("avx512_vp2intersect",), "znver5,znver4,znver3"),
    ("AuthenticAMD", ("avx512f",), "znver4,znver3"),
    ("AuthenticAMD", ("avx2", "vaes"), "znver3,znver2"),
    ("AuthenticAMD", ("avx2", "clwb"), "znver2"),
    ("AuthenticAMD", ("avx2",), "znver1"),
)
# aarch64: -march tag, cpu flags it needs, first architecture version with it (ggml's variant scheme),
# tags it needs first. SME is left out: ggml uses it only through KleidiAI, which downloads at build time.
_ARM: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    ("dotprod", ("asimddp",), "armv8.2-a", ()),
    ("fp16", ("fphp", "asimdhp"), "armv8.2-a", ()),
    ("sve", ("sve",), "armv8.2-a", ()),
    ("i8mm", ("i8mm",), "armv8.6-a", ()),
    ("sve2", ("sve2",), "armv8.6-a", ("sve",)),
    ("bf16", ("bf16",), "armv8.6-a", ()),
)
_ARM_BASES = ("armv8-a", "armv8.2-a", "armv8.6-a")
FAMILIES = frozenset({fam for _, fam, _, _ in _X86} | {tag for tag, _, _, _ in _ARM})

_UI_ON = (
    "llama-server serves its web UI: nativellm builds it with npm from the tree's UI sources, cached by "
    "their hash, and CMake embeds the result (--no-ui leaves it out)"
)
NO_UI_REASON = "--no-ui: llama-server serves no web UI"
_PREBUILT_UI = (
    "ON downloads the web UI from a Hugging Face bucket at build time; nativellm builds it with npm"
)
# Source-aware planning (plan_build(..., tree=...)). Defines the tree never declares: CMake's own,
# the superbuild's (cpp/CMakeLists.txt) and HIP's GPU_TARGETS, which CMake itself reads.
_NOT_TREE_OPTIONS = ("CMAKE_", "NATIVELLM_")
_NOT_TREE_NAMES = frozenset({"BUILD_SHARED_LIBS", "GPU_TARGETS"})
# Today's name -> the name older trees knew, with the value to give it there and why.
_RENAMED: dict[str, tuple[str, str, str]] = {
    "LLAMA_OPENSSL": ("LLAMA_SERVER_SSL", "OFF", "no OpenSSL dependency, as LLAMA_OPENSSL=OFF does in newer trees"),
    "LLAMA_USE_PREBUILT_UI": ("LLAMA_USE_PREBUILT_WEBUI", "OFF", "ON downloads the web UI at build time"),
    "LLAMA_BUILD_UI": (
        "LLAMA_BUILD_WEBUI", "OFF", "ON runs npm inside CMake here; nativellm builds only a tools/ui web UI",
    ),
    "GGML_CUDA_FA_QUANTS": (
        "GGML_CUDA_FA_ALL_QUANTS", "OFF", "OFF compiles the common KV-cache types only; 'all' is slow",
    ),
}  # fmt: skip
# Options a tree may default ON that need a library nativellm doesn't install; turned OFF where declared.
_NEEDS_LIBRARY: dict[str, str] = {
    "LLAMA_CURL": "needs libcurl's headers (configure fails with 'Could NOT find CURL' without them); "
    "llama-server does not need it: nativellm downloads models itself",
}


@dataclass(frozen=True)
class PlanSource:
    """The llama.cpp tree a plan was adapted to (`"source"` in the plan JSON; absent without a tree).

    `commit` and `build` are "unknown" when the tree carries no trace of them; `adapted` names every
    define that differs from the tree-less plan: renamed, dropped or added for this tree."""

    commit: str
    build: str
    revision_from: str
    adapted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "build": self.build,
            "revision_from": self.revision_from,
            "adapted": list(self.adapted),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanSource:
        return cls(
            commit=str(d["commit"]),
            build=str(d["build"]),
            revision_from=str(d.get("revision_from", "")),
            adapted=tuple(str(a) for a in d.get("adapted", [])),
        )


@dataclass(frozen=True)
class BuildPlan:
    """CMake defines for one build, each with its reason. `cmake_defines` is a dict; treat it as immutable.

    `reasons` may also name a define that is not passed: one the source tree does not know, dropped."""

    backend: Backend
    cmake_defines: Mapping[str, str]
    reasons: Mapping[str, str]
    targets: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    source: PlanSource | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "backend": self.backend.value,
            "cmake_defines": {k: self.cmake_defines[k] for k in sorted(self.cmake_defines)},
            "reasons": {k: self.reasons[k] for k in sorted(self.reasons)},
            "targets": list(self.targets),
            "warnings": list(self.warnings),
        }
        if self.source is not None:
            d["source"] = self.source.to_dict()
        return d

    def dropped(self) -> tuple[str, ...]:
        """Defines planned but not passed, because the source tree does not know them."""
        return tuple(sorted(k for k in self.reasons if k not in self.cmake_defines))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildPlan:
        hint = "write the plan with `nativellm plan --json`"
        if d.get("schema") != SCHEMA:
            raise UsageError(f"plan schema is {d.get('schema')!r}, expected {SCHEMA!r}", hint)
        try:
            defines, reasons = d["cmake_defines"], d.get("reasons", {})
            if not all(isinstance(v, str) for m in (defines, reasons) for v in [*m, *m.values()]):
                raise TypeError("cmake_defines and reasons must map strings to strings")
            return cls(
                backend=Backend(d["backend"]),
                cmake_defines=dict(defines),
                reasons=dict(reasons),
                targets=tuple(str(t) for t in d["targets"]),
                warnings=tuple(str(w) for w in d.get("warnings", [])),
                source=PlanSource.from_dict(d["source"]) if d.get("source") is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"plan is malformed: {exc}", hint) from exc

    def features(self) -> frozenset[str]:
        """ISA families the plan names ON. Empty for --native and --portable, which name none."""
        on = {fam for define, fam, _, _ in _X86 if self.cmake_defines.get(define) == "ON"}
        arm = self.cmake_defines.get("GGML_CPU_ARM_ARCH", "")
        return frozenset(on | set(arm.split("+")[1:]))

    @property
    def single_binary(self) -> bool:
        """A `--single-binary` plan: llama/ggml linked statically, so bin/llama-server stands alone."""
        return self.cmake_defines.get("BUILD_SHARED_LIBS") == "OFF"

    def cmake_args(self) -> list[str]:
        return [f"-D{k}={v}" for k, v in sorted(self.cmake_defines.items())]


def next_fallback(plan: BuildPlan, already_disabled: frozenset[str]) -> str | None:
    """The family to drop after a smoke-test crash, or None when nothing is left to try."""
    enabled = plan.features()
    return next((f for f in FALLBACK_ORDER if f in enabled and f not in already_disabled), None)


_DEFAULTS = PlanOptions()


def plan_build(
    profile: HostProfile, options: PlanOptions = _DEFAULTS, tree: TreeOptions | None = None
) -> BuildPlan:
    """Pure: the same profile, options and tree always give the same plan. Raises PlanError for impossible
    plans. With the source tree's options (build/tree.py), the defines are adapted to that tree."""
    disabled = _check_options(options)
    isa = _isa_kind(profile)
    draft = Draft()
    backend = plan_backend(profile, options, draft)  # toolkit and arch compatibility come first
    if options.portable:
        native_reason = "GGML_CPU_ALL_VARIANTS picks the instruction set at run time (NATIVE conflicts)"
    elif options.native:
        native_reason = "--native: -march=native of the build host, for benchmarks; not reproducible"
    else:
        native_reason = "every ISA extension is named explicitly, so any build host gives the same binary"
    draft.set("GGML_NATIVE", "ON" if options.native else "OFF", native_reason)
    draft.set("CMAKE_BUILD_TYPE", options.build_type, "requested build type")
    for key, value, reason in _ALWAYS:
        draft.set(key, value, reason)
    draft.set("LLAMA_USE_PREBUILT_UI", "OFF", _PREBUILT_UI)
    if options.ui:
        draft.set("LLAMA_BUILD_UI", "ON", _UI_ON)
    else:
        draft.set("LLAMA_BUILD_UI", "OFF", options.no_ui_reason or NO_UI_REASON)
    if options.portable:
        cpu = "x86-64" if isa == "x86" else "aarch64"
        fleet = f"fleet build: runs on any {cpu}; backends are loaded at run time from bin/"
        draft.set("GGML_BACKEND_DL", "ON", fleet)
        draft.set("GGML_CPU_ALL_VARIANTS", "ON", fleet)
        _portable_disable_warnings(isa, disabled, draft)
    elif options.native:
        draft.warnings.append("--native: -march=native may use extensions the OS does not enable")
    elif isa == "x86":
        _x86_defines(profile, options.baseline, disabled, draft)
    else:
        _arm_defines(profile, options.baseline, disabled, draft)
    if profile.os in MACOS and backend is not Backend.METAL:
        draft.set("GGML_METAL", "OFF", f"ggml turns Metal on by default on Apple; this is a {backend} build")
    macos_defines(profile, draft)
    if options.single_binary:
        _single_binary_defines(profile, draft)
    if options.rpc:
        draft.set("GGML_RPC", "ON", "--rpc: build the RPC backend and rpc-server")
    targets = TARGETS + (("rpc-server",) if options.rpc else ())
    source = _adapt_to_tree(tree, draft) if tree is not None else None
    for key, value in options.defines:
        unknown = tree is not None and not tree.knows(key) and not key.startswith(_NOT_TREE_OPTIONS)
        note = f"; this tree ({tree.revision()}) does not declare it" if tree is not None and unknown else ""
        draft.set(key, value, f"--define: set by hand, passed as given{note}")
    return BuildPlan(
        backend, dict(draft.defines), dict(draft.reasons), targets, tuple(draft.warnings), source
    )


def _adapt_to_tree(tree: TreeOptions, draft: Draft) -> PlanSource:
    """Rename, drop or add defines so that every define passed is one this tree reads."""
    rev = tree.revision()
    adapted: list[str] = []
    for key in sorted(draft.defines):
        if key.startswith(_NOT_TREE_OPTIONS) or key in _NOT_TREE_NAMES or tree.knows(key):
            continue
        value, reason = draft.defines.pop(key), draft.reasons.pop(key)
        adapted.append(key)
        renamed = _RENAMED.get(key)
        if renamed is not None and tree.knows(renamed[0]):
            old, old_value, why = renamed
            if old == "LLAMA_BUILD_WEBUI" and value == "OFF":
                why = reason
            elif old == "LLAMA_BUILD_WEBUI" and tree.bundled_ui:
                old_value, why = "ON", "here it embeds the web UI committed in the tree: no npm, no network"
            elif old == "LLAMA_BUILD_WEBUI":
                draft.warnings.append(
                    f"web UI left out: this tree ({rev}) builds it inside CMake with npm and the network; "
                    "a llama.cpp with tools/ui gets it, or pass --no-ui to silence this"
                )
            draft.set(old, old_value, f"adapted to this tree ({rev}), which names {key} {old}: {why}")
            draft.reasons[key] = f"not passed: this tree ({rev}) calls it {old}"
            adapted.append(old)
            continue
        ui = key in ("LLAMA_BUILD_UI", "LLAMA_USE_PREBUILT_UI")
        effect = "it builds without it" if value == "ON" and not ui else "its own behaviour applies"
        draft.reasons[key] = (
            f"not passed: this tree ({rev}) does not know {key}, so {effect} (wanted {value}: {reason})"
        )
    if tree.tools_in_examples and draft.defines.get("LLAMA_BUILD_EXAMPLES") == "OFF":
        why = "llama-server, llama-bench and llama-quantize live in examples/ here; only the planned targets"
        draft.set("LLAMA_BUILD_EXAMPLES", "ON", f"adapted to this tree ({rev}): {why} are built")
        adapted.append("LLAMA_BUILD_EXAMPLES")
    for key, why in _NEEDS_LIBRARY.items():
        if tree.declares(key):
            default = tree.default(key) or "OFF"
            draft.set(
                key, "OFF", f"adapted to this tree ({rev}), which declares {key} (default {default}): {why}"
            )
            adapted.append(key)
    return PlanSource(tree.commit, tree.build, tree.revision_from, tuple(sorted(set(adapted))))


def _check_options(options: PlanOptions) -> dict[str, str]:
    if sum((options.portable, options.native, options.baseline)) > 1:
        raise PlanError("--portable, --native and --baseline exclude each other", "choose one of them")
    if options.single_binary:
        check_single_binary(options.backend, options.portable)
    if options.build_type not in BUILD_TYPES:
        raise refuse(f"build type {options.build_type!r} is unknown", f"use {', '.join(sorted(BUILD_TYPES))}")
    disabled = options.disabled()
    unknown = sorted(set(disabled) - FAMILIES)
    if unknown:
        raise refuse(f"unknown feature family {', '.join(unknown)}", f"use {', '.join(sorted(FAMILIES))}")
    bad = [k for k, _ in options.defines if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise refuse(f"--define {bad[0]!r} is not a CMake variable name", "use --define NAME=VALUE")
    if disabled and options.native:
        fix = "build without --native: the default plan names every extension and can leave any out"
        raise refuse(f"--native cannot leave out {', '.join(disabled)}", fix)
    return disabled


def check_single_binary(backend: Backend | None, portable: bool) -> None:
    """--single-binary is a CPU build without GGML_BACKEND_DL; say so before anything is planned."""
    if portable:
        raise UsageError(
            "--single-binary and --portable exclude each other: --portable loads CPU variants as shared "
            "modules (GGML_BACKEND_DL), which needs shared libraries",
            "drop --portable; the single binary is built for the CPU flags of the profile (or --baseline)",
        )
    if backend not in (None, Backend.CPU):
        raise UsageError(
            f"--single-binary builds the CPU backend only, not {backend}: GPU backends link their "
            "vendor runtimes (CUDA, ROCm, Vulkan) as shared libraries",
            "use --backend cpu (or leave --backend out), or drop --single-binary for a GPU build",
        )


def _single_binary_defines(profile: HostProfile, draft: Draft) -> None:
    if profile.os != "linux":
        fix = "build without --single-binary; the static libstdc++ link is a Linux (glibc) recipe"
        raise refuse(f"--single-binary needs Linux, not {profile.os}", fix)
    one = "--single-binary: "
    draft.set("BUILD_SHARED_LIBS", "OFF", one + "llama and ggml are linked into each executable; no lib/")
    draft.set("GGML_BACKEND_DL", "OFF", one + "backends are compiled in, none is loaded at run time")
    why = "libstdc++ and libgcc are linked in, so the host needs no particular GCC runtime, only glibc"
    draft.set("CMAKE_EXE_LINKER_FLAGS", "-static-libstdc++ -static-libgcc", one + why)
    why = "OpenMP would link libgomp.so.1, GCC's runtime rather than glibc's; ggml's own thread pool replaces it"
    draft.set("GGML_OPENMP", "OFF", one + why)


def _isa_kind(profile: HostProfile) -> str:
    if profile.arch in ("x86_64", "amd64"):
        return "x86"
    if profile.arch in ("aarch64", "arm64"):
        return "arm"
    raise refuse(f"CPU architecture {profile.arch!r} is not supported", "plan for x86_64 or aarch64 hosts")


def _x86_defines(profile: HostProfile, baseline: bool, disabled: Mapping[str, str], draft: Draft) -> None:
    flags = frozenset(profile.cpu.flags)
    dropped = profile.cpu.dropped_flags or {}
    on: set[str] = set()
    off_by_disable: dict[str, tuple[str, str]] = {}  # family -> (root family, why)
    for define, fam, needs, parents in _X86:
        missing = [f for f in needs if f not in flags]
        parent_off = [p for p in parents if p not in on]
        cascade = next((off_by_disable[p] for p in parent_off if p in off_by_disable), None)
        if fam in disabled:
            off_by_disable[fam] = (fam, disabled[fam])
            draft.set(define, "OFF", f"disabled: {disabled[fam]}")
        elif cascade is not None:
            off_by_disable[fam] = cascade
            draft.set(define, "OFF", f"disabled: {cascade[1]} (needs {cascade[0]})")
        elif baseline:
            if fam in _X86_BASELINE:
                on.add(fam)
                draft.set(define, "ON", "--baseline: llama.cpp's generic default (AVX2 generation)")
            else:
                draft.set(define, "OFF", "--baseline: nothing above AVX2")
        elif missing:
            why = [f"CPU reports {f} but it is not usable: {dropped[f]}" for f in missing if f in dropped]
            draft.set(define, "OFF", "; ".join(why) or f"CPU lacks {', '.join(missing)}")
        elif parent_off:
            draft.set(define, "OFF", f"CPU has {', '.join(needs)} but {parent_off[0]} is off")
        else:
            on.add(fam)
            draft.set(define, "ON", f"{', '.join(needs)} verified on this CPU")
    if baseline:
        lacking = sorted(f for _, fam, needs, _ in _X86 if fam in on for f in needs if f not in flags)
        if lacking:
            draft.warnings.append(
                f"--baseline uses {', '.join(lacking)}, which this CPU lacks: the binary will not run here"
            )
    if not baseline:
        _x86_tune(profile, draft)
    if "amx" in on:
        draft.warnings.append(
            "AMX is on: it can SIGILL on VMs that pass every probe; the smoke test guards it"
        )


def _x86_tune(profile: HostProfile, draft: Draft) -> None:
    """NATIVELLM_CPU_TUNE: cpp/CMakeLists.txt compiles ggml's CPU backend with -mtune=<it>."""
    cpu = profile.cpu
    flags = frozenset(cpu.flags) | frozenset(cpu.reported_flags or ())
    for vendor, needs, tune in _X86_TUNE:
        if cpu.vendor == vendor and all(f in flags for f in needs):
            name, *older = tune.split(",")
            why = f"{vendor} with {', '.join(needs)}: schedule ggml's CPU code for {name} (-mtune, as -march=native"
            why += f" would; {', '.join(older)} if the compiler lacks it)" if older else " would)"
            draft.set("NATIVELLM_CPU_TUNE", tune, why + "; the instruction set stays as named")
            return


def _arm_defines(profile: HostProfile, baseline: bool, disabled: Mapping[str, str], draft: Draft) -> None:
    flags = frozenset(profile.cpu.flags)
    base, bump, tags, notes = "armv8-a", "armv8-a: no optional extension", [], []
    for tag, needs, since, parents in () if baseline else _ARM:
        label = tag if needs == (tag,) else f"{tag} ({'+'.join(needs)})"
        if tag in disabled:
            notes.append(f"{tag} disabled: {disabled[tag]}")
        elif any(f not in flags for f in needs):
            notes.append(f"CPU lacks {label}")
        elif any(p not in tags for p in parents):
            notes.append(f"{tag} needs {', '.join(parents)}, which is off")
        else:
            tags.append(tag)
            notes.append(f"{label} verified on this CPU")
            if _ARM_BASES.index(since) > _ARM_BASES.index(base):
                base, bump = since, f"{since} is the first version with {tag}"
    arch = base + "".join(f"+{t}" for t in tags)
    why = "--baseline: generic armv8-a, no optional extensions" if baseline else "; ".join([bump, *notes])
    draft.set("GGML_CPU_ARM_ARCH", arch, why)


def _portable_disable_warnings(isa: str, disabled: Mapping[str, str], draft: Draft) -> None:
    # ggml's loader scores CPU variants by CPUID alone, so the install is where a family can be left out.
    for fam in disabled:
        libs = " ".join(f"ggml-cpu-{v}" for v in _X86_VARIANTS.get(fam, "").split()) if isa == "x86" else ""
        fix = f"; remove {libs} from the install" if libs else ""
        draft.warnings.append(f"--portable cannot leave {fam} out: ggml picks CPU variants at run time{fix}")
