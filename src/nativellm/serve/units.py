"""systemd unit files as data: one model, one renderer, one quoting function, atomic writes.

A unit is a list of sections; a section is an ordered list of (key, value) entries where a
key may repeat (`ExecStartPost=`, `DeviceAllow=`, `Environment=`). Values are stored already
in unit-file syntax; the helpers below produce that syntax from plain Python values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nativellm.errors import InstanceError
from nativellm.fsutil import write_if_changed

# Characters that need no quoting in an ExecStart= word. Everything else goes in double quotes.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


def _escape_specifiers(text: str, *, expand_env: bool) -> str:
    text = text.replace("%", "%%")
    return text if expand_env else text.replace("$", "$$")


def quote_exec_arg(arg: str, *, expand_env: bool = False) -> str:
    """One ExecStart= argument, so that systemd hands exactly `arg` to the program.

    systemd's rules (systemd.service(5), "Command lines"): words split on whitespace; double
    and single quotes group; C escapes are decoded; `%x` are specifiers (`%%` is a literal %);
    `$VAR` and `${VAR}` are expanded from the environment (`$$` is a literal $); a lone `;`
    separates commands. With `expand_env`, `${VAR}` references are left for systemd to expand
    (the credentials directory); everything else is always literal.
    """
    if "\0" in arg:
        raise InstanceError("an ExecStart argument contains a NUL byte", "remove it from the argument")
    body = _escape_specifiers(arg, expand_env=expand_env)
    if body and _SAFE_WORD.fullmatch(body):
        return body
    out = []
    for ch in body:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    # Quoted, a lone ";" is a literal argument; only an unquoted one separates commands.
    return '"' + "".join(out) + '"'


def exec_line(argv: Sequence[str], *, expand: Iterable[int] = ()) -> str:
    """A full command line; argv[0] must be absolute (a leading @-+!: would change its meaning)."""
    if not argv or not argv[0].startswith("/"):
        raise InstanceError(f"command {argv[:1]} is not an absolute path", "use the full path of the binary")
    keep = set(expand)
    return " ".join(quote_exec_arg(a, expand_env=i in keep) for i, a in enumerate(argv))


def quote_env(key: str, value: str) -> str:
    """An Environment= assignment: quoted, specifiers escaped (systemd does not expand $ here)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise InstanceError(f"invalid environment variable name {key!r}", "use letters, digits and _")
    text = f"{key}={value}".replace("%", "%%")
    out = "".join(_ESCAPES.get(ch, ch) for ch in text)
    return f'"{out}"'


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_value(value: str) -> str:
    """A value for keys that take one literal token (paths, sizes): specifiers escaped.

    systemd ends a line at \\n and also at \\r, so any control character is refused here:
    the spec validators refuse them first; this is the second line of defence."""
    if _CONTROL.search(value):
        raise InstanceError(f"unit value {value!r} contains a control character", "remove it")
    return value.replace("%", "%%")


@dataclass(frozen=True)
class Section:
    name: str
    entries: tuple[tuple[str, str], ...]
    comment: str = ""


@dataclass(frozen=True)
class UnitFile:
    """A unit or drop-in: a header comment and sections in order."""

    sections: tuple[Section, ...]
    header: str = ""

    def get(self, section: str, key: str) -> list[str]:
        return [v for s in self.sections if s.name == section for k, v in s.entries if k == key]


def render(unit: UnitFile) -> str:
    """The one renderer. Deterministic: golden tests lock its output byte for byte."""
    parts: list[str] = []
    if unit.header:
        parts.append("".join(f"# {line}".rstrip() + "\n" for line in unit.header.splitlines()))
    for section in unit.sections:
        lines: list[str] = []
        if section.comment:
            lines.extend(f"# {line}".rstrip() for line in section.comment.splitlines())
        lines.append(f"[{section.name}]")
        for key, value in section.entries:
            # Values arrive in unit-file syntax (quoted and escaped): a raw control character
            # here would end the line early (\r too) and could add a directive.
            if _CONTROL.search(key) or _CONTROL.search(value):
                raise InstanceError(
                    f"{key!r}= value {value!r} contains a control character",
                    "this is a bug in nativellm; please report it",
                )
            lines.append(f"{key}={value}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_unit(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically write a unit; False (and no write) when the file already has this text."""
    return write_if_changed(path, text, mode)
