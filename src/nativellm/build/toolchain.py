"""The build toolchain (cmake, ninja, compilers) and recognisers for known build failures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nativellm import run
from nativellm.build.cudalibs import SITE_ENV, CudaMath, find_cuda_math
from nativellm.errors import ToolchainError
from nativellm.hardware.nvidia import find_nvcc, parse_nvcc_version
from nativellm.versions import dotted, major_minor

MIN_CMAKE = (3, 21)


@dataclass(frozen=True)
class Toolchain:
    cmake: str  # path
    ninja: str  # path
    cmake_version: str
    cc: str  # first line of `cc --version`
    cxx: str
    nvcc: str | None = None
    cuda_math: CudaMath | None = None  # where cuBLAS comes from (CUDA builds)

    def identity(self) -> dict[str, str | None]:
        """The parts that change the binaries (paths don't)."""
        out = {"cmake": self.cmake_version, "cc": self.cc, "cxx": self.cxx, "nvcc": self.nvcc}
        if self.cuda_math is not None:  # only CUDA builds: other build ids stay as they were
            out["cublas"] = self.cuda_math.identity()
        return out


def _pip_tool(module: str, exe: str) -> str | None:
    """Prefer the cmake/ninja that came with nativellm from PyPI: a known version."""
    try:
        mod = __import__(module)
        bin_dir = Path(mod.BIN_DIR if module == "ninja" else mod.CMAKE_BIN_DIR)
    except (ImportError, AttributeError):
        return run.which(exe)
    candidate = bin_dir / exe
    return str(candidate) if candidate.is_file() else run.which(exe)


def _first_line(argv: list[str]) -> str | None:
    res = run.probe(argv)
    if res is None or not res.ok:
        return None
    return (res.stdout.strip().splitlines() or [""])[0]


def nvcc_identity(version_text: str) -> str | None:
    """The line of `nvcc --version` that names the release ("Cuda compilation tools, release 13.0,
    V13.0.88"): it changes with every toolkit update, unlike the banner on the first line."""
    for line in version_text.splitlines():
        if "release" in line:
            return line.strip()
    return None


def find_toolchain(need_nvcc: bool = False) -> Toolchain:
    """Locate and check every tool a build needs; raise with a fix for the first one missing."""
    cmake = _pip_tool("cmake", "cmake")
    ninja = _pip_tool("ninja", "ninja")
    if cmake is None:
        raise ToolchainError("cmake is not installed", "pip install cmake (it comes with nativellm)")
    if ninja is None:
        raise ToolchainError("ninja is not installed", "pip install ninja (it comes with nativellm)")
    version_line = _first_line([cmake, "--version"]) or ""
    full = dotted(version_line)
    version = major_minor(full or "")
    if full is None or version is None:
        raise ToolchainError(f"cannot tell the version of {cmake}", "reinstall cmake: pip install -U cmake")
    if version < MIN_CMAKE:
        raise ToolchainError(
            f"cmake {full} is too old; llama.cpp needs {MIN_CMAKE[0]}.{MIN_CMAKE[1]} or newer",
            "pip install -U cmake",
        )
    cc = _first_line(["cc", "--version"])
    cxx = _first_line(["c++", "--version"])
    if cc is None or cxx is None:
        raise ToolchainError(
            "no C/C++ compiler found (cc and c++)",
            "install one: apt-get install build-essential (Debian/Ubuntu) or dnf install gcc-c++",
        )
    nvcc = None
    if need_nvcc:
        nvcc_path = find_nvcc()
        if nvcc_path is None:
            raise ToolchainError(
                "nvcc (the CUDA toolkit) is not installed",
                "install the CUDA toolkit or build with --backend cpu",
            )
        res = run.probe([nvcc_path, "--version"])
        text = res.stdout if res is not None and res.ok else ""
        nvcc = nvcc_identity(text) or nvcc_path
        cuda_math = _cublas_for(nvcc_path, text)
    return Toolchain(cmake, ninja, full, cc, cxx, nvcc, cuda_math if need_nvcc else None)


def _cublas_for(nvcc_path: str, version_text: str) -> CudaMath:
    """cuBLAS matching nvcc's major version, from the toolkit or a pip wheel; raise with the fix."""
    release = parse_nvcc_version(version_text)
    if release is None:
        raise ToolchainError(f"cannot tell the CUDA version of {nvcc_path}", "reinstall the CUDA toolkit")
    major = int(release.split(".")[0])
    found = find_cuda_math(nvcc_path, major)
    if found is None:
        wheel = "nvidia-cublas" if major >= 13 else f"nvidia-cublas-cu{major}"
        raise ToolchainError(
            f"CUDA {release} has nvcc but no cuBLAS (not in the toolkit, no {wheel} wheel found)",
            f"pip install '{wheel}=={major}.*' into nativellm's environment, or set {SITE_ENV} to the "
            "site-packages that has it",
        )
    return found


# (pattern in the build log, what to do) for failures we know.
KNOWN_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"Could NOT find CURL", re.I),
        "libcurl's headers are missing: build with -DLLAMA_CURL=OFF (nativellm's plan does so for trees "
        "that declare LLAMA_CURL) or install libcurl4-openssl-dev",
    ),
    (
        re.compile(r"Unsupported gpu architecture|nvcc fatal.*compute_\d+|unsupported GNU version", re.I),
        "nvcc is too old (or too new) for this GPU architecture or host compiler: newer GPUs need a newer CUDA "
        "(sm_120 needs 12.8+), and CUDA 13 dropped sm_50 to sm_72 (build those with CUDA 12.x)",
    ),
    (
        re.compile(
            r"(c\+\+|cc1plus|g\+\+|clang\+\+|nvcc).*(Killed|signal 9)|Killed signal terminated program", re.I
        ),
        "the compiler was killed, most likely out of memory: rerun with --jobs 1 or add swap",
    ),
    (re.compile(r"No space left on device", re.I), "the disk is full: free space in the store and rerun"),
    (
        re.compile(r"No CMAKE_CUDA_COMPILER could be found|Could NOT find CUDAToolkit", re.I),
        "the CUDA toolkit is missing: install it (nvcc) or build with --backend cpu",
    ),
    (
        re.compile(r"Could NOT find (hip|rocblas|hipblas)|ROCm.*not found", re.I),
        "ROCm is missing: install ROCm (hipcc, hipBLAS) or build with --backend cpu",
    ),
    (
        # Trees from late 2026 use VK_EXT_layer_settings; Debian 12's headers (1.3.239) predate it.
        re.compile(r"LayerSettingEXT.{1,3} is not a member of .{1,3}vk|no member named 'LayerSettingEXT'"),
        "the Vulkan headers are older than this llama.cpp tree needs (vk::LayerSettingEXT): put newer ones "
        "in a private prefix with scripts/vulkan-headers.sh DIR and build with the --define's it prints, "
        "or build an older llama.cpp",
    ),
    (
        re.compile(r"Could NOT find Vulkan|glslc.*not found", re.I),
        "the Vulkan SDK is missing: install libvulkan-dev and glslc, or build with --backend cpu",
    ),
    (
        re.compile(r"No CMAKE_(C|CXX)_COMPILER could be found", re.I),
        "no C/C++ compiler: apt-get install build-essential",
    ),
)


