"""cuBLAS from NVIDIA's pip wheels (build/cudalibs.py), on this machine's real wheel, nvcc and C compiler:
the build finds the wheel, links against it through the shim, and a binary with nativellm's RUNPATH
($ORIGIN/../lib) finds the library at run time through the link, with no LD_LIBRARY_PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nativellm.build import cudalibs
from nativellm.build.elf import find_needed
from nativellm.build.toolchain import Toolchain
from nativellm.hardware.nvidia import find_nvcc
from tests.helpers import cannot_run


@pytest.fixture(scope="module")
def wheel() -> cudalibs.CudaMath:
    found = cudalibs.from_wheels(13, cudalibs.site_dirs())
    if found is None:
        cannot_run("no nvidia-cublas 13 wheel in this environment (pip install 'nvidia-cublas==13.*')")
    return found


def test_the_wheel_is_found_with_its_version(wheel: cudalibs.CudaMath) -> None:
    assert wheel.source == "wheel" and wheel.major == 13
    assert (wheel.lib_dir / "libcublas.so.13").is_file() and (wheel.include_dir / "cublas_v2.h").is_file()
    assert wheel.packages.get("nvidia-cublas", "").startswith("13.")
    assert wheel.identity() == f"nvidia-cublas {wheel.packages['nvidia-cublas']}"
    # The path is not part of the identity: the same wheel elsewhere is the same build.
    assert str(wheel.lib_dir) not in wheel.identity()


def test_the_cuda12_wheel_layout_and_site_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-cublas-cu12 keeps nvidia/cublas/{lib,include}; NATIVELLM_CUDA_SITE adds a site dir."""
    site = tmp_path / "site-packages"
    (site / "nvidia" / "cublas" / "lib").mkdir(parents=True)
    (site / "nvidia" / "cublas" / "include").mkdir(parents=True)
    (site / "nvidia" / "cublas" / "lib" / "libcublas.so.12").write_bytes(b"\x7fELF")
    (site / "nvidia" / "cublas" / "include" / "cublas_v2.h").write_text("/* */\n")
    dist = site / "nvidia_cublas_cu12-12.9.1.4.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cublas-cu12\nVersion: 12.9.1.4\n")
    assert cudalibs.from_wheels(12, [tmp_path]) is None
    monkeypatch.setenv(cudalibs.SITE_ENV, str(site))
    found = cudalibs.from_wheels(12, cudalibs.site_dirs())
    assert found is not None and found.lib_dir == site / "nvidia" / "cublas" / "lib"
    assert found.identity() == "nvidia-cublas-cu12 12.9.1.4"
    assert cudalibs.from_wheels(13, [site]) is None  # another major is another library


def test_a_toolkit_without_cublas_is_not_taken_for_one() -> None:
    nvcc = find_nvcc()
    if nvcc is None:
        cannot_run("no nvcc on this machine")
    # This machine's CUDA 13.0 toolkit has nvcc and cudart but no cuBLAS.
    assert cudalibs.from_toolkit(nvcc, 13) is None
    assert (cudalibs.toolkit_home(nvcc) / "bin" / "nvcc").is_file()  # through the wrapper script


def test_a_binary_links_through_the_shim_and_runs_through_its_runpath(
    wheel: cudalibs.CudaMath, tmp_path: Path
) -> None:
    """The shim's unversioned link is what a link step needs; link_runtime() is what the loader needs."""
    prefix = cudalibs.shim(wheel, tmp_path / "cuda-libs")
    assert prefix is not None
    assert (prefix / "lib" / "libcublas.so").resolve() == (wheel.lib_dir / "libcublas.so.13").resolve()
    assert (prefix / "include" / "cublas_v2.h").resolve() == (wheel.include_dir / "cublas_v2.h").resolve()
    assert not (prefix / "include" / "cuda_runtime.h").exists()  # only cuBLAS's own headers

    build = tmp_path / "build"
    (build / "bin").mkdir(parents=True)
    src = tmp_path / "probe.c"
    # cublasGetProperty needs no GPU: the library loads and answers its own version.
    src.write_text(
        "#include <stdio.h>\n#include <cublas_v2.h>\n"
        'int main(void) { int v = 0; cublasGetProperty(MAJOR_VERSION, &v); printf("%d\\n", v); return 0; }\n'
    )
    exe = build / "bin" / "probe"
    cuda_inc = cudalibs.toolkit_home(find_nvcc() or "/usr/local/cuda/bin/nvcc") / "include"
    subprocess.run(
        ["cc", "-o", str(exe), str(src), f"-I{prefix / 'include'}", f"-I{cuda_inc}", f"-L{prefix / 'lib'}",
         "-lcublas", "-Wl,-rpath,$ORIGIN/../lib"],
        check=True,
    )  # fmt: skip
    assert "libcublas.so.13" in (find_needed(exe) or ())
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    before = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert before.returncode != 0 and "libcublas.so.13" in before.stderr  # the loader can't find it alone

    linked = cudalibs.link_runtime(build, [wheel.lib_dir])
    assert {"soname": "libcublas.so.13", "from": str(wheel.lib_dir / "libcublas.so.13")} in linked
    after = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "13"
    # Recorded as host links, which pack leaves out.
    # libcublas needs libcublasLt, and the wheel gives it no RUNPATH: linked too, transitively.
    assert cudalibs.link_names({"runtime_libs": linked}) == {"libcublas.so.13", "libcublasLt.so.13"}
    assert cudalibs.link_runtime(build, []) == linked  # a rerun keeps the links it made


