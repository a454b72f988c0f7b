"""cuBLAS for CUDA builds: from the CUDA toolkit, or from NVIDIA's pip wheels (`nvidia-cublas`).

Many hosts have nvcc but no cuBLAS in the toolkit: their CUDA libraries came from PyPI, where
`nvidia-cublas` (CUDA 13: `nvidia/cu13/{lib,include}`) or `nvidia-cublas-cu12` (`nvidia/cublas/...`)
ship `libcublas.so.N` and its headers without the unversioned `libcublas.so` that CMake links by.

- At build time `shim()` lays out a small prefix (`include/` with the cuBLAS headers, `lib/` with
  unversioned links) that the superbuild hands to CMake (NATIVELLM_CUDA_LIBS), so llama.cpp's own
  `find_package(CUDAToolkit)` finds `CUDA::cublas` there.
- At run time `link_runtime()` links the sonames the binaries need and the host's loader can't find
  into the build's `lib/`, which the binaries' RUNPATH ($ORIGIN/../lib) already searches: no
  LD_LIBRARY_PATH. The links are recorded in the manifest (`runtime_libs`); `pack` leaves them out
  and `install-artifact` makes them again from the installing host's own wheels or toolkit.
"""

from __future__ import annotations

import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.build.elf import find_needed
from nativellm.errors import ToolchainError

SITE_ENV = "NATIVELLM_CUDA_SITE"
"""Extra site-packages directories (os.pathsep-separated) searched for NVIDIA's CUDA wheels."""

_CUDA_SONAME = re.compile(r"^lib(cublas|cublasLt|cudart|nvblas)\.so\.\d+$")


@dataclass(frozen=True)
class CudaMath:
    """Where cuBLAS comes from for one CUDA major version."""

    source: str  # "toolkit" or "wheel"
    major: int
    lib_dir: Path
    include_dir: Path
    packages: Mapping[str, str] = field(default_factory=dict)  # wheel name -> version

    def identity(self) -> str:
        """What goes into the build id: the cuBLAS release, not the path it sits at."""
        if self.source == "wheel":
            return ", ".join(f"{n} {v}" for n, v in sorted(self.packages.items())) or f"wheel cu{self.major}"
        return f"toolkit cu{self.major}"

    def describe(self) -> str:
        return f"cuBLAS from {self.identity()} ({self.lib_dir})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cuda_major": self.major,
            "lib_dir": str(self.lib_dir),
            "include_dir": str(self.include_dir),
            "packages": dict(self.packages),
        }


