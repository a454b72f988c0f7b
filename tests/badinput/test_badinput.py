"""Every case of the bad-input table: a real CLI run in a fresh sandbox, graded the same way.

A case passes when the command exits with the documented code (README "Exit codes", errors.py), says
exactly one `error:` line naming the problem followed by a `hint:` line, prints no traceback, and leaves
every file under the home, the unit directory and the watched `outside` directory as it was (and
creates none of the marker paths a hostile input aims at).
"""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import pytest

from tests.badinput.cases import CASES, Case
from tests.badinput.conftest import record
from tests.badinput.harness import Ctx, diff, snapshot


class BadOutcome(AssertionError):
    """The command's outcome broke a rule. Known findings xfail on this exception only, so that a
    broken setup or a hung command still fails loudly."""


def _params() -> list[object]:
    params: list[object] = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail, raises=BadOutcome)] if case.xfail else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def grade(case: Case, code: int, stderr: str, changes: list[str], utf8: bool = True) -> dict[str, object]:
    """What went wrong with one run, as counted in the session summary."""
    lines = stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    hint_ok = (
        len(errors) == 1 and errors[0] + 1 < len(lines) and lines[errors[0] + 1].strip().startswith("hint: ")
    )
    return {
        "id": case.id,
        "expected_code": case.code,
        "code": code,
        "wrong_code": code != case.code,
        "internal_error": any("internal error" in line for line in lines),
        "messy": "Traceback" in stderr or not hint_ok or not utf8,
        "needle_missing": not (len(errors) == 1 and case.matches(lines[errors[0]])),
        "forbidden": [n for n in case.not_in if len(errors) == 1 and n.lower() in lines[errors[0]].lower()],
        "state_changed": bool(changes),
        "changes": changes[:20],
        "error_line": lines[errors[0]] if len(errors) == 1 else None,
        "xfail": case.xfail,
    }


def kept(case: Case, root: Path, changes: list[str]) -> list[str]:
    """Changes other than the documented leftovers of `case.may_keep` (globs relative to the sandbox)."""
    return [
        c
        for c in changes
        if not any(fnmatch.fnmatch(str(Path(c[2:]).relative_to(root)), g) for g in case.may_keep)
    ]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path) -> None:
    ctx = Ctx(tmp_path)
    try:
        case.setup(ctx)
        argv = [a.format(**ctx.vars) for a in case.argv]
        before = snapshot(ctx.watched())
        try:
            res = ctx.run(argv, timeout=case.timeout)
        except subprocess.TimeoutExpired:
            record({**grade(case, -1, "", []), "timed_out": True, "wrong_code": True, "messy": True})
            raise BadOutcome(f"{argv} ran past {case.timeout} s") from None
        after = snapshot(ctx.watched())
    finally:
        ctx.close()
    changes = kept(case, tmp_path, diff(before, after))
    changes += [f"+ {m}" for m in ctx.markers if (m.exists() or m.is_symlink()) and f"+ {m}" not in changes]
    result = grade(case, res.returncode, res.stderr, changes, ctx.utf8)
    record(result)
    where = (
        f"argv={argv}\nexit {res.returncode}\nstderr:\n{res.stderr[-3000:]}\nstdout:\n{res.stdout[-1000:]}"
    )
    check(res.returncode != 0, where)
    check("Traceback" not in res.stderr, where)
    check(not result["internal_error"], where)
    check(res.returncode == case.code, f"expected exit {case.code}\n{where}")
    check(
        not result["messy"],
        f"not exactly one error: line followed by a hint: line (or output not UTF-8)\n{where}",
    )
    check(not result["needle_missing"], f"the error line does not match {case.needle!r}\n{where}")
    check(not result["forbidden"], f"the error line says {result['forbidden']}\n{where}")
    check(not result["state_changed"], "state changed:\n" + "\n".join(result["changes"]) + f"\n{where}")  # type: ignore[arg-type]


def check(ok: bool, message: str) -> None:
    if not ok:
        raise BadOutcome(message)
