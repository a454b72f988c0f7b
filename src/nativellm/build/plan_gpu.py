"""GPU backend planning: which backend a profile gets (auto or asked for), and each backend's defines
and refusals. Option names follow ggml/src/ggml-cuda/CMakeLists.txt (12X -> 12Xa) and
ggml/src/ggml-hip/CMakeLists.txt (GPU_TARGETS)."""

from __future__ import annotations

import re
from collections.abc import Callable

from nativellm.build.draft import MACOS, Backend, Draft, PlanOptions, no_gpu, refuse, version_of
from nativellm.hardware.profile import GpuInfo, HostProfile

# NVIDIA: sm arch -> oldest CUDA that compiles for it; and the CUDA release that dropped it.
_CUDA_MIN: dict[int, tuple[int, int]] = {
    50: (6, 0), 52: (6, 5), 53: (7, 0), 60: (8, 0), 61: (8, 0), 62: (8, 0), 70: (9, 0), 72: (10, 0),
    75: (10, 0), 80: (11, 0), 86: (11, 1), 87: (11, 4), 89: (11, 8), 90: (11, 8), 100: (12, 8),
    101: (12, 8), 103: (12, 9), 110: (13, 0), 120: (12, 8), 121: (12, 9),
}  # fmt: skip
_CUDA_DROPPED: dict[int, tuple[int, int]] = {a: (13, 0) for a in (50, 52, 53, 60, 61, 62, 70, 72, 101)}
# This tree rewrites 12X to the arch-specific 12Xa (FP4 tensor cores); 12Xa code can't JIT onto newer GPUs.
_ARCH_SPECIFIC = range(120, 130)
_PTX_FOR_ARCH_SPECIFIC = 90
_HIP_MIN = (6, 1)  # ggml-hip: "At least ROCM/HIP V6.1 is required"
_VULKAN_MIN = (1, 2)  # ggml-vulkan refuses devices below Vulkan 1.2
# The tree's default KV-cache type pairs for the FlashAttention vector kernels, pinned. Commas: ggml splits
# on them, and the value then needs no CMake list quoting. GGML_CUDA_FA_ALL_QUANTS is deprecated here.
_FA_QUANTS = "q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16"
_FA_REASON = "FlashAttention kernels for the common KV-cache types (tree default, pinned); 'all' is slow"
_MLX_WARNING = "MLX fallback is not implemented yet; use mlx-lm for models llama.cpp cannot run"


def plan_backend(profile: HostProfile, options: PlanOptions, draft: Draft) -> Backend:
    """The backend this plan builds, with that backend's defines set on `draft` (or a PlanError)."""
    # --single-binary is CPU-only (check_single_binary), so auto means CPU even on a GPU host.
    auto = Backend.CPU if options.single_binary else None
    backend = options.backend or auto or _auto_backend(profile, draft)
    if backend in _BACKEND_PLANNERS:
        _BACKEND_PLANNERS[backend](profile, options, draft)
    return backend


def _auto_backend(profile: HostProfile, draft: Draft) -> Backend:
    tk = profile.toolkits
    nvidia, amd = profile.gpus_of("nvidia"), profile.gpus_of("amd")
    if nvidia and tk.cuda:
        return Backend.CUDA
    if amd and tk.rocm:
        return Backend.HIP
    if profile.os in MACOS and profile.arch == "arm64" and tk.metal:
        return Backend.METAL
    if _vulkan_gpus(profile) and tk.vulkan:
        return Backend.VULKAN
    if nvidia:
        draft.warnings.append("NVIDIA GPU found but no CUDA toolkit: install it (nvcc) to build for the GPU")
    if amd:
        draft.warnings.append("AMD GPU found but no ROCm: install ROCm 6.1 or newer to build for the GPU")
    return Backend.CPU


