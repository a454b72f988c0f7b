"""Use cases and views behind `nativellm bench` (kept out of the cli package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from nativellm.bench import Spread, bench_builds
from nativellm.doctor import Finding, run_doctor
from nativellm.errors import NotFoundError, UsageError
from nativellm.loadgen import is_loopback, run_load
from nativellm.paths import Paths
from nativellm.render import err, out
from nativellm.store import Store


def _resolve_model(paths: Paths, model: str | None) -> Path:
    if model is None:
        raise UsageError("`bench builds` needs --model", "pass a registered model name or a GGUF path")
    path = Path(model).expanduser()
    if path.is_file():
        return path
    from nativellm.models import ModelRegistry

    try:
        return ModelRegistry(paths).get(model).path
    except NotFoundError:
        raise NotFoundError(
            f"model {model!r} is neither a file nor a registered model", "see `nativellm model list`"
        ) from None


def run_bench_builds(
    paths: Paths, ids: list[str], model: str | None, reps: int, n_prompt: int, n_gen: int, quiet: bool
) -> dict[str, Any]:
    store = Store(paths)
    records = [store.get(i) for i in ids] if ids else store.list_builds()
    gguf = _resolve_model(paths, model)

    def progress(round_no: int, build_id: str) -> None:
        if not quiet:
            err.print(f"  round {round_no}/{reps}: {build_id}")

    results = bench_builds(records, gguf, repetitions=reps, n_prompt=n_prompt, n_gen=n_gen, on_round=progress)
    if not quiet:
        table = Table(
            "build", f"pp{n_prompt} t/s (min/med/max)", f"tg{n_gen} t/s (min/med/max)",
            "pp ratio (per-round min/med/max)", "tg ratio (per-round min/med/max)",
        )  # fmt: skip
        for r in results:
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
    return {"schema": "nativellm.bench-builds/1", "model": str(gguf), "repetitions": reps,
            "n_prompt": n_prompt, "n_gen": n_gen, "builds": [r.to_dict() for r in results]}  # fmt: skip


def _ratio(s: Spread | None) -> str:
    return f"{s.median:.2f}x ({s.min:.2f} / {s.median:.2f} / {s.max:.2f})" if s else "-"


def _instance_url(paths: Paths, name: str) -> tuple[str, str | None]:
    """The base URL (and API key, if any) of a configured instance."""
    from nativellm.instance_spec import load_spec

    spec = load_spec(paths.config, name)
    if spec is None:
        raise NotFoundError(f"no instance named {name!r}", "see `nativellm instance list`, or pass --url")
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "::", "") else spec.host
    key = None
    if spec.api_key_file:
        try:
            key = Path(spec.api_key_file).read_text().strip()
        except OSError as exc:
            raise NotFoundError(f"cannot read the API key file {spec.api_key_file}: {exc.strerror}",
                                "run bench as a user who can read it") from None  # fmt: skip
    return f"http://{host}:{spec.port}", key


def run_bench_instance(
    paths: Paths,
    name: str,
    url: str | None,
    levels: list[int],
    prompt_tokens: int,
    max_tokens: int,
    requests: int,
    duration: float,
    quiet: bool,
) -> dict[str, Any]:
    key = None
    if url is None:
        url, key = _instance_url(paths, name)
    if not is_loopback(url):
        err.print(f"[yellow]warning:[/yellow] {url} is not a loopback address; this sends real load to it")
    report = run_load(url, concurrency=levels, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                      requests=requests, duration=duration, api_key=key)  # fmt: skip
    if not quiet:
        w = report.warmup
        out.print(
            f"cold first request: {w.total_s:.2f}s (ttft {w.ttft_s:.2f}s){'' if w.ok else ' FAILED: ' + w.error}"
        )
        table = Table(
            "conc",
            "reqs",
            "errors",
            "ttft p50",
            "ttft p95",
            "decode t/s/stream",
            "aggregate t/s",
            "prompt t/s",
        )
        for lv in report.levels:
            table.add_row(str(lv.concurrency), str(lv.requests), f"{lv.errors}" + (f" ({lv.retried} resent)" if lv.retried else ""), f"{lv.ttft_p50_s * 1000:.0f} ms",
                          f"{lv.ttft_p95_s * 1000:.0f} ms", f"{lv.decode_tps_per_stream:.1f}",
                          f"{lv.aggregate_tps:.1f}", f"{lv.prompt_tps:.1f}")  # fmt: skip
        out.print(table)
    return {"schema": "nativellm.bench/1", **report.to_dict()}


def run_doctor_checks(paths: Paths) -> list[Finding]:
    from nativellm.doctor import check_instances
    from nativellm.hardware import detect_host
    from nativellm.instances import Instances
    from nativellm.systemd import Systemd

    instances = Instances(paths, Systemd(paths.scope))
    return run_doctor(paths, detect_host(), extra=[lambda: check_instances(instances)])


def show_findings(findings: list[Finding]) -> None:
    for f in findings:
        mark = "[green]ok[/green]  " if f.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {f.check:8} {escape(f.message)}")
        if not f.ok and f.fix:
            out.print(f"              fix: {escape(f.fix)}")
