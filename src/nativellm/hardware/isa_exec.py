"""Child process that really executes one instruction per x86 extension family.

Run as ``python -I -S isa_exec.py [--info] FAMILY...`` (or ``python -m
nativellm.hardware.isa_exec``). It must stay stdlib-only so it can be started by
file path without the package on ``sys.path``. An instruction the CPU or the OS
refuses kills this child with SIGILL, never the nativellm process that asked.

Protocol, one line each, flushed before the next step so a crash identifies the
family that caused it::

    amx-perm ok | amx-perm fail: <reason>       (with --info)
    xcr0 0x00000000000602e7                     (with --info)
    start FAMILY
    ok FAMILY | fail FAMILY: <reason>

The machine code was assembled at development time with GNU as
(``as --64``, Intel syntax) and read back with ``objdump -d``; each function is
``void f(void *scratch)`` under the SysV ABI (scratch in rdi) and starts with
``endbr64`` so it stays callable if user-space IBT is ever enabled.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys

ENDBR64 = "f30f1efa"

# family -> (hex bytes, mnemonics). Only caller-saved registers are touched.
CODE: dict[str, tuple[str, str]] = {
    # nop; ret: proves that the mmap+call mechanism itself works
    "base": ("90c3", "nop; ret"),
    # ud2: always #UD; used by tests to prove a crash is contained
    "ud2": ("0f0bc3", "ud2; ret"),
    "xcr0": ("31c90f01d048c1e22048 09d0c3", "xor ecx,ecx; xgetbv; shl rdx,32; or rax,rdx; ret"),
    "avx": ("c5fc57c0 c5fc58c0 c5f877 c3", "vxorps ymm0,ymm0,ymm0; vaddps ymm0,ymm0,ymm0; vzeroupper; ret"),
    "avx2": ("c5fdefc0 c5fdfec0 c5f877 c3", "vpxor ymm0,ymm0,ymm0; vpaddd ymm0,ymm0,ymm0; vzeroupper; ret"),
    "fma": (
        "c5fc57c0 c4e27db8c0 c5f877 c3",
        "vxorps ymm0,ymm0,ymm0; vfmadd231ps ymm0,ymm0,ymm0; vzeroupper; ret",
    ),
    "f16c": ("c5f9efc0 c4e27d13c0 c5f877 c3", "vpxor xmm0,xmm0,xmm0; vcvtph2ps ymm0,xmm0; vzeroupper; ret"),
    "bmi2": ("31c0 c4e2fbf5c0 c3", "xor eax,eax; pdep rax,rax,rax; ret"),
    "avx512f": (
        "62f17d48efc0 62a17d40efc0 62e17d40fec0 c5f447c9 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vpxord zmm16,zmm16,zmm16; vpaddd zmm16,zmm16,zmm0; "
        "kxorw k1,k1,k1; vzeroupper; ret",
    ),
    "avx512bw": (
        "62f17d48efc0 62f17d48fcc0 c4e1f547c9 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vpaddb zmm0,zmm0,zmm0; kxord k1,k1,k1; vzeroupper; ret",
    ),
    "avx512vl": (
        "62a17520efc9 62a17520fec9 c5f877 c3",
        "vpxord ymm17,ymm17,ymm17; vpaddd ymm17,ymm17,ymm17; vzeroupper; ret",
    ),
    "avx512dq": (
        "62f17d48efc0 62f2fd4840c0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vpmullq zmm0,zmm0,zmm0; vzeroupper; ret",
    ),
    "avx512cd": (
        "62f17d48efc0 62f27d4844c0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vplzcntd zmm0,zmm0; vzeroupper; ret",
    ),
    "avx512_vnni": (
        "62f17d48efc0 62f27d4850c0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vpdpbusd zmm0,zmm0,zmm0; vzeroupper; ret",
    ),
    "avx512_bf16": (
        "62f17d48efc0 62f27e4852c0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vdpbf16ps zmm0,zmm0,zmm0; vzeroupper; ret",
    ),
    "avx512vbmi": (
        "62f17d48efc0 62f27d488dc0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vpermb zmm0,zmm0,zmm0; vzeroupper; ret",
    ),
    "avx512_fp16": (
        "62f17d48efc0 62f57c4858c0 c5f877 c3",
        "vpxord zmm0,zmm0,zmm0; vaddph zmm0,zmm0,zmm0; vzeroupper; ret",
    ),
    "avx_vnni": (
        "c5fdefc0 c4e27d50c0 c5f877 c3",
        "vpxor ymm0,ymm0,ymm0; {vex} vpdpbusd ymm0,ymm0,ymm0; vzeroupper; ret",
    ),
    "amx_tile": (
        "c4e2784907 b840000000 c4e27b49c0 c4e27b4b4c0740 c4e27a4b440740 c4e27849c0 c3",
        "ldtilecfg [rdi]; mov eax,64; tilezero tmm0; tileloadd tmm1,[rdi+rax*1+64]; "
        "tilestored [rdi+rax*1+64],tmm0; tilerelease; ret",
    ),
    "amx_int8": (
        "c4e2784907 c4e27b49c0 c4e27b49c8 c4e27b49d0 c4e26b5ec1 c4e27849c0 c3",
        "ldtilecfg [rdi]; tilezero tmm0; tilezero tmm1; tilezero tmm2; "
        "tdpbssd tmm0,tmm1,tmm2; tilerelease; ret",
    ),
    "amx_bf16": (
        "c4e2784907 c4e27b49c0 c4e27b49c8 c4e27b49d0 c4e26a5cc1 c4e27849c0 c3",
        "ldtilecfg [rdi]; tilezero tmm0; tilezero tmm1; tilezero tmm2; "
        "tdpbf16ps tmm0,tmm1,tmm2; tilerelease; ret",
    ),
}

FAMILIES = tuple(k for k in CODE if k not in ("xcr0",))

SYS_ARCH_PRCTL = 158  # x86_64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SCRATCH_SIZE = 4096
_PAGE = 4096


def code_bytes(family: str) -> bytes:
    return bytes.fromhex(ENDBR64 + CODE[family][0].replace(" ", ""))


def tile_config() -> bytes:
    """64-byte LDTILECFG operand: palette 1, tmm0..tmm2 as 16 rows x 64 bytes.

    That shape is valid for tdpbssd/tdpbf16ps (M=16, K=16 dwords, N=16).
    """
    cfg = bytearray(64)
    cfg[0] = 1  # palette_id
    for t in range(3):
        cfg[16 + 2 * t : 18 + 2 * t] = (64).to_bytes(2, "little")  # colsb[t]
        cfg[48 + t] = 16  # rows[t]
    return bytes(cfg)


class _Exec:
    """An executable page holding every probe, plus a scratch page."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        blob = bytearray()
        self.offsets: dict[str, int] = {}
        for name in CODE:
            self.offsets[name] = len(blob)
            blob += code_bytes(name)
            blob += b"\xcc" * (-len(blob) % 16)  # int3 padding between functions
        size = (len(blob) + _PAGE - 1) // _PAGE * _PAGE
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        addr = self.libc.mmap(None, size, rw, flags, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        ctypes.memmove(addr, bytes(blob), len(blob))
        # W^X: write first, then flip to read+execute (SELinux execmem-friendly).
        if self.libc.mprotect(addr, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mprotect(PROT_EXEC) failed: {os.strerror(err)}")
        self.base = int(addr)
        self.scratch = ctypes.create_string_buffer(SCRATCH_SIZE + 64)
        aligned = (ctypes.addressof(self.scratch) + 63) & ~63
        ctypes.memmove(aligned, tile_config(), 64)
        self.scratch_addr = aligned

    def call(self, name: str) -> int:
        fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)(self.base + self.offsets[name])
        return int(fn(self.scratch_addr))

    def request_amx(self) -> str | None:
        """arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA); None on success, else why not."""
        if not sys.platform.startswith("linux"):
            # syscall 158 means something else on other kernels; AMX needs Linux 5.16+.
            return f"AMX tile data permission is a Linux arch_prctl; this is {sys.platform}"
        self.libc.syscall.restype = ctypes.c_long
        rc = self.libc.syscall(
            ctypes.c_long(SYS_ARCH_PRCTL),
            ctypes.c_long(ARCH_REQ_XCOMP_PERM),
            ctypes.c_long(XFEATURE_XTILEDATA),
        )
        if rc == 0:
            return None
        err = ctypes.get_errno()
        return f"arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: {os.strerror(err)} (errno {err})"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if platform.machine().lower() not in ("x86_64", "amd64") or ctypes.sizeof(ctypes.c_void_p) != 8:
        _say(f"fail *: not an x86_64 machine ({platform.machine()})")
        return 2
    info = "--info" in argv
    families = [a for a in argv if not a.startswith("--")]
    try:
        ex = _Exec()
    except OSError as exc:
        _say(f"fail *: cannot map executable memory: {exc}")
        return 3
    if info:
        _say("start base")
        ex.call("base")
        _say("ok base")
    amx_error: str | None = None
    amx_requested = False
    if info or any(f.startswith("amx") for f in families):
        amx_error = ex.request_amx()
        amx_requested = True
    if info:
        _say("amx-perm ok" if amx_error is None else f"amx-perm fail: {amx_error}")
        _say("start xcr0")
        # XGETBV itself faults when the OS has not set CR4.OSXSAVE: that is a result.
        _say(f"xcr0 {ex.call('xcr0'):#018x}")
    for fam in families:
        if fam not in CODE or fam == "xcr0":
            _say(f"fail {fam}: unknown family")
            continue
        if fam.startswith("amx") and amx_requested and amx_error is not None:
            _say(f"fail {fam}: {amx_error}")
            continue
        _say(f"start {fam}")
        ex.call(fam)
        _say(f"ok {fam}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
