"""The typer app: parse, call one use-case function, render. The only importer of typer."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.markup import escape

from nativellm import __version__
from nativellm.errors import Interrupted, NativeLLMError, UsageError
from nativellm.paths import Scope, resolve_paths
from nativellm.render import ConsoleReporter, emit_json, envelope, err, error_envelope, out

app = typer.Typer(
    name="nativellm",
    help="Build llama.cpp natively for this machine and run llama-server under systemd.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
builds_app = typer.Typer(help="List, switch, roll back and clean up installed builds.", no_args_is_help=True)
app.add_typer(builds_app, name="builds")


@dataclass
class CliState:
    """What the error handler needs to know about the running command."""

    debug: bool = False
    json: bool = False
    command: str = ""


STATE = CliState()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SystemOpt = Annotated[bool, typer.Option("--system", help="System scope (/var/lib/nativellm); needs root.")]


def _begin(command: str, json_out: bool) -> None:
    STATE.command = command
    STATE.json = json_out


def _scope(system: bool) -> Scope:
    return Scope.SYSTEM if system else Scope.USER


def _version(value: bool) -> None:
    if value:
        out.print(f"nativellm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Verbose logs and full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    STATE.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    from nativellm.views import show_profile

    show_profile(profile)


def _plan_options(
    backend: str | None, portable: bool, native: bool, baseline: bool, rpc: bool
) -> Any:
    from nativellm.plan import Backend, PlanOptions

    chosen: Backend | None = None
    if backend is not None:
        try:
            chosen = Backend(backend.lower())
        except ValueError:
            names = ", ".join(b.value for b in Backend)
            raise UsageError(f"unknown backend {backend!r}", f"choose one of: {names}") from None
    if sum((portable, native, baseline)) > 1:
        raise UsageError("--portable, --native and --baseline exclude each other", "pick one of them")
    return PlanOptions(backend=chosen, portable=portable, native=native, baseline=baseline, rpc=rpc)


BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="cpu, cuda, hip, vulkan, metal or sycl (default: auto).")
]
ProfileOpt = Annotated[
    Optional[Path], typer.Option("--profile", help="Plan for the HostProfile in FILE (from `detect --json`).")
]
PortableOpt = Annotated[
    bool, typer.Option("--portable", help="Fleet build for any x86-64: all CPU variants, loaded at run time.")
]
NativeOpt = Annotated[bool, typer.Option("--native", help="GGML_NATIVE=ON (-march=native); for comparisons.")]
BaselineOpt = Annotated[
    bool, typer.Option("--baseline", help="Generic distro build (AVX2 baseline); for comparisons.")
]
RpcOpt = Annotated[bool, typer.Option("--rpc", help="Also build rpc-server (GGML_RPC=ON).")]


@app.command()
def plan(
    profile: ProfileOpt = None,
    backend: BackendOpt = None,
    portable: PortableOpt = False,
    native: NativeOpt = False,
    baseline: BaselineOpt = False,
    rpc: RpcOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Show the CMake defines a build would use, each with its reason (BuildPlan)."""
    from nativellm.hardware import detect_host
    from nativellm.hardware.profile import load_profile
    from nativellm.plan import plan_build

    _begin("plan", json_out)
    opts = _plan_options(backend, portable, native, baseline, rpc)
    host = load_profile(profile) if profile else detect_host()
    result = plan_build(host, opts)
    if json_out:
        emit_json(result.to_dict())
        return
    from nativellm.views import show_plan

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
    source: Annotated[Optional[Path], typer.Option("--source", help="Build from a local llama.cpp tree.")] = None,
    tarball: Annotated[
        Optional[str], typer.Option("--tarball", help="Build from a llama.cpp tarball (path or URL).")
    ] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="Expected sha256 of --tarball.")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="llama.cpp git tag or commit to clone.")] = None,
    repo: Annotated[Optional[str], typer.Option("--repo", help="Git URL to clone --ref from.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Parallel compile jobs.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and check the toolchain only.")] = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compile llama.cpp for this machine, smoke-test it and make it current."""
    from nativellm.build import BuildOptions, build_llama
    from nativellm.source import DEFAULT_REPO, SourceRequest

    _begin("build", json_out)
    if sum(x is not None for x in (source, tarball, ref)) > 1:
        raise UsageError("--source, --tarball and --ref exclude each other", "give one llama.cpp source")
    if sha256 and not tarball:
        raise UsageError("--sha256 only applies to --tarball", "drop --sha256 or add --tarball")
    opts = BuildOptions(
        auto=auto,
        profile=profile,
        plan=_plan_options(backend, portable, native, baseline, rpc),
        source=SourceRequest(directory=source, tarball=tarball, sha256=sha256, ref=ref, repo=repo or DEFAULT_REPO),
        jobs=jobs,
        dry_run=dry_run,
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
                    "duration_s": round(outcome.duration_s, 2),
                    "notes": list(outcome.notes),
                },
            )
        )
        return
    from nativellm.views import show_build_outcome

    show_build_outcome(outcome)


# --------------------------------------------------------------------------- builds
@builds_app.command("list")
def builds_list(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """List installed builds; the current one is marked."""
    from nativellm.store import Store

    _begin("builds list", json_out)
    store = Store(resolve_paths(_scope(system)))
    records, current, pins = store.list_builds(), store.current_id(), store.pinned()
    if json_out:
        emit_json(
            {
                "schema": "nativellm.builds/1",
                "current": current,
                "builds": [
                    {
                        "id": r.id,
                        "backend": r.backend,
                        "created": r.created,
                        "current": r.id == current,
                        "smoke_test_passed": r.smoke_passed,
                        "pinned_by": pins.get(r.id, []),
                        "source": r.source,
                        "path": str(r.path),
                    }
                    for r in records
                ],
            }
        )
        return
    from nativellm.views import show_builds

    show_builds(records, current, pins)


def _store_action(command: str, json_out: bool, system: bool) -> Any:
    from nativellm.store import Store

    _begin(command, json_out)
    return Store(resolve_paths(_scope(system)))


def _report(command: str, json_out: bool, changed: bool, message: str, data: dict[str, Any]) -> None:
    if json_out:
        emit_json(envelope(command, changed, data))
    else:
        out.print(message)


@builds_app.command("use")
def builds_use(build_id: str, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Make build ID current."""
    store = _store_action("builds use", json_out, system)
    rec = store.get(build_id)
    changed = store.set_current(rec.id)
    _report("builds use", json_out, changed, f"current -> {rec.id}" if changed else f"{rec.id} is already current",
            {"current": rec.id})  # fmt: skip