def _plan_cuda(profile: HostProfile, options: PlanOptions, draft: Draft) -> None:
    gpus = profile.gpus_of("nvidia")
    if not gpus:
        raise no_gpu("cuda", "an NVIDIA GPU")
    if not profile.toolkits.cuda:
        fix = "install the CUDA toolkit (nvcc) or build with --backend cpu"
        raise refuse("--backend cuda needs the CUDA toolkit, and none was found", fix)
    cuda = version_of(profile.toolkits.cuda, "CUDA")
    shown = ".".join(map(str, cuda))
    archs = sorted({_check_cuda_gpu(g, cuda) for g in gpus})
    targets = [f"{a}a-real" if a in _ARCH_SPECIFIC else f"{a}-real" for a in archs]
    why = "device code for exactly the GPUs present"
    if any(a in _ARCH_SPECIFIC for a in archs):
        why += "; 12X is built as 12Xa, as the tree does, for Blackwell's FP4 tensor cores"
    if options.portable:
        forward = [a for a in archs if a not in _ARCH_SPECIFIC]
        ptx = max(forward + ([_PTX_FOR_ARCH_SPECIFIC] if len(forward) < len(archs) else []))
        targets.append(f"{ptx}-virtual")
        why += f"; --portable adds {ptx} PTX, the newest that later GPUs can JIT (12Xa PTX is not portable)"
    described = ", ".join(f"GPU {g.index} {g.name} is {g.arch}" for g in gpus)
    draft.set("GGML_CUDA", "ON", f"{described} and CUDA {shown} is installed")
    draft.set("CMAKE_CUDA_ARCHITECTURES", ";".join(targets), why)
    draft.set("GGML_CUDA_FA_QUANTS", _FA_QUANTS, _FA_REASON)
    draft.set("GGML_CUDA_CUB_3DOT2", "OFF", "ON git-clones NVIDIA CCCL at configure time; builds run offline")


def _check_cuda_gpu(gpu: GpuInfo, cuda: tuple[int, int]) -> int:
    m = re.fullmatch(r"sm_(\d+)", gpu.arch)
    arch = int(m.group(1)) if m else -1
    installed = ".".join(map(str, cuda))
    gpu_is = f"GPU {gpu.index} {gpu.name} is {gpu.arch}"
    if arch not in _CUDA_MIN:
        known = (
            "nvidia-smi did not report its compute capability" if m is None else "nativellm does not know it"
        )
        fix = "update nativellm or re-run `nativellm detect`, or build with --backend vulkan or --backend cpu"
        raise refuse(f"{gpu_is}: {known}", fix)
    need, dropped = _CUDA_MIN[arch], _CUDA_DROPPED.get(arch)
    if cuda < need:
        want = f"CUDA {need[0]}.{need[1]} or newer"
        fix = f"Upgrade to {want}, or build with --backend cpu"
        raise refuse(f"{gpu_is}, which needs {want}; CUDA {installed} is installed", fix, ". ")
    if dropped is not None and cuda >= dropped:
        gone = f"CUDA {installed} no longer compiles for sm_{arch} (GPU {gpu.index} {gpu.name})"
        fix = f"install CUDA {dropped[0] - 1}.x or build with --backend cpu"
        raise refuse(f"{gone}: support ended with CUDA {dropped[0]}.{dropped[1]}", fix)
    return arch


def _plan_hip(profile: HostProfile, options: PlanOptions, draft: Draft) -> None:
    gpus = profile.gpus_of("amd")
    if not gpus:
        raise no_gpu("hip", "an AMD GPU")
    fix = "install ROCm 6.1 or newer (hipcc, hipBLAS, rocBLAS), or build with --backend vulkan or cpu"
    if not profile.toolkits.rocm:
        raise refuse("--backend hip needs ROCm, and none was found", fix)
    if version_of(profile.toolkits.rocm, "ROCm") < _HIP_MIN:
        raise refuse(f"ROCm {profile.toolkits.rocm} is installed, but ggml needs ROCm 6.1 or newer", fix)
    bad = [g for g in gpus if not re.fullmatch(r"gfx[0-9a-f]+", g.arch)]
    if bad:
        fix = "re-run `nativellm detect` with ROCm installed, so rocminfo reports it"
        raise refuse(f"GPU {bad[0].index} {bad[0].name} has arch {bad[0].arch!r}, not a gfx target", fix)
    described = ", ".join(f"GPU {g.index} {g.name} is {g.arch}" for g in gpus)
    draft.set("GGML_HIP", "ON", f"{described} and ROCm {profile.toolkits.rocm} is installed")
    why = "device code for exactly the GPUs present (AMDGPU_TARGETS is the legacy name)"
    draft.set("GPU_TARGETS", ";".join(sorted({g.arch for g in gpus})), why)
    draft.set("GGML_CUDA_FA_QUANTS", _FA_QUANTS, _FA_REASON)


