"""Commands: detect, plan, build and builds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nativellm.cli.app import JsonOpt, SystemOpt, _begin, _scope, app, builds_app
from nativellm.cli.output import ConsoleReporter, emit_json, envelope, out
from nativellm.errors import UsageError
from nativellm.paths import resolve_paths

if TYPE_CHECKING:
    from nativellm.build.plan import PlanOptions
    from nativellm.build.store import Store


# --------------------------------------------------------------------------- detect / plan
@app.command()
def detect(json_out: JsonOpt = False) -> None:
    """Detect this machine's verified CPU features, GPUs and toolkits (HostProfile)."""
    from nativellm.hardware import detect_host

    _begin("detect", json_out)
    profile = detect_host()
    if json_out:
        emit_json(profile.to_dict())
        return
    from nativellm.cli.views import show_profile

    show_profile(profile)


def _plan_options(
    backend: str | None,
    portable: bool,
    native: bool,
    baseline: bool,
    rpc: bool,
    defines: list[str] | None = None,
    single_binary: bool = False,
    no_ui: bool = False,
) -> PlanOptions:
    from nativellm.build.plan import Backend, PlanOptions, check_single_binary

    chosen: Backend | None = None
    if backend is not None:
        try:
            chosen = Backend(backend.lower())
        except ValueError:
            names = ", ".join(b.value for b in Backend)
            raise UsageError(f"unknown backend {backend!r}", f"choose one of: {names}") from None
    if sum((portable, native, baseline)) > 1:
        raise UsageError("--portable, --native and --baseline exclude each other", "pick one of them")
    if single_binary:
        check_single_binary(chosen, portable)
    pairs: list[tuple[str, str]] = []
    for item in defines or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--define {item!r} is not NAME=VALUE", "write it as --define LLAMA_CURL=OFF")
        pairs.append((key.removeprefix("-D"), value))
    return PlanOptions(
        backend=chosen,
        portable=portable,
        native=native,
        baseline=baseline,
        rpc=rpc,
        defines=tuple(pairs),
        single_binary=single_binary,
        ui=not no_ui,
    )


BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="cpu, cuda, hip, vulkan, metal or sycl (default: auto).")
]
ProfileOpt = Annotated[
    Path | None, typer.Option("--profile", help="Plan for the HostProfile in FILE (from `detect --json`).")
]
PortableOpt = Annotated[
    bool, typer.Option("--portable", help="Fleet build for any x86-64: all CPU variants, loaded at run time.")
]
NativeOpt = Annotated[bool, typer.Option("--native", help="GGML_NATIVE=ON (-march=native); for comparisons.")]
BaselineOpt = Annotated[
    bool, typer.Option("--baseline", help="Generic distro build (AVX2 baseline); for comparisons.")
]
RpcOpt = Annotated[bool, typer.Option("--rpc", help="Also build rpc-server (GGML_RPC=ON).")]
NoUiOpt = Annotated[
    bool, typer.Option("--no-ui", help="Leave the web UI out: no npm; llama-server answers 404 on /.")
]
DefineOpt = Annotated[
    list[str] | None,
    typer.Option("--define", help="Pass CMake define NAME=VALUE as given, after the plan (repeatable)."),
]
SingleBinaryOpt = Annotated[
    bool,
    typer.Option(
        "--single-binary", help="CPU build whose llama-server needs only glibc: static libs, no OpenMP."
    ),
]


