"""CUDA for real, without a GPU: nativellm's CUDA plan for an H200 (sm_90) and an RTX 5090 (sm_120a),
configured over the cpp/ superbuild against this machine's real nvcc 13.0 with cuBLAS from NVIDIA's
pip wheel (nvidia-cublas, no cuBLAS in the toolkit), and one real CUDA translation unit compiled per
architecture. The object's embedded machine code proves the arch flags reached nvcc.

A full sm_90 build is too long for CI on 2 cores: scripts/cuda-cross-build.sh builds, packs and
installs it, and its recorded results are in the issue note."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from nativellm.build import cudalibs
from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import configure_llama
from nativellm.build.plan import Backend, PlanOptions
from nativellm.build.source import SourceRequest
from nativellm.hardware.nvidia import find_nvcc
from nativellm.paths import resolve_paths
from tests.helpers import _fetch_sdist, cannot_run

pytestmark = pytest.mark.slow

PROFILES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
_CACHE_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\w+=(.*)$", re.MULTILINE)
# A small, self-contained unit of ggml-cuda: it includes common.cuh, and so cuBLAS's headers.
_UNIT = "scale.cu"


@pytest.fixture(scope="module")
def nvcc() -> str:
    found = find_nvcc()
    if found is None:
        cannot_run("no nvcc on this machine (the CUDA 13.0 toolkit; DESIGN.md section 6)")
    if cudalibs.from_wheels(13, cudalibs.site_dirs()) is None:
        cannot_run("no nvidia-cublas 13 wheel in this environment (pip install 'nvidia-cublas==13.*')")
    return found


def _profile(name: str, tmp: Path) -> Path:
    """A captured profile, with the build host's CUDA (13.0) as its toolkit."""
    data = json.loads((PROFILES / name).read_text())
    data["toolkits"]["cuda"] = "13.0"
    out = tmp / name
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(
    ("profile", "arch", "elf"),
    [("h200.json", "90", "sm_90"), ("rtx5090-cuda128.json", "120a", "sm_120a")],
    ids=["sm_90", "sm_120a"],
)
def test_cuda_plan_configures_against_real_nvcc_and_compiles_one_unit(
    profile: str, arch: str, elf: str, nvcc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    opts = BuildOptions(
        profile=_profile(profile, tmp_path),
        plan=PlanOptions(backend=Backend.CUDA, ui=False),
        source=SourceRequest(directory=_fetch_sdist()),
    )
    got = configure_llama(resolve_paths(), opts)  # raises BuildError with CMake's words on failure
    assert got.plan.cmake_defines["CMAKE_CUDA_ARCHITECTURES"] == f"{arch}-real"
    cache = {
        m.group(1): m.group(2)
        for m in _CACHE_LINE_RE.finditer((got.build_dir / "CMakeCache.txt").read_text())
    }
    assert Path(cache["CMAKE_CUDA_COMPILER"]).resolve() == Path(nvcc).resolve()
    detected = next(got.build_dir.glob("CMakeFiles/*/CMakeCUDACompiler.cmake")).read_text()
    assert re.search(r'set\(CMAKE_CUDA_COMPILER_VERSION "13\.0\.', detected), (
        "configured against another nvcc"
    )
    # cuBLAS came from the wheel, through the shim's unversioned link: the toolkit here has none.
    cublas = Path(cache["CUDA_cublas_LIBRARY"])
    assert (
        cublas.name == "libcublas.so"
        and cublas.parent.name == "lib"
        and cublas.parent.parent.name == "cuda-libs"
    )
    wheel = cudalibs.from_wheels(13, cudalibs.site_dirs())
    assert wheel is not None and cublas.resolve() == (wheel.lib_dir / "libcublas.so.13").resolve()

    ninja = shutil.which("ninja") or cache["CMAKE_MAKE_PROGRAM"]
    targets = subprocess.run(
        [ninja, "-C", str(got.build_dir), "-t", "targets", "all"], capture_output=True, text=True
    )
    obj = next(
        line.split(":")[0]
        for line in targets.stdout.splitlines()
        if line.split(":")[0].endswith(f"ggml-cuda.dir/{_UNIT}.o")
    )
    done = subprocess.run([ninja, "-C", str(got.build_dir), obj], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The command ninja ran asked nvcc for exactly this arch's machine code, and nvcc embedded device code.
    commands = subprocess.run(
        [ninja, "-C", str(got.build_dir), "-t", "commands", obj], capture_output=True, text=True
    )
    compile_line = commands.stdout.strip().splitlines()[-1]
    generated = set(re.findall(r"--generate-code=arch=compute_(\w+),code=\[(\w+)\]", compile_line))
    assert generated == {(arch, f"sm_{arch}")}, compile_line
    assert _has_section(got.build_dir / obj, b".nv_fatbin"), "no device code in the object"


def _has_section(path: Path, name: bytes) -> bool:
    """Whether the ELF object at `path` has a section called `name` (64-bit little-endian)."""
    data = path.read_bytes()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    names_off = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        (name_at,) = struct.unpack_from("<I", data, shoff + i * shentsize)
        start = names_off + name_at
        if data[start : data.index(b"\0", start)] == name:
            return True
    return False