def site_dirs(extra: Iterable[str] = ()) -> list[Path]:
    """Where to look for wheels: $NATIVELLM_CUDA_SITE, then this interpreter's site-packages."""
    found: list[str] = [*extra, *filter(None, os.environ.get(SITE_ENV, "").split(os.pathsep))]
    try:
        found += site.getsitepackages()
    except AttributeError:  # virtualenvs of old virtualenv versions
        pass
    found += [site.getusersitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    found += [p for p in sys.path if p.endswith("-packages")]
    out: list[Path] = []
    for entry in found:
        path = Path(entry)
        if path.is_dir() and path not in out:
            out.append(path)
    return out


def _wheel_layouts(site_dir: Path, major: int) -> list[Path]:
    """The per-wheel roots that hold lib/ and include/ (CUDA 13 merged them into nvidia/cuN)."""
    return [site_dir / "nvidia" / f"cu{major}", site_dir / "nvidia" / "cublas"]


def _wheel_versions(site_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions(path=[str(site_dir)]):
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-cublas"):
            out[name] = dist.version
    return out


def from_wheels(major: int, sites: Sequence[Path]) -> CudaMath | None:
    """cuBLAS `major` from the first site-packages directory that has NVIDIA's wheel for it."""
    for site_dir in sites:
        for root in _wheel_layouts(site_dir, major):
            lib, inc = root / "lib", root / "include"
            if (lib / f"libcublas.so.{major}").is_file() and (inc / "cublas_v2.h").is_file():
                return CudaMath("wheel", major, lib, inc, _wheel_versions(site_dir))
    return None


def toolkit_home(nvcc: str) -> Path:
    """The toolkit `nvcc` belongs to. nvcc on PATH may be a wrapper script (`exec /usr/local/cuda-13.0/
    bin/nvcc "$@"`), so nvcc is asked: its dry run prints the TOP it resolved."""
    near = Path(os.path.realpath(nvcc)).parent.parent
    if (near / "include" / "cuda_runtime.h").is_file():
        return near
    res = run.probe([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], timeout=30)
    m = re.search(r"^#\$ TOP=(.+)$", (res.stdout + res.stderr) if res is not None else "", re.MULTILINE)
    return Path(os.path.realpath(m.group(1).strip())) if m else near


def from_toolkit(nvcc: str | None, major: int) -> CudaMath | None:
    """cuBLAS shipped in the toolkit that `nvcc` belongs to (lib64/, or the targets/ layout)."""
    if nvcc is None:
        return None
    home = toolkit_home(nvcc)
    for lib, inc in (
        (home / "lib64", home / "include"),
        (home / "lib", home / "include"),
        (home / "targets" / "x86_64-linux" / "lib", home / "targets" / "x86_64-linux" / "include"),
        (home / "targets" / "sbsa-linux" / "lib", home / "targets" / "sbsa-linux" / "include"),
    ):
        if (lib / "libcublas.so").exists() and (inc / "cublas_v2.h").is_file():
            return CudaMath("toolkit", major, lib, inc)
    return None


def find_cuda_math(nvcc: str | None, major: int, sites: Sequence[Path] | None = None) -> CudaMath | None:
    """The toolkit's own cuBLAS first (it matches nvcc), else a wheel's."""
    return from_toolkit(nvcc, major) or from_wheels(major, site_dirs() if sites is None else sites)


def shim(math: CudaMath, dest: Path) -> Path | None:
    """For wheel cuBLAS: `dest/include` with links to its headers and `dest/lib` with unversioned
    links (`libcublas.so -> .../libcublas.so.13`), the prefix CMake is pointed at. None for the toolkit."""
    if math.source != "wheel":
        return None
    (dest / "include").mkdir(parents=True, exist_ok=True)
    (dest / "lib").mkdir(parents=True, exist_ok=True)
    links: dict[Path, Path] = {}
    for header in math.include_dir.iterdir():
        if header.name.startswith(("cublas", "nvblas")) and header.suffix == ".h":
            links[dest / "include" / header.name] = header
    for lib in math.lib_dir.iterdir():
        m = re.match(r"^(lib(?:cublas|cublasLt))\.so\.\d+$", lib.name)
        if m:
            links[dest / "lib" / f"{m.group(1)}.so"] = lib
            links[dest / "lib" / lib.name] = lib
    for link, target in links.items():
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return dest


def prefix_for(math: CudaMath | None, nvcc: str | None, dest: Path) -> Path | None:
    """The prefix handed to CMake (NATIVELLM_CUDA_LIBS): wheel cuBLAS, plus a libcuda link stub when
    this host has no driver and no toolkit stub. None when the toolkit has everything."""
    out = shim(math, dest) if math is not None else None
    if nvcc is not None and not has_driver_library(nvcc):
        driver_stub(nvcc, dest / "lib")
        (dest / "include").mkdir(parents=True, exist_ok=True)
        out = dest
    return out


_DRIVER_STUB_DIRS = (
    "lib64/stubs",
    "lib/stubs",
    "targets/x86_64-linux/lib/stubs",
    "targets/sbsa-linux/lib/stubs",
)


def has_driver_library(nvcc: str | None) -> bool:
    """Whether CMake can link libcuda (CUDA::cuda_driver): the driver, or the toolkit's stub."""
    if {"libcuda.so.1", "libcuda.so"} & _loader_sonames():
        return True
    home = toolkit_home(nvcc) if nvcc else None
    return home is not None and any((home / d / "libcuda.so").exists() for d in _DRIVER_STUB_DIRS)


def driver_stub(nvcc: str, dest: Path) -> Path:
    """A link-time stand-in for libcuda (SONAME libcuda.so.1) with every driver entry point that
    the toolkit's cuda.h names, for a build host with nvcc but neither a driver nor the toolkit's
    stubs. The binaries then name libcuda.so.1, which the GPU host's driver provides; the stub never
    ships (it stays in the build's work dir)."""
    home = toolkit_home(nvcc)
    header = next(
        (
            p
            for p in (home / "include" / "cuda.h", home / "targets/x86_64-linux/include/cuda.h")
            if p.is_file()
        ),
        None,
    )
    if header is None:
        raise ToolchainError(
            f"the CUDA toolkit at {home} has no include/cuda.h, and this host has no libcuda to link against",
            "install the CUDA toolkit's headers (cuda-driver-dev / cuda-cudart-dev) or the NVIDIA driver",
        )
    names = sorted(set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\b", header.read_text(errors="replace"))))
    dest.mkdir(parents=True, exist_ok=True)
    src = dest / "libcuda-stub.c"
    src.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
    out = dest / "libcuda.so"
    res = run.probe(
        ["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)], timeout=120
    )
    if res is None or not res.ok:
        why = (res.stderr.strip().splitlines() or ["no output"])[-1] if res is not None else "cc did not run"
        raise ToolchainError(
            f"cc could not build the libcuda link stub for this driverless build host: {why}",
            "install the NVIDIA driver or the CUDA toolkit's stubs (lib64/stubs/libcuda.so)",
        )
    link = dest / "libcuda.so.1"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("libcuda.so")
    return out


def _loader_sonames() -> frozenset[str]:
    """The sonames the dynamic loader finds without help (its ldconfig cache), read once per call
    site: `ldconfig -p` lists every library on the host."""
    res = run.probe(["ldconfig", "-p"])
    if res is None or not res.ok:
        return frozenset()
    return frozenset(line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip())


def needed_cuda_sonames(build_dir: Path) -> list[str]:
    """The CUDA library sonames (cuBLAS, cudart) that the build's ELF files name as DT_NEEDED."""
    names: set[str] = set()
    for sub in ("bin", "lib"):
        d = build_dir / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.is_file() and not f.is_symlink():
                names.update(n for n in (find_needed(f) or ()) if _CUDA_SONAME.match(n))
    return sorted(names)


def link_runtime(build_dir: Path, candidates: Sequence[Path]) -> list[dict[str, str]]:
    """Link each CUDA soname the build needs, and the loader can't find on its own, from the first
    of `candidates` (library directories) that has it into `build_dir/lib`; and what those need in
    turn (libcublas.so.13 needs libcublasLt.so.13, and the wheel gives it no RUNPATH to find it).
    Returns what was linked, and `{"soname": ..., "missing": "yes"}` for each one no candidate has."""
    lib = build_dir / "lib"
    out: list[dict[str, str]] = []
    known = _loader_sonames()
    todo, seen = list(needed_cuda_sonames(build_dir)), set()
    while todo:
        soname = todo.pop(0)
        if soname in seen:
            continue
        seen.add(soname)
        here = lib / soname
        if here.exists() and not here.is_symlink():
            continue  # shipped inside the build itself
        if soname in known:
            continue
        source = next((d / soname for d in candidates if (d / soname).is_file()), None)
        if source is None and here.is_symlink() and here.exists():
            source = Path(os.readlink(here))  # linked before (a rerun): still good
        if source is None:
            out.append({"soname": soname, "missing": "yes"})
            continue
        lib.mkdir(exist_ok=True)
        if here.is_symlink() and Path(os.readlink(here)) != source:
            here.unlink()
        if not here.is_symlink():
            here.symlink_to(source)
        out.append({"soname": soname, "from": str(source)})
        todo += [n for n in (find_needed(source) or ()) if _CUDA_SONAME.match(n)]
    return sorted(out, key=lambda e: e["soname"])


def runtime_lib_dirs(nvcc: str | None, major: int) -> list[Path]:
    """Where this host keeps CUDA runtime libraries: its wheels, then its toolkit."""
    dirs: list[Path] = []
    wheel = from_wheels(major, site_dirs())
    if wheel is not None:
        dirs.append(wheel.lib_dir)
    tk = from_toolkit(nvcc, major)
    if tk is not None:
        dirs.append(tk.lib_dir)
    home = toolkit_home(nvcc) if nvcc else Path("/usr/local/cuda")
    dirs += [home / "lib64", home / "lib", Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/lib")]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def link_names(manifest: Mapping[str, Any]) -> frozenset[str]:
    """The lib/ entries a manifest records as host links (left out of artifacts)."""
    return frozenset(e["soname"] for e in manifest.get("runtime_libs") or () if "from" in e)
