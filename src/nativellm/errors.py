"""Typed errors. Each class has a stable exit code; the CLI maps them in one place."""

from __future__ import annotations


class NativeLLMError(Exception):
    """Base error: a one-line message plus a hint that says what to do next."""

    exit_code: int = 1
    kind: str = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(NativeLLMError):
    exit_code = 2
    kind = "usage"


class NotFoundError(NativeLLMError):
    """A path, name or build that the user named does not exist."""

    exit_code = 3
    kind = "not_found"


class PlanError(NativeLLMError):
    """The requested build is impossible on the profile (toolkit too old, no GPU...)."""

    exit_code = 4
    kind = "plan"


class SourceError(NativeLLMError):
    """llama.cpp source could not be obtained or verified."""

    exit_code = 5
    kind = "source"


class BuildError(NativeLLMError):
    """Configure or compile failed."""

    exit_code = 6
    kind = "build"


class UiError(BuildError):
    """The web UI could not be built or fetched. `build` goes on without it and warns; this is the why."""

    kind = "ui"


class SmokeTestError(NativeLLMError):
    """The built binaries did not pass real inference."""

    exit_code = 7
    kind = "smoke_test"


class StoreError(NativeLLMError):
    """The build store refused an operation (locked, current, pinned...)."""

    exit_code = 8
    kind = "store"


class ModelError(NativeLLMError):
    """A model file is invalid, missing or does not fit."""

    exit_code = 9
    kind = "model"


class InstanceError(NativeLLMError):
    exit_code = 10
    kind = "instance"


class ToolchainError(NativeLLMError):
    """A required tool (compiler, cmake, git) is missing or too old."""

    exit_code = 11
    kind = "toolchain"


class ResourceError(NativeLLMError):
    """Disk full, out of memory, a busy lock on a resource."""

    exit_code = 12
    kind = "resource"


class DownloadError(NativeLLMError):
    exit_code = 13
    kind = "download"


class ArtifactError(NativeLLMError):
    """A build artifact is corrupt, unverifiable, or needs hardware this host lacks."""

    exit_code = 14
    kind = "artifact"


class Interrupted(NativeLLMError):
    exit_code = 130
    kind = "interrupted"
