"""What `nativellm build` was asked to do and what it did: shared by the pipeline, the artifact index
step and the upgrade use case, so none of them imports another for its types."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativellm.build.plan import BuildPlan, PlanOptions
from nativellm.build.source import SourceRequest
from nativellm.build.store import BuildRecord
from nativellm.build.ui import UiAssets
from nativellm.hardware import HostProfile


@dataclass(frozen=True)
class BuildOptions:
    """Everything `nativellm build` was asked to do."""

    auto: bool = True  # retry without the suspect ISA family when the smoke test crashes
    profile: Path | None = None
    plan: PlanOptions = field(default_factory=PlanOptions)
    source: SourceRequest = field(default_factory=SourceRequest)
    jobs: int | None = None
    dry_run: bool = False
    activate: bool = True
    from_index: str | None = None  # artifact index (URL or dir): install a match instead of compiling
    insecure_unsigned: bool = False  # issue 14: --from-index without a verified signature (warned)


@dataclass(frozen=True)
class BuildOutcome:
    plan: BuildPlan
    build_id: str | None
    cached: bool = False
    changed: bool = False
    activated: bool = False
    record: BuildRecord | None = None
    fallbacks: tuple[dict[str, Any], ...] = ()
    jobs: int = 0
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()
    ui: UiAssets | None = None  # the web UI assets embedded; None: left out (the plan and notes say why)


def runs_here(target: HostProfile, here: HostProfile) -> bool:
    """Can binaries built for `target` run (and so be smoke-tested) on `here`?"""
    return target.arch == here.arch and set(target.cpu.flags) <= set(here.cpu.flags)