@builds_app.command("rollback")
def builds_rollback(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Make the previously current build current again."""
    store = _store_action("builds rollback", json_out, system)
    before = store.current_id()
    rec = store.rollback()
    _report("builds rollback", json_out, True, f"rolled back: current {before} -> {rec.id}",
            {"current": rec.id, "previous": before})  # fmt: skip


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


# --------------------------------------------------------------------------- model commands (issue 3)
# (section owned by the model-store work; keep additions between these markers)
# --------------------------------------------------------------------------- end model commands


# --------------------------------------------------------------------------- instance commands (issue 4)
# (section owned by the instances/systemd work; keep additions between these markers)
# --------------------------------------------------------------------------- end instance commands


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every NativeLLMError becomes one line plus a hint and its exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except NativeLLMError as exc:
        _fail(exc)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail(Interrupted("interrupted; nothing was changed", "run the command again"))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if STATE.debug:
            raise
        err.print(f"[red]error:[/red] internal error: {type(exc).__name__}: {escape(str(exc))}")
        err.print("  hint: rerun with --debug and report the traceback")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _fail(exc: NativeLLMError) -> None:
    if STATE.debug:
        import traceback

        traceback.print_exc()
    if STATE.json:
        emit_json(error_envelope(STATE.command, exc))
    err.print(f"[red]error:[/red] {escape(exc.message)}")
    if exc.hint:
        err.print(f"  hint: {escape(exc.hint)}")
    sys.exit(exc.exit_code)