@app.command()
def plan(
    profile: ProfileOpt = None,
    backend: BackendOpt = None,
    portable: PortableOpt = False,
    native: NativeOpt = False,
    baseline: BaselineOpt = False,
    rpc: RpcOpt = False,
    define: DefineOpt = None,
    single_binary: SingleBinaryOpt = False,
    no_ui: NoUiOpt = False,
    source: Annotated[
        Path | None,
        typer.Option("--source", help="Adapt the defines to this llama.cpp tree's own CMake options."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the CMake defines a build would use, each with its reason (BuildPlan)."""
    from nativellm.build.plan import plan_build
    from nativellm.build.source import SourceRequest, check_request, check_tree
    from nativellm.build.tree import read_tree_options
    from nativellm.hardware import detect_host
    from nativellm.hardware.profile import load_profile

    _begin("plan", json_out)
    opts = _plan_options(backend, portable, native, baseline, rpc, define, single_binary, no_ui)
    host = load_profile(profile) if profile else detect_host()
    if source is None:
        result = plan_build(host, opts)
    else:
        check_request(SourceRequest(directory=source))
        check_tree(source.expanduser().resolve())
        result = plan_build(host, opts, read_tree_options(source.expanduser()))
    if json_out:
        emit_json(result.to_dict())
        return
    from nativellm.cli.views import show_plan

    show_plan(result)


# --------------------------------------------------------------------------- build
@app.command()
def build(
    auto: Annotated[
        bool, typer.Option("--auto", help="Detect, plan and retry without a crashing ISA family.")
    ] = False,
    profile: ProfileOpt = None,
    backend: BackendOpt = None,
    portable: PortableOpt = False,
    native: NativeOpt = False,
    baseline: BaselineOpt = False,
    rpc: RpcOpt = False,
    define: DefineOpt = None,
    single_binary: SingleBinaryOpt = False,
    no_ui: NoUiOpt = False,
    source: Annotated[
        Path | None, typer.Option("--source", help="Build from a local llama.cpp tree.")
    ] = None,
    tarball: Annotated[
        str | None, typer.Option("--tarball", help="Build from a llama.cpp tarball (path or URL).")
    ] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected sha256 of --tarball.")] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="llama.cpp git tag or commit to clone.")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="Git URL to clone --ref from.")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Parallel compile jobs.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and check the toolchain only.")] = False,
    from_index: Annotated[
        str | None,
        typer.Option("--from-index", help="Install a matching artifact from an index (URL or dir) instead."),
    ] = None,
    insecure_unsigned: Annotated[
        bool,
        typer.Option(
            "--insecure-unsigned",
            help="With --from-index: accept an index without a trusted signature (warns; never plain http).",
        ),
    ] = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compile llama.cpp for this machine, smoke-test it and make it current."""
    from nativellm.build.options import BuildOptions
    from nativellm.build.pipeline import build_llama
    from nativellm.build.source import SourceRequest, default_repo

    _begin("build", json_out)
    if sum(x is not None for x in (source, tarball, ref)) > 1:
        raise UsageError("--source, --tarball and --ref exclude each other", "give one llama.cpp source")
    if insecure_unsigned and not from_index:
        raise UsageError("--insecure-unsigned only applies to --from-index", "drop --insecure-unsigned")
    if sha256 and not tarball:
        raise UsageError("--sha256 only applies to --tarball", "drop --sha256 or add --tarball")
    opts = BuildOptions(
        auto=auto,
        profile=profile,
        plan=_plan_options(backend, portable, native, baseline, rpc, define, single_binary, no_ui),
        source=SourceRequest(
            directory=source, tarball=tarball, sha256=sha256, ref=ref, repo=repo or default_repo()
        ),
        jobs=jobs,
        dry_run=dry_run,
        from_index=from_index,
        insecure_unsigned=insecure_unsigned,
    )
    outcome = build_llama(resolve_paths(_scope(system)), opts, ConsoleReporter(quiet=json_out))
    if json_out:
        emit_json(
            envelope(
                "build",
                outcome.changed,
                {
                    "build_id": outcome.build_id,
                    "cached": outcome.cached,
                    "activated": outcome.activated,
                    "plan": outcome.plan.to_dict(),
                    "fallbacks": list(outcome.fallbacks),
                    "jobs": outcome.jobs,
                    "ui": outcome.ui.to_dict() if outcome.ui is not None else None,
                    "duration_s": round(outcome.duration_s, 2),
                    "notes": list(outcome.notes),
                },
            )
        )
        return
    from nativellm.cli.views import show_build_outcome

    show_build_outcome(outcome)


# --------------------------------------------------------------------------- builds
@builds_app.command("list")
def builds_list(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """List installed builds; the current one is marked."""
    from nativellm.build.store import Store

    _begin("builds list", json_out)
    store = Store(resolve_paths(_scope(system)))
    records, current, pins = store.list_builds(), store.current_id(), store.pinned()
    from nativellm.cli.views import warn_broken_builds

    warn_broken_builds(broken := store.broken())
    if json_out:
        emit_json(
            {
                "schema": "nativellm.builds/1",
                "current": current,
                "broken": [{"id": b, "problem": why} for b, why in broken],
                "builds": [
                    {
                        "id": r.id,
                        "backend": r.backend,
                        "created": r.created,
                        "current": r.id == current,
                        "smoke_test_passed": r.smoke_passed,
                        "smoke_test": r.smoke_state,
                        "pinned_by": pins.get(r.id, []),
                        "source": r.source,
                        "path": str(r.path),
                    }
                    for r in records
                ],
            }
        )
        return
    from nativellm.cli.views import show_builds

    show_builds(records, current, pins)


def _store_action(command: str, json_out: bool, system: bool) -> Store:
    from nativellm.build.store import Store

    _begin(command, json_out)
    return Store(resolve_paths(_scope(system)))


def _report(command: str, json_out: bool, changed: bool, message: str, data: dict[str, Any]) -> None:
    if json_out:
        emit_json(envelope(command, changed, data))
    else:
        out.print(message)


@builds_app.command("use")
def builds_use(build_id: str, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Make build ID current (the instances that follow current move when they restart)."""
    from nativellm.ops.upgrade import use_build
    from nativellm.serve.systemd import Systemd

    _begin("builds use", json_out)
    scope = _scope(system)
    res = use_build(resolve_paths(scope), build_id, Systemd(scope))
    msg = f"current -> {res.current}" if res.changed else f"{res.current} is already current"
    if res.refresh.rewritten:
        msg += (
            f"; units re-rendered for its llama-server: {', '.join(res.refresh.rewritten)} (restart to move)"
        )
    for name, why in res.refresh.failed:
        msg += f"; {name} keeps its old unit: {why}"
    _report("builds use", json_out, res.changed, msg,
            {"current": res.current, "rewritten": list(res.refresh.rewritten),
             "not_rendered": [{"instance": n, "why": w} for n, w in res.refresh.failed]})  # fmt: skip


@builds_app.command("rollback")
def builds_rollback(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Make the previously current build current again."""
    from nativellm.ops.upgrade import rollback_and_restart
    from nativellm.serve.systemd import Systemd

    _begin("builds rollback", json_out)
    scope = _scope(system)
    res = rollback_and_restart(resolve_paths(scope), Systemd(scope))
    msg = f"rolled back: current {res.previous} -> {res.current}"
    if res.systemd:
        msg += "; restarted " + (", ".join(res.restarted) if res.restarted else "no instances (none running)")
    else:
        msg += "; systemd is not reachable: restart the instances that follow current yourself"
    _report("builds rollback", json_out, True, msg,
            {"current": res.current, "previous": res.previous, "restarted": list(res.restarted),
             "not_running": list(res.not_running), "systemd": res.systemd})  # fmt: skip


@builds_app.command("rm")
def builds_rm(build_id: str, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Remove build ID (never the current build or one pinned by an instance)."""
    store = _store_action("builds rm", json_out, system)
    removed = store.remove(build_id)
    _report("builds rm", json_out, True, f"removed {removed}", {"removed": [removed]})


@builds_app.command("gc")
def builds_gc(
    keep: Annotated[int, typer.Option("--keep", min=0, help="Newest non-current builds to keep.")] = 2,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove old builds, keeping current, pinned ones and the newest --keep others."""
    store = _store_action("builds gc", json_out, system)
    removed = store.gc(keep)
    _report("builds gc", json_out, bool(removed),
            f"removed {len(removed)} build(s): {', '.join(removed)}" if removed else "nothing to remove",
            {"removed": removed})  # fmt: skip