def _vulkan_gpus(profile: HostProfile) -> tuple[GpuInfo, ...]:
    return tuple(g for g in profile.gpus if g.vendor in ("nvidia", "amd", "intel"))


def _plan_vulkan(profile: HostProfile, options: PlanOptions, draft: Draft) -> None:
    gpus = _vulkan_gpus(profile)
    # Auto never lands here without a real GPU (_auto_backend), so a software device is used only
    # when --backend vulkan asked for it: lavapipe exists on many GPU-less hosts and is slow.
    software = profile.software_gpus if not gpus else ()
    if not gpus and not software:
        raise no_gpu("vulkan", "an NVIDIA, AMD or Intel GPU (or a software Vulkan device)")
    fix = "install the Vulkan SDK 1.2 or newer (headers, loader, glslc), or build with --backend cpu"
    if not profile.toolkits.vulkan:
        raise refuse("--backend vulkan needs the Vulkan SDK, and none was found", fix)
    if version_of(profile.toolkits.vulkan, "Vulkan") < _VULKAN_MIN:
        raise refuse(f"Vulkan {profile.toolkits.vulkan} is installed, but ggml needs 1.2 or newer", fix)
    if gpus:
        described = ", ".join(f"GPU {g.index} {g.name}" for g in gpus)
        draft.set("GGML_VULKAN", "ON", f"{described} and Vulkan {profile.toolkits.vulkan} is installed")
        return
    described = ", ".join(f"device {g.index} {g.name}" for g in software)
    why = (
        f"--backend vulkan on a software device ({described}: Mesa's CPU-backed Vulkan driver, "
        f"no GPU) and Vulkan {profile.toolkits.vulkan} is installed"
    )
    draft.set("GGML_VULKAN", "ON", why)
    draft.warnings.append(
        f"Vulkan device {software[0].index} is a software device: it runs on the CPU and is slower than "
        f"the CPU backend; llama.cpp uses it only when an instance names it (--gpus {software[0].index})"
    )


def _plan_metal(profile: HostProfile, options: PlanOptions, draft: Draft) -> None:
    if profile.os not in MACOS:
        raise refuse(f"--backend metal needs macOS, not {profile.os}", "build with --backend cpu")
    if not profile.toolkits.metal:
        raise refuse("--backend metal needs Metal, and detect did not find it", "build with --backend cpu")
    draft.set("GGML_METAL", "ON", f"Apple GPU with Metal on {profile.cpu.model or profile.arch}")
    draft.set("GGML_METAL_EMBED_LIBRARY", "ON", "the shaders are embedded, so the install needs no metallib")
    draft.warnings.append(_MLX_WARNING)


def _plan_sycl(profile: HostProfile, options: PlanOptions, draft: Draft) -> None:
    # The host profile has no oneAPI field, so SYCL is never chosen automatically; asked for, it is
    # planned for an Intel GPU and configure finds out whether oneAPI is really there.
    gpus = profile.gpus_of("intel")
    if not gpus:
        raise no_gpu("sycl", "an Intel GPU")
    described = ", ".join(f"GPU {g.index} {g.name}" for g in gpus)
    draft.set("GGML_SYCL", "ON", f"--backend sycl: {described}")
    draft.set("CMAKE_C_COMPILER", "icx", "the SYCL backend is compiled with Intel oneAPI DPC++")
    draft.set("CMAKE_CXX_COMPILER", "icpx", "the SYCL backend is compiled with Intel oneAPI DPC++")
    draft.warnings.append("oneAPI is not probed: source oneAPI's setvars.sh before building")


_BACKEND_PLANNERS: dict[Backend, Callable[[HostProfile, PlanOptions, Draft], None]] = {
    Backend.CUDA: _plan_cuda,
    Backend.HIP: _plan_hip,
    Backend.VULKAN: _plan_vulkan,
    Backend.METAL: _plan_metal,
    Backend.SYCL: _plan_sycl,
}
