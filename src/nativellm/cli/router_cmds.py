"""`nativellm model load|unload|swap --on INSTANCE`: a router instance's models, through its API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nativellm.cli.app import JsonOpt, SystemOpt, _begin
from nativellm.cli.instance_cmds import _instances
from nativellm.cli.model_cmds import model_app
from nativellm.cli.output import emit_json, envelope, err, out

if TYPE_CHECKING:
    from nativellm.serve.router import LifecycleResult, RouterOps

OnOpt = Annotated[str, typer.Option("--on", help="The router instance.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Send it even if the fit check says it won't fit.")]
WarmOpt = Annotated[
    bool | None,
    typer.Option("--warmup/--no-warmup", help="One short request after the load (default: the instance's)."),
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the state change.", min=1)]


def _ops(instance: str, system: bool) -> RouterOps:
    from nativellm.hardware import detect_host
    from nativellm.serve.router import RouterOps
    from nativellm.serve.router_fit import load_fit_check

    inst = _instances(system)
    spec = inst.get(instance)
    return RouterOps(spec, fit_check=load_fit_check(inst.paths, lambda: detect_host(verify=False)))


def _show(command: str, json_out: bool, result: LifecycleResult, what: str) -> None:
    if json_out:
        emit_json(envelope(command, True, result.to_dict()))
        return
    states = ", ".join(f"{m.name} {m.state}" for m in result.models)
    warm = f", warm-up {result.warmup_seconds:.2f} s" if result.warmup_seconds is not None else ""
    how = f" ({result.how})" if result.how else ""
    out.print(escape(f"{what} on {result.instance} in {result.seconds:.2f} s{warm}{how}; now: {states}"))
    if result.message:
        err.print(f"[yellow]warning:[/yellow] {escape(result.message)}")


@model_app.command("load")
def model_load(
    name: str, on: OnOpt, force: ForceOpt = False, warmup: WarmOpt = None, timeout: TimeoutOpt = 300,
    system: SystemOpt = False, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Load one of a router instance's models; waits until it is loaded (and warmed up)."""
    _begin("model load", json_out)
    result = _ops(on, system).load(name, force=force, warmup=warmup, timeout=timeout)
    _show("model load", json_out, result, f"loaded {name}")


@model_app.command("unload")
def model_unload(
    name: str, on: OnOpt, timeout: TimeoutOpt = 300, system: SystemOpt = False, json_out: JsonOpt = False
) -> None:
    """Unload one of a router instance's models; waits until it is unloaded."""
    _begin("model unload", json_out)
    result = _ops(on, system).unload(name, timeout=timeout)
    _show("model unload", json_out, result, f"unloaded {name}")


@model_app.command("swap")
def model_swap(
    old: str, new: str, on: OnOpt, force: ForceOpt = False, warmup: WarmOpt = None, timeout: TimeoutOpt = 300,
    system: SystemOpt = False, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Unload OLD and load NEW on a router instance (e.g. a Q4 for a Q8), without a restart."""
    _begin("model swap", json_out)
    result = _ops(on, system).swap(old, new, force=force, warmup=warmup, timeout=timeout)
    _show("model swap", json_out, result, f"swapped {old} for {new}")
