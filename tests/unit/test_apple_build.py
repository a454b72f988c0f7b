"""macOS builds that load: @rpath install names and @loader_path RPATHs in the generated CMake
arguments, $ORIGIN kept on Linux, and the installed bin/ + lib/ layout checked from the Mach-O load
commands of a constructed tree (mach-o/loader.h), as dyld would resolve it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from nativellm.build.cmake import configure_argv
from nativellm.build.plan import Backend, PlanOptions, plan_build
from nativellm.build.plan_apple import INSTALL_RPATH, MachO, layout_problems, read_macho
from nativellm.build.toolchain import Toolchain
from nativellm.hardware.profile import HostProfile
from nativellm.paths import package_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOOLS = Toolchain("/usr/bin/cmake", "/usr/bin/ninja", "3.28.3", "cc", "c++")
MAC_PROFILES = ("apple-m2", "apple-m4-pro-48g")


def _profile(name: str) -> HostProfile:
    return HostProfile.from_dict(json.loads((FIXTURES / "profiles" / f"{name}.json").read_text()))


def _argv(name: str, backend: Backend | None = None) -> list[str]:
    plan = plan_build(_profile(name), PlanOptions(backend=backend))
    return configure_argv(TOOLS, plan, Path("/src/llama.cpp"), Path("/work/build"))


@pytest.mark.parametrize("name", MAC_PROFILES)
@pytest.mark.parametrize("backend", [None, Backend.METAL, Backend.CPU])
def test_macos_configure_argv_has_loader_path_rpath(name: str, backend: Backend | None) -> None:
    argv = _argv(name, backend)
    for wanted in ("-DCMAKE_INSTALL_RPATH=@loader_path/../lib", "-DCMAKE_INSTALL_NAME_DIR=@rpath",
                   "-DCMAKE_MACOSX_RPATH=ON", "-DBUILD_SHARED_LIBS=ON"):  # fmt: skip
        assert wanted in argv
    assert not any("$ORIGIN" in a for a in argv)
    metal = backend is not Backend.CPU
    assert ("-DGGML_METAL=ON" in argv) is metal
    assert ("-DGGML_METAL_EMBED_LIBRARY=ON" in argv) is metal  # no loose .metallib to lose
    assert ("-DGGML_METAL=OFF" in argv) is not metal


@pytest.mark.parametrize("name", ["h200", "graviton3", "zen4-epyc", "this-dev-vm"])
def test_linux_configure_argv_keeps_origin(name: str) -> None:
    """Linux plans pass no RPATH define: cpp/CMakeLists.txt's $ORIGIN/../lib applies, as before."""
    argv = _argv(name)
    assert not any(a.startswith(("-DCMAKE_INSTALL_RPATH", "-DCMAKE_INSTALL_NAME_DIR")) for a in argv)
    assert not any("@loader_path" in a or "@rpath" in a for a in argv)


def test_superbuild_defaults_per_platform() -> None:
    """The superbuild's own defaults (a configure without a plan): @loader_path under APPLE, $ORIGIN
    elsewhere, both as cache entries so the plan's -D values are not shadowed by a normal variable."""
    text = (package_data("cpp") / "CMakeLists.txt").read_text()
    apple_block = text.split("if(APPLE)", 1)[1].split("else()", 1)[0]
    other_block = text.split("if(APPLE)", 1)[1].split("else()", 1)[1].split("endif()", 1)[0]
    assert f'set(CMAKE_INSTALL_RPATH "{INSTALL_RPATH}" CACHE STRING "")' in apple_block
    assert 'set(CMAKE_INSTALL_NAME_DIR "@rpath" CACHE STRING "")' in apple_block
    assert 'set(CMAKE_INSTALL_RPATH "$ORIGIN/../lib" CACHE STRING "")' in other_block
    assert 'set(CMAKE_INSTALL_RPATH "$ORIGIN/../lib")\n' not in text  # a normal variable would shadow -D


def test_ggml_metal_embed_library_is_an_option_of_the_tree() -> None:
    """The option names the plan passes exist in a real ggml/CMakeLists.txt (vendored copy)."""
    text = (FIXTURES / "cmake" / "llama.cpp-0c1e570-ggml-CMakeLists.txt").read_text()
    assert "option(GGML_METAL_EMBED_LIBRARY" in text and "option(GGML_METAL " in text


# -- Mach-O files as ld64 writes them (mach-o/loader.h) ------------------------------------------------
_MH_EXECUTE, _MH_DYLIB = 0x2, 0x6
_CPU_ARM64 = 0x0100000C
_LC_LOAD_DYLIB, _LC_ID_DYLIB, _LC_RPATH = 0xC, 0xD, 0x8000001C


def _lc_dylib(cmd: int, name: str) -> bytes:
    raw = name.encode() + b"\0"
    size = (24 + len(raw) + 7) // 8 * 8
    return struct.pack("<6I", cmd, size, 24, 2, 0x10000, 0x10000) + raw.ljust(size - 24, b"\0")


def _lc_rpath(path: str) -> bytes:
    raw = path.encode() + b"\0"
    size = (12 + len(raw) + 7) // 8 * 8
    return struct.pack("<3I", _LC_RPATH, size, 12) + raw.ljust(size - 12, b"\0")


