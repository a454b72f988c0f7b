"""Version parsing, in one place: toolkit releases ("12.8"), driver versions ("570.144.03"), tool
banners ("cmake version 3.28.1"). Comparisons are on integer tuples, never on strings."""

from __future__ import annotations

import re

_NUMBERS = re.compile(r"\d+")
_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)")
_DOTTED = re.compile(r"\d+\.\d+(?:\.\d+)?")


def version_tuple(text: str, parts: int | None = None) -> tuple[int, ...]:
    """The numbers in `text` in order, at most `parts` of them: "570.144.03" -> (570, 144, 3)."""
    numbers = tuple(int(x) for x in _NUMBERS.findall(text))
    return numbers if parts is None else numbers[:parts]


def major_minor(text: str, after: str = "") -> tuple[int, int] | None:
    """The first "X.Y" in `text` (after the word `after`, when given): "release 12.8, V12.8.93" -> (12, 8)."""
    m = re.search(rf"{re.escape(after)}\s*(\d+)\.(\d+)", text) if after else _MAJOR_MINOR.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def major_minor_text(text: str, after: str = "") -> str | None:
    """major_minor as the "X.Y" string the HostProfile uses, or None."""
    mm = major_minor(text, after)
    return f"{mm[0]}.{mm[1]}" if mm else None


def dotted(text: str) -> str | None:
    """The first X.Y or X.Y.Z in `text` as written: "cmake version 3.28.1" -> "3.28.1"."""
    m = _DOTTED.search(text)
    return m.group(0) if m else None
