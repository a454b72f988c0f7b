"""Human output of `nativellm status` (the --json form is the same rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from nativellm.render import out


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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
            "-" if r["cpu_s"] is None else f"{r['cpu_s']:.1f}s",
            r["url"],
            r["health"],
            r["model"],
            r["build"],
            f"{m['tokens_per_s']:.1f}" if "tokens_per_s" in m else "-",
            f"{m['requests_processing']:.0f}" if "requests_processing" in m else "-",
            f"{m['kv_cache_usage_ratio']:.0%}" if "kv_cache_usage_ratio" in m else "-",
        )
    out.print(table)
    for r in rows:
        if r["error"]:
            out.print(f"{r['name']}: {r['error']}", markup=False)