def _macho(path: Path, *, name: str | None = None, needs: tuple[str, ...] = (), rpaths: tuple[str, ...] = (),
           fat: bool = False) -> None:  # fmt: skip
    cmds = ([_lc_dylib(_LC_ID_DYLIB, name)] if name else []) + [_lc_dylib(_LC_LOAD_DYLIB, n) for n in needs]
    cmds += [_lc_rpath(r) for r in rpaths]
    body = b"".join(cmds)
    kind = _MH_DYLIB if name else _MH_EXECUTE
    image = struct.pack("<8I", 0xFEEDFACF, _CPU_ARM64, 0, kind, len(cmds), len(body), 0x85, 0) + body
    if fat:  # universal binary: fat_header + one fat_arch, big-endian, slice at 4096
        image = (
            struct.pack(">2I5I", 0xCAFEBABE, 1, _CPU_ARM64, 0, 4096, len(image), 14).ljust(4096, b"\0")
            + image
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)


METAL = "/System/Library/Frameworks/Metal.framework/Versions/A/Metal"
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"


def _stage(root: Path, *, rpath: str = INSTALL_RPATH, fat: bool = False) -> Path:
    """What `cmake --install --component nativellm` writes for a Metal build (cpp/CMakeLists.txt):
    executables in bin/, shared libraries in lib/ named @rpath/..., Metal embedded in libggml-metal."""
    for exe in ("llama-server", "llama-bench", "llama-quantize"):
        _macho(root / "bin" / exe, needs=("@rpath/libllama.dylib", "@rpath/libggml.dylib", LIBSYSTEM),
               rpaths=(rpath,), fat=fat)  # fmt: skip
    _macho(root / "lib" / "libllama.dylib", name="@rpath/libllama.dylib",
           needs=("@rpath/libggml.dylib", "@rpath/libggml-base.dylib", LIBSYSTEM), rpaths=("@loader_path",))  # fmt: skip
    _macho(root / "lib" / "libggml.dylib", name="@rpath/libggml.dylib",
           needs=("@rpath/libggml-base.dylib", "@rpath/libggml-cpu.dylib", "@rpath/libggml-metal.dylib"),
           rpaths=("@loader_path",))  # fmt: skip
    _macho(root / "lib" / "libggml-base.dylib", name="@rpath/libggml-base.dylib", needs=(LIBSYSTEM,))
    _macho(root / "lib" / "libggml-cpu.dylib", name="@rpath/libggml-cpu.dylib", needs=("@rpath/libggml-base.dylib",),
           rpaths=("@loader_path",))  # fmt: skip
    _macho(root / "lib" / "libggml-metal.dylib", name="@rpath/libggml-metal.dylib",
           needs=("@rpath/libggml-base.dylib", METAL), rpaths=("@loader_path",))  # fmt: skip
    (root / "share" / "nativellm").mkdir(parents=True)
    (root / "share" / "nativellm" / "nativellm-cmake.json").write_text("{}\n")
    return root


def test_read_macho_load_commands(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    assert read_macho(stage / "bin" / "llama-server") == MachO(
        None, ("@rpath/libllama.dylib", "@rpath/libggml.dylib", LIBSYSTEM), (INSTALL_RPATH,)
    )
    lib = read_macho(stage / "lib" / "libggml-metal.dylib")
    assert lib is not None and lib.install_name == "@rpath/libggml-metal.dylib"
    assert read_macho(stage / "share" / "nativellm" / "nativellm-cmake.json") is None


def test_relocatable_macos_tree_loads(tmp_path: Path) -> None:
    assert layout_problems(_stage(tmp_path / "a")) == []
    assert layout_problems(_stage(tmp_path / "b", fat=True)) == []


def test_origin_rpath_does_not_load_on_macos(tmp_path: Path) -> None:
    """The bug of issue 17: a Linux-style RUNPATH means nothing to dyld."""
    problems = layout_problems(_stage(tmp_path, rpath="$ORIGIN/../lib"))
    assert any(
        p.startswith("bin/llama-server: needs @rpath/libllama.dylib, which no LC_RPATH") for p in problems
    )
    assert any("LC_RPATH $ORIGIN/../lib is absolute" in p for p in problems)


def test_layout_problems_name_each_fault(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    (stage / "lib" / "libggml-cpu.dylib").unlink()
    _macho(stage / "lib" / "libggml-base.dylib", name="/Users/ci/llama.cpp/build/bin/libggml-base.dylib")
    _macho(stage / "bin" / "llama-bench", needs=("/Users/ci/llama.cpp/build/bin/libllama.dylib",),
           rpaths=("/Users/ci/llama.cpp/build/bin",))  # fmt: skip
    (stage / "bin" / "default.metallib").write_bytes(b"MTLB")
    problems = layout_problems(stage)
    assert (
        "lib/libggml.dylib: needs @rpath/libggml-cpu.dylib, which no LC_RPATH (@loader_path) finds"
        in problems
    )
    assert any(p.startswith("lib/libggml-base.dylib: install name /Users/ci/") for p in problems)
    assert any(p.startswith("bin/llama-bench: needs /Users/ci/") and "absolute path" in p for p in problems)
    assert any(p.startswith("bin/llama-bench: LC_RPATH /Users/ci/") for p in problems)
    assert any(p.startswith("bin/default.metallib: a loose Metal library") for p in problems)


@pytest.mark.parametrize(
    "data", [b"", b"\xcf\xfa\xed\xfe", b"\x7fELF" + b"\0" * 60, b"\xca\xfe\xba\xbe\0\0\0\1"]
)
def test_read_macho_is_total(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert read_macho(path) is None
    assert read_macho(tmp_path / "missing") is None
