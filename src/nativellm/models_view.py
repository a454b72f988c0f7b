"""Human output for the model commands, and the download progress display (stderr)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from nativellm.fit import FitReport
from nativellm.models import ModelRecord
from nativellm.render import err, out


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
