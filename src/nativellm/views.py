"""Human-readable views (rich tables) of profiles, plans, builds."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from nativellm.build import BuildOutcome
from nativellm.hardware import HostProfile
from nativellm.plan import BuildPlan
from nativellm.render import out
from nativellm.store import BuildRecord


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def show_profile(p: HostProfile) -> None:
    out.print(f"[bold]{escape(p.cpu.model)}[/bold] ({p.cpu.vendor}, {p.os}/{p.arch})")
    out.print(
        f"  cores: {p.cpu.physical_cores} physical, {p.cpu.logical_cores} logical, NUMA nodes: {p.cpu.numa_nodes}"
    )
    out.print(f"  memory: {_gib(p.memory_bytes)}")
    out.print(f"  verified flags: {' '.join(p.cpu.flags)}")
    for flag, why in sorted((p.cpu.dropped_flags or {}).items()):
        out.print(f"  [yellow]dropped {flag}[/yellow]: {escape(why)}")
    for g in p.gpus:
        out.print(f"  GPU {g.index}: {escape(g.name)} ({g.vendor} {g.arch}, {_gib(g.memory_bytes)})")
    if not p.gpus:
        out.print("  GPUs: none found")
    t = p.toolkits
    out.print(
        f"  toolkits: cuda={t.cuda or '-'} rocm={t.rocm or '-'} vulkan={t.vulkan or '-'} metal={t.metal}"
    )


def show_plan(plan: BuildPlan) -> None:
    out.print(f"[bold]backend:[/bold] {plan.backend.value}   targets: {', '.join(plan.targets)}")
    table = Table("define", "value", "reason", show_lines=False)
    for key in sorted(plan.cmake_defines):
        table.add_row(key, plan.cmake_defines[key], escape(plan.reasons.get(key, "")))
    out.print(table)
    for w in plan.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(w)}")


def show_build_outcome(o: BuildOutcome) -> None:
    if o.build_id is None:
        show_plan(o.plan)
    for note in o.notes:
        out.print(escape(note))
    if o.activated:
        out.print(f"[green]current -> {o.build_id}[/green] ({o.duration_s:.1f}s)")
    elif o.build_id:
        out.print(f"{o.build_id} is current; nothing changed ({o.duration_s:.1f}s)" if o.cached else "")


def show_builds(records: list[BuildRecord], current: str | None, pins: dict[str, list[str]]) -> None:
    if not records:
        out.print("no builds yet; run `nativellm build --auto`")
        return
    table = Table("", "id", "backend", "created", "source", "smoke", "pinned by")
    for r in records:
        src = r.source.get("ref") or r.source.get("commit", "")[:12] or r.source.get("kind", "")
        table.add_row(
            "*" if r.id == current else "",
            r.id,
            r.backend,
            r.created,
            escape(str(src)),
            "pass" if r.smoke_passed else "-",
            ", ".join(pins.get(r.id, [])),
        )
    out.print(table)
