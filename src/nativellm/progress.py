"""The Reporter protocol: how long-running work (builds, installs, downloads) tells the user what it
is doing. The CLI implements it with a progress bar; library callers get SilentReporter."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """How a build tells the user what it is doing (the CLI renders it)."""

    def stage(self, message: str) -> None: ...
    def progress(self, done: int, total: int) -> None: ...
    def warn(self, message: str) -> None: ...


class SilentReporter:
    def stage(self, message: str) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def warn(self, message: str) -> None:
        pass
