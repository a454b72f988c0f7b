"""macOS specifics of a build: how the installed binaries find their libraries, and a check of the
installed layout that reads the Mach-O load commands themselves (as build/elf.py reads ELF).

Linux binaries find lib/ through RUNPATH `$ORIGIN/../lib` (cpp/CMakeLists.txt). macOS's dyld knows no
`$ORIGIN`: a library is found through its *install name* (LC_ID_DYLIB, copied into every binary that
links it as LC_LOAD_DYLIB) and, when that name starts with `@rpath/`, through the binary's LC_RPATH
entries, where `@loader_path` is the directory of the binary doing the loading (dyld(1)). So on macOS
the plan asks CMake for install names `@rpath/libX.dylib` and an install RPATH `@loader_path/../lib`;
the tree is then relocatable like the Linux one. Pure: no macOS needed to plan or check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from nativellm.build.draft import MACOS, Draft
from nativellm.hardware.profile import HostProfile

INSTALL_RPATH = "@loader_path/../lib"
LINUX_INSTALL_RPATH = "$ORIGIN/../lib"

# CMake variables (cmake-variables(7)); set on every macOS plan, whatever the backend.
_DEFINES: tuple[tuple[str, str, str], ...] = (
    ("CMAKE_MACOSX_RPATH", "ON", "install names start with @rpath, so dyld searches the binaries' RPATHs"),
    ("CMAKE_INSTALL_NAME_DIR", "@rpath", "each installed dylib is named @rpath/libX.dylib, not a build path"),
    ("CMAKE_INSTALL_RPATH", INSTALL_RPATH, "macOS has no $ORIGIN: bin/ finds lib/ relative to itself"),
    ("CMAKE_BUILD_WITH_INSTALL_RPATH", "OFF", "build-tree binaries keep build paths; install rewrites them"),
)


def macos_defines(profile: HostProfile, draft: Draft) -> None:
    """On macOS: @rpath install names and an @loader_path RPATH. Linux keeps cpp/CMakeLists.txt's
    `$ORIGIN/../lib` and is not passed anything (its plans and build ids stay as they were)."""
    if profile.os not in MACOS:
        return
    for key, value, reason in _DEFINES:
        draft.set(key, value, reason)
    if draft.defines.get("BUILD_SHARED_LIBS") == "ON":
        draft.set(
            "BUILD_SHARED_LIBS",
            "ON",
            f"bin/ finds lib/ through LC_RPATH {INSTALL_RPATH}; GGML_BACKEND_DL needs it",
        )


# -- Mach-O load commands (mach-o/loader.h) -----------------------------------------------------------
_MH_MAGIC_64 = 0xFEEDFACF
_FAT_MAGIC = 0xCAFEBABE  # big-endian header of a universal binary
_LC_REQ_DYLD = 0x80000000
_LC_LOAD_DYLIB = 0xC
_LC_ID_DYLIB = 0xD
_LC_LOAD_WEAK_DYLIB = 0x18 | _LC_REQ_DYLD
_LC_RPATH = 0x1C | _LC_REQ_DYLD
_LC_REEXPORT_DYLIB = 0x1F | _LC_REQ_DYLD
_DYLIB_LOADS = frozenset({_LC_LOAD_DYLIB, _LC_LOAD_WEAK_DYLIB, _LC_REEXPORT_DYLIB})


@dataclass(frozen=True)
class MachO:
    install_name: str | None  # LC_ID_DYLIB: set on a dylib, None on an executable
    needs: tuple[str, ...]  # LC_LOAD_DYLIB (and weak/re-export) names, in file order
    rpaths: tuple[str, ...]  # LC_RPATH entries, in file order


def _lc_str(data: bytes, cmd_start: int, cmdsize: int, offset: int) -> str:
    raw = data[cmd_start + offset : cmd_start + cmdsize]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_macho(path: Path) -> MachO | None:
    """The load commands of a 64-bit little-endian Mach-O (arm64, x86-64), or of the first slice of
    a universal binary; None for anything else or an unreadable/truncated file. Total: never raises."""
    try:
        data = path.read_bytes()
        base = 0
        if len(data) >= 8 and struct.unpack_from(">I", data, 0)[0] == _FAT_MAGIC:
            # fat_header, then fat_arch {cputype, cpusubtype, offset, size, align}, all big-endian.
            base = struct.unpack_from(">5I", data, 8)[2]
        magic, _, _, _, ncmds, _, _, _ = struct.unpack_from("<8I", data, base)
        if magic != _MH_MAGIC_64:
            return None
        pos = base + 32  # sizeof(mach_header_64)
        name: str | None = None
        needs: list[str] = []
        rpaths: list[str] = []
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<2I", data, pos)
            if size < 8:
                return None
            if cmd in _DYLIB_LOADS or cmd == _LC_ID_DYLIB:
                (offset,) = struct.unpack_from("<I", data, pos + 8)  # dylib.name.offset
                text = _lc_str(data, pos, size, offset)
                if cmd == _LC_ID_DYLIB:
                    name = text
                else:
                    needs.append(text)
            elif cmd == _LC_RPATH:
                (offset,) = struct.unpack_from("<I", data, pos + 8)
                rpaths.append(_lc_str(data, pos, size, offset))
            pos += size
        return MachO(name, tuple(needs), tuple(rpaths))
    except (OSError, struct.error, IndexError, ValueError):
        return None


_SYSTEM_PREFIXES = ("/usr/lib/", "/System/Library/")


def layout_problems(stage: Path) -> list[str]:
    """What would keep an installed macOS tree (bin/, lib/) from loading when moved: an @rpath
    dependency that no LC_RPATH of the binary resolves to a file in the tree, an absolute path into
    a build directory, a dylib not named @rpath/..., or a loose .metallib (the library should be
    embedded: GGML_METAL_EMBED_LIBRARY). Empty: it loads. Files that are not Mach-O are skipped."""
    problems: list[str] = []
    for sub in ("bin", "lib"):
        folder = stage / sub
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            rel = f"{sub}/{path.name}"
            if path.suffix == ".metallib":
                problems.append(f"{rel}: a loose Metal library; build with GGML_METAL_EMBED_LIBRARY=ON")
                continue
            if path.is_symlink() or not path.is_file():
                continue
            macho = read_macho(path)
            if macho is None:
                continue
            if macho.install_name is not None and not macho.install_name.startswith("@rpath/"):
                problems.append(f"{rel}: install name {macho.install_name} is not @rpath/{path.name}")
            for rpath in macho.rpaths:
                if not rpath.startswith(("@loader_path", "@executable_path")):
                    problems.append(f"{rel}: LC_RPATH {rpath} is absolute; the tree is not relocatable")
            problems += _unresolved(rel, path, macho)
    return problems


def _unresolved(rel: str, path: Path, macho: MachO) -> list[str]:
    out: list[str] = []
    for need in macho.needs:
        if need.startswith(_SYSTEM_PREFIXES):
            continue  # the OS's own libraries and frameworks (Metal, Foundation, libSystem)
        if need.startswith("@rpath/"):
            leaf = need.removeprefix("@rpath/")
            dirs = [Path(r.replace("@loader_path", str(path.parent), 1)) for r in macho.rpaths
                    if r.startswith("@loader_path")]  # fmt: skip
            if not any((d / leaf).exists() for d in dirs):
                out.append(
                    f"{rel}: needs {need}, which no LC_RPATH ({', '.join(macho.rpaths) or 'none'}) finds"
                )
        elif need.startswith("@loader_path/"):
            if not (path.parent / need.removeprefix("@loader_path/")).exists():
                out.append(f"{rel}: needs {need}, which is not there")
        else:
            out.append(f"{rel}: needs {need} by absolute path; the tree is not relocatable")
    return out
