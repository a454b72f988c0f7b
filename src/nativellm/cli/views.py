"""Every human-facing table and display of the CLI (the --json forms are built by the use cases)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from nativellm.build.options import BuildOutcome
from nativellm.build.plan import BuildPlan
from nativellm.build.store import BuildRecord
from nativellm.cli.output import err, out
from nativellm.hardware import HostProfile
from nativellm.models.fit import FitReport
from nativellm.models.registry import ModelRecord
from nativellm.ops.bench import BuildsReport, Spread
from nativellm.ops.doctor import Finding
from nativellm.ops.loadgen import LoadReport


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
    for g in p.software_gpus:  # issue 15: e.g. lavapipe; used only with --backend vulkan
        out.print(f"  Vulkan {g.index}: {escape(g.name)} (software device on the CPU; --backend vulkan only)")
    t = p.toolkits
    out.print(
        f"  toolkits: cuda={t.cuda or '-'} rocm={t.rocm or '-'} vulkan={t.vulkan or '-'} metal={t.metal}"
    )


def show_plan(plan: BuildPlan) -> None:
    out.print(f"[bold]backend:[/bold] {plan.backend.value}   targets: {', '.join(plan.targets)}")
    table = Table("define", "value", "reason", show_lines=False)
    for key in sorted(plan.cmake_defines):
        table.add_row(key, plan.cmake_defines[key], escape(plan.reasons.get(key, "")))
    for key in plan.dropped():
        table.add_row(key, "(not passed)", escape(plan.reasons[key]))
    out.print(table)
    if plan.source is not None:
        s = plan.source
        known = f" ({s.revision_from})" if s.revision_from else ""
        adapted = f"; adapted: {', '.join(s.adapted)}" if s.adapted else "; no define needed adapting"
        out.print(escape(f"source: commit {s.commit}, build {s.build}{known}{adapted}"))
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


def warn_broken_builds(broken: list[tuple[str, str]]) -> None:
    """One warning per build dir whose manifest is missing or malformed (`builds list` goes on)."""
    for build_id, why in broken:
        err.print(
            f"[yellow]warning:[/yellow] build {escape(build_id)} is broken: {escape(why)}; it is not listed"
        )


def show_builds(records: list[BuildRecord], current: str | None, pins: dict[str, list[str]]) -> None:
    if not records:
        out.print("no builds yet; run `nativellm build --auto`")
        return
    table = Table("", "id", "backend", "created", "source", "smoke", "pinned by")
    for r in records:
        src = r.source.get("ref") or str(r.source.get("commit", ""))[:12] or r.source.get("kind", "")
        table.add_row(
            "*" if r.id == current else "",
            r.id,
            r.backend,
            r.created,
            escape(str(src)),
            {"passed": "pass", "pending": "pending (cross-build)"}.get(r.smoke_state, "-"),
            ", ".join(pins.get(r.id, [])),
        )
    out.print(table)


# --------------------------------------------------------------------------- instances
def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _vram(entries: Sequence[Mapping[str, Any]] | None) -> str:
    """GPU memory of one instance: "-" for none, "?" when no source could tell, else the total
    (and the device names when there are several)."""
    if entries is None:
        return "?"
    if not entries:
        return "-"
    total = _mib(sum(int(e["bytes"]) for e in entries))
    return total if len(entries) == 1 else f"{total} ({'+'.join(str(e['device']) for e in entries)})"


def _models_cell(row: dict[str, Any]) -> str:
    """A single model's name; a router's models with their states (q4 loaded, q8 unloaded)."""
    if not row.get("router"):
        return str(row["model"])
    models = row.get("models")
    if models is None:
        return "router (models: ?)"
    return ", ".join(f"{m['name']} {m['state']}" for m in models)


def show_instance_status(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        out.print("no instances; add one with `nativellm instance add NAME --model MODEL`")
        return
    table = Table(box=None, pad_edge=False)
    for col in (
        "INSTANCE",
        "STATE",
        "PID",
        "UP",
        "RESTARTS",
        "MEMORY",
        "VRAM",
        "CPU",
        "URL",
        "HEALTH",
        "MODEL",
        "BUILD",
        "TOK/S",
        "BUSY",
        "KV",
    ):
        table.add_column(col)
    for r in rows:
        m = r["metrics"]
        state = f"{r['active_state']}/{r['sub_state']}" if r["active_state"] else "no systemd"
        table.add_row(
            r["name"],
            state,
            str(r["pid"] or "-"),
            _uptime(r["uptime_s"]),
            str(r["restarts"] if r["restarts"] is not None else "-"),
            _mib(r["memory_bytes"]),
            _vram(r.get("gpu_memory", [])),
            "-" if r["cpu_s"] is None else f"{r['cpu_s']:.1f}s",
            r["url"],
            r["health"],
            _models_cell(r),
            r["build"],
            f"{m['tokens_per_s']:.1f}" if "tokens_per_s" in m else "-",
            f"{m['requests_processing']:.0f}" if "requests_processing" in m else "-",
            f"{m['kv_cache_usage_ratio']:.0%}" if "kv_cache_usage_ratio" in m else "-",
        )
    out.print(table)
    for r in rows:
        if r["error"]:
            out.print(f"{r['name']}: {r['error']}", markup=False)


# --------------------------------------------------------------------------- models
def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_params(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


class DownloadProgress:
    """A live bar on a terminal, a line every 10% otherwise, nothing at all when quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = err.is_terminal and not quiet
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, int] = {}
        self._t0 = time.monotonic()

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.tty:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("  {task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=err,
                )
                self._progress.start()
            if label not in self._tasks:
                self._tasks[label] = self._progress.add_task(label, total=total or None)
            self._progress.update(self._tasks[label], completed=done, total=total or None)
            return
        step = done * 10 // total if total else done // (100 << 20)
        if step != self._last.get(label, -1) or (total and done == total):
            self._last[label] = step
            pct = f" {done * 100 // total}%" if total else ""
            err.print(f"  {label}: {human_bytes(done)}{f' of {human_bytes(total)}' if total else ''}{pct}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def waiting(self) -> None:
        if not self.quiet:
            err.print("  another pull of this model is running; waiting for it to finish")


def record_json(rec: ModelRecord) -> dict[str, Any]:
    return rec.to_dict()


def show_list(records: list[ModelRecord]) -> None:
    if not records:
        out.print(
            "no models registered; add one with `nativellm model add FILE`, `model pull` or `model demo`"
        )
        return
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "SOURCE", "ARCH", "PARAMS", "QUANT", "SIZE"):
        table.add_column(col, no_wrap=True)
    table.add_column("PATH", overflow="fold")
    for r in records:
        f = r.facts
        table.add_row(
            r.name,
            r.source,
            str(f.get("architecture", "?")),
            human_params(int(f.get("parameters", 0))),
            str(f.get("file_type") or "?"),
            human_bytes(r.size),
            str(r.path) + (f" (+{len(r.parts) - 1} parts)" if r.parts else ""),
        )
    out.print(table)


