"""The argv of each CMake step over the cpp/ superbuild: pure, so the pipeline runs them and tests read them."""

from __future__ import annotations

from pathlib import Path

from nativellm.build.plan import BuildPlan
from nativellm.build.toolchain import Toolchain
from nativellm.paths import package_data


def configure_argv(
    tools: Toolchain,
    plan: BuildPlan,
    source: Path,
    build_dir: Path,
    ui_dist: Path | None = None,
    cuda_libs: Path | None = None,
) -> list[str]:
    """`ui_dist`: web UI assets built by build/ui.py, embedded instead of running npm inside CMake.
    `cuda_libs`: the prefix cudalibs.shim() laid out for cuBLAS from a pip wheel."""
    return [
        tools.cmake, "-G", "Ninja", "-S", str(package_data("cpp")), "-B", str(build_dir),
        f"-DCMAKE_MAKE_PROGRAM={tools.ninja}",
        f"-DNATIVELLM_LLAMA_SOURCE={source}",
        f"-DNATIVELLM_TARGETS={';'.join(plan.targets)}",
        "-Wno-dev",
        *([f"-DNATIVELLM_UI_DIST={ui_dist}"] if ui_dist is not None else []),
        *([f"-DNATIVELLM_CUDA_LIBS={cuda_libs}"] if cuda_libs is not None else []),
        *(f"-D{k}={v}" for k, v in sorted(plan.cmake_defines.items())),
    ]  # fmt: skip


def compile_argv(tools: Toolchain, build_dir: Path, jobs: int) -> list[str]:
    return [tools.cmake, "--build", str(build_dir), "--parallel", str(jobs)]


def install_argv(tools: Toolchain, build_dir: Path, prefix: Path) -> list[str]:
    """Only the `nativellm` component: the wanted binaries and their libraries, RPATH $ORIGIN/../lib."""
    return [tools.cmake, "--install", str(build_dir), "--component", "nativellm", "--prefix", str(prefix)]


def steps(
    tools: Toolchain,
    plan: BuildPlan,
    source: Path,
    work: Path,
    jobs: int,
    ui_dist: Path | None = None,
    cuda_libs: Path | None = None,
) -> list[tuple[str, list[str]]]:
    """(name, argv) of configure, compile and install, in order."""
    build_dir = work / "build"
    return [
        ("configure", configure_argv(tools, plan, source, build_dir, ui_dist, cuda_libs)),
        ("compile", compile_argv(tools, build_dir, jobs)),
        ("install", install_argv(tools, build_dir, work / "stage")),
    ]
