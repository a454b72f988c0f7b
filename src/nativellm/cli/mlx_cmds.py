"""Commands: the managed MLX runtime (`nativellm mlx install|list|rollback`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nativellm.cli.app import JsonOpt, SystemOpt, _begin, _scope, app
from nativellm.cli.output import ConsoleReporter, emit_json, envelope, out
from nativellm.paths import resolve_paths

mlx_app = typer.Typer(
    help="The MLX engine's runtime: pinned mlx + mlx-lm in a managed virtualenv.", no_args_is_help=True
)
app.add_typer(mlx_app, name="mlx")


@mlx_app.command("install")
def mlx_install(
    offline_wheels: Annotated[
        Path | None, typer.Option("--offline-wheels", help="Install only from this directory of wheels.")
    ] = None,
    find_links: Annotated[
        Path | None, typer.Option("--find-links", help="Prefer wheels from this directory (cache).")
    ] = None,
    python: Annotated[str | None, typer.Option("--python", help="Base interpreter of the venv.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Reinstall even if these pins are installed.")
    ] = False,
    mlx_version: Annotated[
        str | None, typer.Option("--mlx", help="Another mlx version than the lock's.")
    ] = None,
    mlx_lm_version: Annotated[
        str | None, typer.Option("--mlx-lm", help="Another mlx-lm version than the lock's.")
    ] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Install the pinned MLX runtime, smoke-test it with a real generation, and make it current."""
    from nativellm.mlx.runtime import InstallOptions, install_runtime

    _begin("mlx install", json_out)
    opts = InstallOptions(
        offline_wheels=offline_wheels,
        find_links=find_links,
        python=python,
        force=force,
        mlx_version=mlx_version,
        mlx_lm_version=mlx_lm_version,
    )
    rec, changed = install_runtime(resolve_paths(_scope(system)), opts, ConsoleReporter(quiet=json_out))
    if json_out:
        emit_json(envelope("mlx install", changed, {"runtime": rec.to_dict(current=True)}))
        return
    smoke = rec.smoke
    out.print(
        f"MLX runtime {rec.id} is current (smoke test: {smoke.get('tokens')} tokens in {smoke.get('seconds')}s)"
        if changed
        else f"MLX runtime {rec.id} is already installed and current; no change",
        markup=False,
    )


@mlx_app.command("list")
def mlx_list(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """List installed MLX runtimes; `*` marks the current one."""
    from nativellm.mlx.runtime import Runtimes

    _begin("mlx list", json_out)
    rts = Runtimes(resolve_paths(_scope(system)))
    cur = rts.current_id()
    recs = rts.installed()
    if json_out:
        emit_json({"schema": "nativellm.mlx-runtimes/1", "current": cur,
                   "runtimes": [r.to_dict(current=r.id == cur) for r in recs]})  # fmt: skip
        return
    if not recs:
        out.print("no MLX runtime installed; install one with `nativellm mlx install`", markup=False)
    for r in recs:
        smoke = "passed" if r.smoke_passed else "failed"
        smoke += (
            "" if r.python.exists() else " (broken: its Python is missing; `nativellm mlx install --force`)"
        )
        line = f"{'*' if r.id == cur else ' '} {r.id}\t{r.created}\tpython {r.python_version}\tsmoke {smoke}"
        out.print(line, markup=False)


@mlx_app.command("rollback")
def mlx_rollback(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Make the previously current MLX runtime current again (restart --engine mlx instances to use it)."""
    from nativellm.mlx.runtime import Runtimes

    _begin("mlx rollback", json_out)
    rec = Runtimes(resolve_paths(_scope(system))).rollback()
    if json_out:
        emit_json(envelope("mlx rollback", True, {"runtime": rec.to_dict(current=True)}))
        return
    out.print(f"current MLX runtime -> {rec.id}; restart --engine mlx instances to use it", markup=False)
