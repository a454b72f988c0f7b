"""The bad-input tier: its marker and the session-finish summary table counted from the real runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
RESULTS: list[dict[str, Any]] = []


def record(result: dict[str, Any]) -> None:
    RESULTS.append(result)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.badinput)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    clean = [
        r
        for r in results
        if not (
            r["wrong_code"]
            or r["messy"]
            or r["internal_error"]
            or r["needle_missing"]
            or r["forbidden"]
            or r["state_changed"]
        )
    ]
    return {
        "cases": len(results),
        "clean_errors": len(clean),
        "wrong_codes": sum(1 for r in results if r["wrong_code"]),
        "internal_errors": sum(1 for r in results if r["internal_error"]),
        "messy_output": sum(1 for r in results if r["messy"]),
        "wrong_message": sum(
            1 for r in results if (r["needle_missing"] or r["forbidden"]) and not r["messy"]
        ),
        "state_changed": sum(1 for r in results if r["state_changed"]),
        "timed_out": sum(1 for r in results if r.get("timed_out")),
        "marked_xfail": sum(1 for r in results if r["xfail"]),
        "not_clean": [
            {k: r[k] for k in ("id", "expected_code", "code", "error_line", "xfail", "changes")}
            for r in results
            if r not in clean
        ],
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not RESULTS:
        return
    doc = summary(RESULTS)
    target = os.environ.get("NATIVELLM_BADINPUT_REPORT")
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    path: Path | None = None
    if target:
        path = Path(target)
    elif cache is not None:
        path = Path(str(cache.mkdir("badinput"))) / "report.json"
    if path is not None:
        path.write_text(json.dumps(doc, indent=2) + "\n")
    tr = terminalreporter
    tr.section("bad-input tier")
    rows = [
        ("cases", doc["cases"]),
        ("clean errors", doc["clean_errors"]),
        ("wrong exit codes", doc["wrong_codes"]),
        ("internal errors", doc["internal_errors"]),
        ("messy output (traceback / no hint)", doc["messy_output"]),
        ("wrong message", doc["wrong_message"]),
        ("state changed", doc["state_changed"]),
        ("timed out (also a wrong code, messy)", doc["timed_out"]),
        ("cases marked xfail (known findings)", doc["marked_xfail"]),
    ]
    for label, n in rows:
        tr.write_line(f"  {label:<40} {n:>4}")
    for r in doc["not_clean"]:
        tr.write_line(
            f"  not clean: {r['id']} (exit {r['code']}, want {r['expected_code']}){' [xfail]' if r['xfail'] else ''}"
        )
    if path is not None:
        tr.write_line(f"  report: {path}")