def show_inspect(rec: ModelRecord) -> None:
    f: Mapping[str, Any] = rec.facts
    rows = [
        ("name", rec.name),
        ("path", str(rec.path)),
        ("source", rec.source),
        ("architecture", f.get("architecture")),
        ("parameters", f"{human_params(int(f.get('parameters', 0)))} ({f.get('parameters')})"),
        ("file type", f.get("file_type")),
        ("context length", f.get("context_length")),
        ("layers", f.get("block_count")),
        ("heads", f.get("head_count")),
        ("KV heads", f.get("head_count_kv")),
        ("embedding size", f.get("embedding_length")),
        ("tensors", f.get("tensor_count")),
        ("size on disk", f"{human_bytes(rec.size)} ({rec.size} bytes)"),
        ("chat template", "yes" if f.get("has_chat_template") else "no"),
    ]
    if rec.parts:
        rows.append(("parts", len(rec.parts)))
    if rec.sha256:
        rows.append(("sha256", rec.sha256))
    for key in ("template", "params", "license"):
        if key in rec.metadata:
            rows.append((f"ollama {key}", "yes"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.print(f"{k:<{width}}  {v if v is not None else '?'}")


def show_fit(report: FitReport) -> None:
    out.print(report.message)
    out.print(
        f"  weights: {human_bytes(report.weights_host_bytes)} host, "
        f"{human_bytes(report.weights_gpu_bytes)} GPU; "
        f"KV cache {human_bytes(report.kv_cache_bytes)}; compute {human_bytes(report.compute_bytes)}; "
        f"total {human_bytes(report.total_bytes)}"
    )
    for d in report.devices:  # none on a CPU-only host: its output is unchanged
        free = f", {human_bytes(d.free_bytes)} free" if d.free_bytes is not None else ""
        out.print(f"  GPU {d.index} {escape(d.name)}: {human_bytes(d.total_bytes)}{free} ({d.source})")


# --------------------------------------------------------------------------- bench and doctor


def _ratio(s: Spread | None) -> str:
    return f"{s.median:.2f}x ({s.min:.2f} / {s.median:.2f} / {s.max:.2f})" if s else "-"


def show_bench_builds(report: BuildsReport) -> None:
    table = Table(
        "build", f"pp{report.n_prompt} t/s (min/med/max)", f"tg{report.n_gen} t/s (min/med/max)",
        "pp ratio (per-round min/med/max)", "tg ratio (per-round min/med/max)",
    )  # fmt: skip
    for r in report.builds:
        if r.crashed:
            table.add_row(r.build_id, f"crashed ({r.crashed})", "", "", "")
            continue
        table.add_row(
            r.build_id,
            f"{r.pp.min:.1f} / {r.pp.median:.1f} / {r.pp.max:.1f}",
            f"{r.tg.min:.1f} / {r.tg.median:.1f} / {r.tg.max:.1f}",
            _ratio(r.pp_ratio),
            _ratio(r.tg_ratio),
        )
    out.print(table)


def show_load(report: LoadReport) -> None:
    w = report.warmup
    out.print(
        f"cold first request: {w.total_s:.2f}s (ttft {w.ttft_s:.2f}s){'' if w.ok else ' FAILED: ' + w.error}"
    )
    table = Table(
        "conc", "reqs", "errors", "ttft p50", "ttft p95", "decode t/s/stream", "aggregate t/s", "prompt t/s"
    )
    for lv in report.levels:
        errors = f"{lv.errors}" + (f" ({lv.retried} resent)" if lv.retried else "")
        table.add_row(str(lv.concurrency), str(lv.requests), errors, f"{lv.ttft_p50_s * 1000:.0f} ms",
                      f"{lv.ttft_p95_s * 1000:.0f} ms", f"{lv.decode_tps_per_stream:.1f}",
                      f"{lv.aggregate_tps:.1f}", f"{lv.prompt_tps:.1f}")  # fmt: skip
    out.print(table)


def show_findings(findings: Sequence[Finding]) -> None:
    for f in findings:
        mark = "[green]ok[/green]  " if f.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {f.check:8} {escape(f.message)}")
        if not f.ok and f.fix:
            out.print(f"              fix: {escape(f.fix)}")
