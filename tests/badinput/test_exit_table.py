"""The README's "Exit codes" table, errors.py and the bad-input table must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from nativellm import errors
from nativellm.errors import NativeLLMError
from nativellm.ops.doctor import DoctorFoundProblems
from nativellm.ops.upgrade import UpgradeError
from tests.badinput.cases import CASES

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[int, str]:
    """code -> class column of the README's "Exit codes" table."""
    text = README.read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \|", section, re.M)
    assert rows, "no table under ## Exit codes"
    return {int(code): name.strip() for code, name in rows}


def error_classes() -> dict[int, type[NativeLLMError]]:
    """exit code -> the error class that carries it (errors.py, plus the two kept beside their use case)."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, NativeLLMError)]
    classes += [DoctorFoundProblems, UpgradeError]
    by_code: dict[int, type[NativeLLMError]] = {}
    for c in classes:
        if c is NativeLLMError or (c.exit_code in by_code and issubclass(c, by_code[c.exit_code])):
            continue  # the base (internal error), and subclasses sharing their parent's code (UiError)
        by_code[c.exit_code] = c
    return by_code


def test_every_error_class_is_in_the_readme_table() -> None:
    table = readme_table()
    for code, cls in error_classes().items():
        assert code in table, f"{cls.__name__} (exit {code}) is missing from the README table"
        assert cls.kind.replace("_", " ") in table[code], (code, cls.kind, table[code])
    assert table.get(0) == "ok" and table.get(1) == "internal error"
    assert set(table) == {0, 1, *error_classes()}, "the README lists a code no error class has"


def test_every_expected_code_of_the_suite_is_documented() -> None:
    table, classes = readme_table(), error_classes()
    for case in CASES:
        assert case.code in table and case.code in classes, f"{case.id} expects undocumented exit {case.code}"
        assert case.code not in (0, 1), f"{case.id}: a bad input must fail with a documented, specific code"


def test_the_tier_is_big_and_covers_every_command() -> None:
    assert len(CASES) >= 150
    firsts = {c.argv[0] for c in CASES}
    commands = {
        "detect", "plan", "build", "builds", "pack", "artifacts", "install-artifact", "upgrade", "model",
        "instance", "start", "stop", "restart", "enable", "disable", "status", "logs", "run", "bench",
        "doctor", "fingerprint",
    }  # fmt: skip
    assert commands <= firsts, commands - firsts
