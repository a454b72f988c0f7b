"""One validator per kind of value that reaches a unit file, an argv or a path.

Each takes the raw text and what it came from (`--memory-max`, `<file>: memory_max`), returns the
value to store, and raises UsageError with a hint on anything else. Control characters
(below 0x20, and 0x7f) are refused by every one of them: systemd ends a unit-file line at `\\n`
*and* at `\\r`, so a value carrying either could add directives to a unit.
"""

from __future__ import annotations

import ipaddress
import math
import re

from nativellm.errors import UsageError

# systemd allows [A-Za-z0-9:_.\-] (and \x escapes) in an instance name; we keep a safe subset
# that needs no escaping anywhere (unit names, file names, journal matches, URLs).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# MemoryMax= (systemd.resource-control(5)): bytes with an optional 1024-based suffix, a
# percentage of physical memory, or "infinity".
_SIZE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGTPE]?)")
_PERCENT = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)%")
_CPU_LIST = re.compile(r"[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_BUILD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
MAX_CPUS = 8192


def printable(value: str) -> str:
    """`value` with control characters shown as escapes, for an error message."""
    return repr(value)


def no_control(value: str, what: str) -> str:
    """Refuse control characters (\\r \\n \\t \\0 ... and DEL) and non-UTF-8 bytes (surrogates)."""
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise UsageError(
                f"{what} {printable(value)} contains a control character ({ch!r})",
                "remove line breaks, tabs and other control characters from the value",
            )
        if 0xD800 <= ord(ch) <= 0xDFFF:  # a byte that was not UTF-8 (surrogateescape)
            shown = value.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise UsageError(f"{what} '{shown}' is not valid UTF-8", "give the value as UTF-8 text")
    return value


def name(value: str, kind: str = "instance") -> str:
    """The one name rule for instances, RPC workers and models: it is used in unit names, file
    names, journal matches and URLs unescaped. fullmatch, so a trailing newline is refused too."""
    if not _NAME.fullmatch(value) or (kind != "model" and value.endswith((".service", ".d"))):
        raise UsageError(
            f"invalid {kind} name {printable(value)}",
            "use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (for example q4)",
        )
    return value


def build_id(value: str, what: str = "--build") -> str:
    """`current`, a build id or a prefix of one: one path component of the store."""
    no_control(value, what)
    if not _BUILD_ID.fullmatch(value):
        raise UsageError(
            f"{what} {printable(value)} is not a build id", "pick an id from `nativellm builds list`"
        )
    return value


def byte_size(value: str, what: str = "--memory-max") -> str:
    """A systemd byte size: `8G`, `512M`, `1.5T`, `1073741824`, `80%` or `infinity`."""
    no_control(value, what)
    hint = "give bytes with an optional K, M, G or T suffix (8G), a percentage (80%) or infinity"
    if value == "infinity":
        return value
    pct = _PERCENT.fullmatch(value)
    if pct:
        if not 0 < float(pct["num"]) <= 100:
            raise UsageError(f"{what} {value!r} is not a percentage from 0 to 100", hint)
        return value
    size = _SIZE.fullmatch(value)
    if not size:
        raise UsageError(f"{what} {printable(value)} is not a size", hint)
    if "." in size["num"] and not size["unit"]:
        raise UsageError(f"{what} {value!r}: a fraction of a byte is not a size", hint)
    if float(size["num"]) == 0:
        raise UsageError(f"{what} {value!r} would leave no memory at all", hint)
    return value


def cpu_list(value: str, what: str = "--cpus") -> str:
    """A CPU list as AllowedCPUs= takes it: `0-3,6`."""
    no_control(value, what)
    hint = "give a CPU count (2.5) or a CPU list (0-3,6)"
    if not _CPU_LIST.fullmatch(value):
        raise UsageError(f"{what} {printable(value)} is not a CPU list", hint)
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise UsageError(f"{what} {value!r}: the range {part} runs backwards", hint)
        if int(hi or lo) >= MAX_CPUS:
            raise UsageError(f"{what} {value!r}: CPU {hi or lo} is out of range", hint)
    return value


def cpus(value: str, what: str = "--cpus") -> str:
    """`--cpus`: a CPU count (CPUQuota=, may be fractional) or a CPU list (AllowedCPUs=)."""
    no_control(value, what)
    if re.fullmatch(r"[0-9]*\.[0-9]+|[0-9]+\.", value):
        count = float(value)
        if not (math.isfinite(count) and 0 < count <= MAX_CPUS):
            raise UsageError(f"{what} {value!r} is not a CPU count", "give a count above 0, e.g. 2.5")
        return value
    return cpu_list(value, what)


def abs_path(value: str, what: str) -> str:
    """An absolute path without control characters (it is written into units as is)."""
    no_control(value, what)
    if not value.startswith("/"):
        raise UsageError(f"{what} {value!r} must be an absolute path", "give the full path")
    return value


def host(value: str, what: str = "--host") -> str:
    """An IP address (v4 or v6, brackets allowed) or a DNS host name."""
    no_control(value, what)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(bare)
        return value
    except ValueError:
        pass
    labels = bare.rstrip(".").split(".")
    if not bare or len(bare) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise UsageError(
            f"{what} {printable(value)} is not an IP address or host name",
            "give an address such as 127.0.0.1, ::1 or a host name such as gpu-2.lan",
        )
    return value


def endpoint(value: str, what: str = "--rpc") -> tuple[str, int]:
    """host:port or [v6]:port -> (host, port)."""
    no_control(value, what)
    head, sep, port = value.rpartition(":")
    if not sep or not head or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"{what} {value!r} is not host:port", "write it as 127.0.0.1:50052")
    host(head, what)
    return head.strip("[]"), int(port)
