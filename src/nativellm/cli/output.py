"""Output for humans (rich) and machines (--json), kept out of the use-case code."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nativellm.errors import NativeLLMError

RESULT_SCHEMA = "nativellm.result/1"

# emoji=False: text like "root:x:0:0" or a path must print as it is, not as ❌.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def envelope(command: str, changed: bool, data: dict[str, Any]) -> dict[str, Any]:
    """The stable envelope of every mutating command's --json output."""
    return {"schema": RESULT_SCHEMA, "ok": True, "command": command, "changed": changed, "data": data}


def error_envelope(command: str, exc: NativeLLMError) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "ok": False,
        "command": command,
        "changed": False,
        "error": {"kind": exc.kind, "message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code},
    }


class ConsoleReporter:
    """Build progress: a live bar on a terminal, plain lines otherwise, nothing on stdout in --json."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = err.is_terminal and not quiet
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_pct = -1
        self._label = "working"

    def stage(self, message: str) -> None:
        self._close()
        self._label = message.split(" ", 1)[0]
        if not self.quiet:
            err.print(f"[bold]>[/bold] {message}")

    def progress(self, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        if self.tty:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn(f"  {self._label}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=err,
                )
                self._progress.start()
                self._task = self._progress.add_task(self._label, total=total)
            self._progress.update(self._task, completed=done, total=total)
            return
        pct = done * 100 // total
        if pct // 10 != self._last_pct // 10 or done == total:
            self._last_pct = pct
            err.print(f"  {self._label} [{done}/{total}] {pct}%")

    def warn(self, message: str) -> None:
        self._close()
        err.print(f"[yellow]warning:[/yellow] {message}")

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._last_pct = -1
