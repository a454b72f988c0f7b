"""What an ELF executable needs from the host: its DT_NEEDED entries, read from the file itself.

`build --single-binary` promises a llama-server that needs only the C library; this module is how
the build and `pack --single-binary` check that promise without running ldd (ldd runs the binary's
loader, and on a cross-built binary there may be none).
"""

from __future__ import annotations

import struct
from pathlib import Path

GLIBC_SONAMES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        # Their own files before glibc 2.34, empty stubs in it since; one package (libc6) either way.
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        # The dynamic loader is named as NEEDED by some linkers; it is glibc's too.
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    }
)
"""Sonames of the GNU C library: what a single binary may still need from the host."""

_SHT_DYNAMIC = 6
_DT_NULL, _DT_NEEDED = 0, 1


def find_needed(path: Path) -> tuple[str, ...] | None:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF file (x86-64, aarch64), in file order;
    () for a static executable; None when `path` is not such a file or can't be read."""
    try:
        data = path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELFCLASS64, ELFDATA2LSB
            return None
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        needed: list[str] = []
        for _, sh_type, _, _, offset, size, link, _, _, _ in sections:
            if sh_type != _SHT_DYNAMIC:
                continue
            strtab = sections[link][4]
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == _DT_NULL:
                    break
                if tag == _DT_NEEDED:
                    start = strtab + value
                    needed.append(data[start : data.index(b"\0", start)].decode())
        return tuple(needed)
    except (OSError, struct.error, IndexError, ValueError):
        return None


def beyond_glibc(needed: tuple[str, ...]) -> tuple[str, ...]:
    """The sonames in `needed` that are not part of glibc."""
    return tuple(n for n in needed if n not in GLIBC_SONAMES)
