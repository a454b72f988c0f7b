"""The shared vocabulary of build planning: what the user asked for (PlanOptions), the backend enum, the
plan under construction (Draft) and the one way a plan is refused. plan.py (CPU ISA, tree adaptation,
the BuildPlan document) and plan_gpu.py (GPU backends) both build on it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nativellm.errors import PlanError
from nativellm.versions import major_minor

MACOS = frozenset({"macos", "darwin"})


class Backend(str, Enum):
    """The GPU (or CPU-only) backend of a build. `str` mixin instead of StrEnum: Python 3.10."""

    CPU = "cpu"
    CUDA = "cuda"
    HIP = "hip"
    VULKAN = "vulkan"
    METAL = "metal"
    SYCL = "sycl"

    def __str__(self) -> str:
        return self.value

    @property
    def cmake_option(self) -> str | None:
        return _BACKEND_OPTION[self]


# ggml's switch for each backend: GGML_CUDA, GGML_HIP, GGML_VULKAN, GGML_METAL, GGML_SYCL.
_BACKEND_OPTION: dict[Backend, str | None] = {b: f"GGML_{b.value.upper()}" for b in Backend}
_BACKEND_OPTION[Backend.CPU] = None


@dataclass(frozen=True)
class PlanOptions:
    """What the user asked for. The CLI turns its flags into this; nothing here looks at the host."""

    backend: Backend | None = None  # None: auto (cuda, hip, metal, vulkan, then cpu; see _auto_backend)
    portable: bool = False  # GGML_CPU_ALL_VARIANTS + GGML_BACKEND_DL: one build for any CPU of the arch
    native: bool = False  # GGML_NATIVE=ON (-march=native): for benchmarks only, not reproducible
    baseline: bool = False  # llama.cpp's generic default ISA set (up to AVX2), as distros ship it
    disable: frozenset[str] = frozenset()  # families forced OFF ("amx", "avx512", "sve", ...)
    disable_reasons: tuple[tuple[str, str], ...] = ()  # family -> why; a family named here is disabled too
    rpc: bool = False  # GGML_RPC=ON and the rpc-server target
    single_binary: bool = False  # static llama/ggml/libstdc++, no OpenMP: bin/llama-server needs only glibc
    build_type: str = "Release"
    defines: tuple[tuple[str, str], ...] = ()  # --define KEY=VALUE: passed as given, after everything else
    ui: bool = True  # the web UI: built with npm (build/ui.py) and embedded; False: --no-ui
    no_ui_reason: str = ""  # why the UI is off when not by --no-ui (the build found no npm, ...)

    def disabled(self) -> dict[str, str]:
        """Every disabled family with its reason."""
        reasons = dict(self.disable_reasons)
        return {fam: reasons.get(fam, "requested") for fam in sorted(self.disable | reasons.keys())}


class Draft:
    """The plan under construction: one place that keeps a reason next to every define."""

    def __init__(self) -> None:
        self.defines: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.warnings: list[str] = []

    def set(self, key: str, value: str, reason: str) -> None:
        self.defines[key] = value
        self.reasons[key] = reason


def refuse(message: str, fix: str, sep: str = "; ") -> PlanError:
    """A PlanError whose message ends with the fix, which is also its hint."""
    return PlanError(f"{message}{sep}{fix}", fix)


def no_gpu(backend: str, what: str) -> PlanError:
    fix = "build with --backend cpu, or plan for the GPU host with its profile (--profile FILE)"
    return refuse(f"--backend {backend} needs {what}, and this profile has none", fix)


def version_of(text: str, what: str) -> tuple[int, int]:
    mm = major_minor(text)
    if mm is None:
        raise PlanError(f"{what} version {text!r} is not major.minor", "re-run `nativellm detect`")
    return mm