def troubleshoot(log_text: str) -> str | None:
    """The fix for the first known failure signature in a build log, if any."""
    for pattern, hint in KNOWN_FAILURES:
        if pattern.search(log_text):
            return hint
    return None


_CMAKE_ERROR_RE = re.compile(r"^CMake Error\b.*$", re.MULTILINE)
_COMPILER_ERROR_RE = re.compile(r"^(?:FAILED: .*|.*\b(?:fatal )?error: .*)$", re.MULTILINE)
_FATAL_RE = re.compile(r"\b(?:fatal|error)\s*:", re.IGNORECASE)
_ESSENCE_MAX = 300


def failure_essence(log_text: str) -> str | None:
    """The one line that says why a configure or compile failed, from its log; None if it has none.

    CMake's first error (a later one is often a consequence): its message's own text, which carries
    llama.cpp's "Hint: ...", up to a line that introduces quoted output, plus the first fatal/error line
    of that output (nvcc's "Unsupported gpu architecture"). Else the first compiler error. Pure: tested
    on captured real logs."""
    m = _CMAKE_ERROR_RE.search(log_text)
    if m is not None:
        text: list[str] = []
        detail: str | None = None
        for line in log_text[m.end() :].splitlines()[1:]:
            if line.strip() and not line.startswith(" "):
                break  # "Call Stack ...", "-- ...": the message is over
            if line.startswith("   ") and line.strip():  # quoted output, indented deeper than the text
                if detail is None and _FATAL_RE.search(line):
                    detail = line.strip()
            elif line.strip() and not (text and text[-1].endswith(":")):
                text.append(line.strip())
        said = " ".join(text).rstrip(":") if text else m.group(0).split(":", 1)[-1].strip()
        said = said.rstrip(".") + ": " + detail if detail else said
        return _clip(" ".join(said.split()))
    errors = [e.group(0).strip() for e in _COMPILER_ERROR_RE.finditer(log_text)]
    first = next((e for e in errors if not e.startswith("FAILED:")), None)
    return _clip(first) if first else None


def _clip(text: str) -> str:
    return text if len(text) <= _ESSENCE_MAX else text[: _ESSENCE_MAX - 3] + "..."