def test_a_soname_no_candidate_has_is_reported_missing(wheel: cudalibs.CudaMath, tmp_path: Path) -> None:
    prefix = cudalibs.shim(wheel, tmp_path / "cuda-libs")
    assert prefix is not None
    (tmp_path / "b" / "lib").mkdir(parents=True)
    lib = tmp_path / "b" / "lib" / "libuser.so"
    (tmp_path / "u.c").write_text(
        "int cublasCreate_v2(void *h);\nint g(void) { return cublasCreate_v2(0); }\n"
    )
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "u.c"), f"-L{prefix / 'lib'}", "-lcublas"],
        check=True,
    )
    assert cudalibs.link_runtime(tmp_path / "b", [tmp_path / "nowhere"]) == [
        {"soname": "libcublas.so.13", "missing": "yes"}
    ]
    assert not (tmp_path / "b" / "lib" / "libcublas.so.13").exists()


def test_the_driver_stub_stands_in_for_libcuda(tmp_path: Path) -> None:
    nvcc = find_nvcc()
    if nvcc is None:
        cannot_run("no nvcc on this machine")
    stub = cudalibs.driver_stub(nvcc, tmp_path / "lib")
    # cuMemCreate (VMM, what ggml-cuda links libcuda for) and a versioned entry point (cuda.h maps
    # cuMemAlloc to cuMemAlloc_v2): both must resolve at link time.
    (tmp_path / "d.c").write_text(
        "int cuMemCreate(void);\nint cuMemAlloc_v2(void);\nint main(void) { return cuMemCreate() + cuMemAlloc_v2(); }\n"
    )
    exe = tmp_path / "d"
    subprocess.run(["cc", "-o", str(exe), str(tmp_path / "d.c"), str(stub)], check=True)
    # The binary names the driver's soname, which a GPU host's driver provides: never the stub's path.
    assert "libcuda.so.1" in (find_needed(exe) or ())
    assert (tmp_path / "lib" / "libcuda.so.1").resolve() == stub.resolve()


def test_only_cuda_builds_carry_cublas_in_their_identity(wheel: cudalibs.CudaMath) -> None:
    plain = Toolchain("cmake", "ninja", "3.31", "cc 12", "c++ 12")
    assert "cublas" not in plain.identity()  # CPU build ids stay what they were
    cuda = Toolchain("cmake", "ninja", "3.31", "cc 12", "c++ 12", "release 13.0", wheel)
    assert cuda.identity()["cublas"] == wheel.identity()


def test_nvcc_without_cublas_is_one_line_with_the_pip_fix(tmp_path: Path) -> None:
    """The CLI, in a process whose environment has no cuBLAS wheel (site dirs emptied): exit 11, the fix."""
    if find_nvcc() is None:
        cannot_run("no nvcc on this machine")
    profile = Path(__file__).resolve().parents[1] / "fixtures" / "profiles" / "h200.json"
    code = (
        "import sys; import nativellm.build.cudalibs as c; c.site_dirs = lambda extra=(): []; "
        "from nativellm.cli import main; sys.argv[0] = 'nativellm'; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "build", "--profile", str(profile), "--backend", "cuda", "--dry-run"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NATIVELLM_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 11, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("> ")]  # stage lines
    assert (
        lines[0]
        == "error: CUDA 13.0 has nvcc but no cuBLAS (not in the toolkit, no nvidia-cublas wheel found)"
    )
    assert lines[1].strip().startswith("hint: pip install 'nvidia-cublas==13.*'") and len(lines) == 2
    assert "Traceback" not in done.stderr and not (tmp_path / "home" / "data" / "work").exists()


def test_a_stub_that_cannot_be_made_is_a_toolchain_error_not_a_traceback(tmp_path: Path) -> None:
    """A driverless build host whose "toolkit" has no cuda.h: the build stops with exit 11 and the fix."""
    from nativellm.errors import ToolchainError

    fake = tmp_path / "cuda" / "bin" / "nvcc"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ToolchainError) as info:
        cudalibs.driver_stub(str(fake), tmp_path / "lib")
    assert info.value.exit_code == 11 and "no include/cuda.h" in info.value.message
    assert "\n" not in info.value.message and info.value.hint
    assert not (tmp_path / "lib" / "libcuda.so").exists()
