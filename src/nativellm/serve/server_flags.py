"""What a build's llama-server accepts on its command line, read from its own `--help`.

Instances run whichever llama.cpp the user built, from a late-2024 tag to today's, and the
server's flags changed in between: `--flash-attn` took no value until mid-2025 and takes
on|off|auto since; `--mlock` became `--load-mode mmap+mlock`; `--no-webui` is from 2025. A
server exits on a flag it does not know, so the argv is rendered for the build it will run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from nativellm import run

_FLAG = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9-]*$")


@dataclass(frozen=True)
class ServerFlags:
    """The flags one llama-server lists in `--help`. `known` empty: not known (the probe failed,
    or no binary to ask), and then every flag is taken to be there in today's spelling."""

    known: frozenset[str] = frozenset()
    flash_attn_takes_value: bool = True

    def knows(self, flag: str) -> bool:
        return not self.known or flag in self.known

    @property
    def mlock_args(self) -> tuple[str, ...]:
        """How this server spells "lock the model in RAM"."""
        if "--load-mode" in self.known and "--mlock" not in self.known:
            return ("--load-mode", "mmap+mlock")
        return ("--mlock",)

    @property
    def socket_reuse(self) -> str:
        """How this server's listening socket may share its port: "addr" (SO_REUSEADDR, set since
        early 2026, when it gained --reuse-port) or "port" (only SO_REUSEPORT, cpp-httplib's
        default before). After a restart from one era into the other, Linux refuses the bind
        while the previous server's closed connections linger in TIME_WAIT (up to 60 s)."""
        return "addr" if not self.known or "--reuse-port" in self.known else "port"

    def flash_attn_args(self, mode: str) -> tuple[str, ...]:
        """`--flash-attn on|off|auto`; before mid-2025 a bare switch that only turned it on, with
        off the default and no auto (so off and auto render as nothing)."""
        if self.flash_attn_takes_value:
            return ("--flash-attn", mode)
        return ("--flash-attn",) if mode == "on" else ()


# A server nobody could ask: today's flags, in today's spelling.
UNKNOWN = ServerFlags()


def parse_server_help(text: str) -> ServerFlags:
    """Pure: the flags listed in `llama-server --help` output (each option line starts with its
    flags, comma-separated, e.g. `-fa,   --flash-attn [on|off|auto]  set Flash Attention use`)."""
    known: set[str] = set()
    takes_value = True
    for line in text.splitlines():
        tokens = line.strip().replace(",", " ").split()
        names = []
        for tok in tokens:
            if not _FLAG.match(tok):
                break
            names.append(tok)
        known.update(names)
        if "--flash-attn" in names:
            rest = tokens[len(names) :]
            takes_value = bool(rest) and "on|off" in rest[0]
    if not known:
        return UNKNOWN
    return ServerFlags(frozenset(known), flash_attn_takes_value=takes_value)


@functools.lru_cache(maxsize=16)
def _probe_cached(binary: str, _stamp: tuple[int, int]) -> ServerFlags:
    res = run.probe([binary, "--help"], timeout=30)
    if res is None:
        return UNKNOWN
    return parse_server_help(res.stdout + res.stderr)


def probe_server_flags(binary: Path) -> ServerFlags:
    """Ask the binary (`--help`), once per binary file; an unknown answer is ServerFlags()."""
    try:
        real = binary.resolve(strict=True)
        st = real.stat()
    except OSError:
        return UNKNOWN
    return _probe_cached(str(real), (st.st_mtime_ns, st.st_size))
