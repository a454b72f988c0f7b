"""Commands: bench and doctor."""

from __future__ import annotations

from typing import Annotated

import typer

from nativellm.cli.app import STATE, JsonOpt, SystemOpt, _begin, _scope, app
from nativellm.cli.output import emit_json, err, out
from nativellm.errors import UsageError
from nativellm.paths import resolve_paths


# --------------------------------------------------------------------------- bench commands (issue 6)
@app.command("bench")
def bench(
    target: Annotated[
        str, typer.Argument(help="An instance name, `builds` to compare builds, or `swap` (a router's swap).")
    ],
    build_ids: Annotated[
        list[str] | None, typer.Argument(help="With `builds`: build ids (default: all).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="With `builds`: model name or GGUF path.")
    ] = None,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", min=1, help="Interleaved rounds.")] = 3,
    n_prompt: Annotated[int, typer.Option("--pp", min=1, help="With `builds`: prompt tokens.")] = 256,
    n_gen: Annotated[int, typer.Option("--tg", min=1, help="With `builds`: generated tokens.")] = 64,
    url: Annotated[str | None, typer.Option("--url", help="Benchmark this llama-server URL instead.")] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated levels.")] = "1,4,8",
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1)] = 128,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 64,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests per level.")] = 16,
    duration: Annotated[float, typer.Option("--duration", min=1, help="Seconds per level, at most.")] = 120,
    on: Annotated[str | None, typer.Option("--on", help="With `swap`: the router instance.")] = None,
    swap_from: Annotated[
        str | None, typer.Option("--from", help="With `swap`: the model loaded before.")
    ] = None,
    swap_to: Annotated[str | None, typer.Option("--to", help="With `swap`: the model swapped in.")] = None,
    restart: Annotated[
        str | None,
        typer.Option("--restart", help="With `swap`: a single-model instance serving --to, restarted."),
    ] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Measure throughput: `bench builds` compares builds with llama-bench; `bench NAME` loads an instance;
    `bench swap --on ROUTER --from A --to B --restart SINGLE` times a router swap against a restart."""
    from nativellm.cli import views
    from nativellm.ops import bench as use_case
    from nativellm.ops.loadgen import check_url, run_load
    from nativellm.specs import url_is_loopback

    _begin("bench", json_out)
    paths = resolve_paths(_scope(system))
    if target == "swap":
        report = _bench_swap(system, on, swap_from, swap_to, restart, repetitions, json_out)
    elif target == "builds":

        def on_round(round_no: int, build_id: str) -> None:
            if not json_out:
                err.print(f"  round {round_no}/{repetitions}: {build_id}")

        builds = use_case.bench_store_builds(
            paths, build_ids or [], model, repetitions=repetitions, n_prompt=n_prompt, n_gen=n_gen,
            on_round=on_round,
        )  # fmt: skip
        if not json_out:
            views.show_bench_builds(builds)
        report = builds.to_dict()
    else:
        try:
            levels = [int(x) for x in concurrency.split(",") if x.strip()]
        except ValueError:
            raise UsageError(
                f"--concurrency {concurrency!r} is not a list of integers", "pass e.g. 1,4,8"
            ) from None
        key = None
        if url is None:
            url, key = use_case.instance_endpoint(paths, target)
            what = f"instance {target!r} at {url}"
        else:
            what = check_url(url)
        if not url_is_loopback(url) and not json_out:
            err.print(
                f"[yellow]warning:[/yellow] {url} is not a loopback address; this sends real load to it"
            )
        load = run_load(url, concurrency=levels, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                        requests=requests, duration=duration, api_key=key, target=what)  # fmt: skip
        if not json_out:
            views.show_load(load)
        report = {"schema": "nativellm.bench/1", **load.to_dict()}
    if json_out:
        emit_json(report)


def _bench_swap(
    system: bool,
    on: str | None,
    old: str | None,
    new: str | None,
    single: str | None,
    rounds: int,
    json_out: bool,
) -> dict[str, object]:
    from nativellm.cli.router_cmds import _ops
    from nativellm.ops.router_bench import bench_swap

    if not (on and old and new and single):
        raise UsageError("bench swap needs --on, --from, --to and --restart", "e.g. bench swap --on multi "
                         "--from q4 --to q8 --restart q8-single")  # fmt: skip
    from nativellm.cli.instance_cmds import _instances

    def on_step(round_no: int, what: str) -> None:
        if not json_out:
            err.print(f"  round {round_no}/{rounds}: {what}")

    res = bench_swap(_instances(system), _ops(on, system), single=single, old=old, new=new, rounds=rounds,
                     on_step=on_step)  # fmt: skip
    doc = res.to_dict()
    if not json_out:
        med, ratios = doc["median"], doc["ratios"]
        out.print(f"swap {old} -> {new} on {on} (to first token): {med['swap_s']:.2f} s; restart of {single}: "
                  f"{med['restart_s']:.2f} s; ratio {ratios['swap_vs_restart']:.2f}x")  # fmt: skip
        out.print(f"first request after a load: {med['cold_first_s']:.3f} s cold, {med['warm_first_s']:.3f} s "
                  f"with warm-up; steady {med['steady_s']:.3f} s (ratios {ratios['cold_first_vs_steady']:.2f}x, "
                  f"{ratios['warm_first_vs_steady']:.2f}x)")  # fmt: skip
    return doc


@app.command("doctor")
def doctor(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Check the store, builds, instances, models, disk and hardware; say how to fix each finding."""
    from nativellm.cli import views
    from nativellm.ops.doctor import doctor_all

    _begin("doctor", json_out)
    findings = doctor_all(resolve_paths(_scope(system)))
    problems = [f for f in findings if not f.ok]
    if json_out:
        emit_json(
            {
                "schema": "nativellm.doctor/1",
                "ok": not problems,
                "findings": [f.to_dict() for f in findings],
            }
        )
        STATE.json = False  # that document is the answer; the error below only writes stderr
    else:
        views.show_findings(findings)
    if problems:
        from nativellm.ops.doctor import DoctorFoundProblems

        raise DoctorFoundProblems(f"{len(problems)} problem(s) found", "apply the fixes listed above")


# --------------------------------------------------------------------------- end bench commands
