"""Commands: instances under systemd (`nativellm instance ...`, start/stop/status/logs/run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nativellm.cli.app import JsonOpt, SystemOpt, _begin, _gpu_indices, _scope, app
from nativellm.cli.output import emit_json, envelope, err, out
from nativellm.errors import UsageError
from nativellm.paths import Scope, resolve_paths

if TYPE_CHECKING:
    from nativellm.serve.instances import InstanceOptions, Instances, Outcome

# --------------------------------------------------------------------------- instance commands (issue 4)
# (section owned by the instances/systemd work; keep additions between these markers)
instance_app = typer.Typer(
    help="Instances: named llama-server configurations run by systemd.", no_args_is_help=True
)
app.add_typer(instance_app, name="instance")

IModel = Annotated[str | None, typer.Option("--model", help="Registered model name (or a GGUF path).")]
IPort = Annotated[int | None, typer.Option("--port", help="Port (default: first free from 8080).")]
IHost = Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")]
ICtx = Annotated[int | None, typer.Option("--ctx", help="Context size (llama-server --ctx-size).")]
IGpuLayers = Annotated[int | None, typer.Option("--gpu-layers", help="Layers to offload to the GPU.")]
IThreads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")]
IParallel = Annotated[int | None, typer.Option("--parallel", help="Parallel sequences (slots).")]
IBatch = Annotated[int | None, typer.Option("--batch", help="Logical batch size.")]
IFlash = Annotated[str | None, typer.Option("--flash-attn", help="on, off or auto.")]
ICacheK = Annotated[str | None, typer.Option("--cache-type-k", help="KV cache type for K (f16, q8_0...).")]
ICacheV = Annotated[str | None, typer.Option("--cache-type-v", help="KV cache type for V.")]
IMlock = Annotated[bool | None, typer.Option("--mlock/--no-mlock", help="Lock the model in RAM.")]
IMetrics = Annotated[bool | None, typer.Option("--metrics/--no-metrics", help="Serve /metrics (default on).")]
IKey = Annotated[Path | None, typer.Option("--api-key-file", help="File with the API key (LoadCredential=).")]
IInsecure = Annotated[
    bool | None, typer.Option("--insecure-no-api-key", help="Allow a non-loopback bind without a key.")
]
IMem = Annotated[str | None, typer.Option("--memory-max", help="systemd MemoryMax= (e.g. 8G).")]
ICpus = Annotated[
    str | None, typer.Option("--cpus", help="A CPU count (CPUQuota=) or a CPU list (AllowedCPUs=).")
]
INuma = Annotated[int | None, typer.Option("--numa-node", help="Bind memory to NUMA node N.")]
IGpus = Annotated[str | None, typer.Option("--gpus", help="GPU indices, e.g. 0,1 (CUDA_VISIBLE_DEVICES).")]
IBuild = Annotated[str | None, typer.Option("--build", help="Pin a build id (default: follow current).")]
IEnable = Annotated[bool | None, typer.Option("--enable/--no-enable", help="Start at boot.")]
ITimeout = Annotated[
    int | None, typer.Option("--start-timeout", help="Seconds a start may take (default 900).")
]
IForce = Annotated[bool, typer.Option("--force", help="Add even if the model does not fit in memory.")]
INoSystemd = Annotated[
    bool, typer.Option("--no-systemd", help="Only write the spec and units; don't talk to systemd.")
]
ILinger = Annotated[bool, typer.Option("--linger", help="Enable lingering so user units start at boot.")]
IExtra = Annotated[list[str] | None, typer.Argument(help="Extra llama-server arguments, after --.")]
INameArg = Annotated[str, typer.Argument(help="Instance name, e.g. q4.")]
IRpc = Annotated[str | None, typer.Option("--rpc", help="llama.cpp RPC workers, host:port,... (issue 5).")]
IRouter = Annotated[bool, typer.Option("--router", help="A router instance: several models behind one port.")]
IModels = Annotated[str | None, typer.Option("--models", help="Router: registered models, a,b,c.")]
IModelsMax = Annotated[
    int | None,
    typer.Option("--models-max", help="Router: models loaded at once (0: no limit; default: all)."),
]
ILoadOnStart = Annotated[
    str | None, typer.Option("--load-on-start", help="Router: models to load at start, a,b.")
]
IWarmup = Annotated[
    bool | None,
    typer.Option("--warmup/--no-warmup", help="Router: one short request per model at load (default on)."),
]
IModelOpt = Annotated[
    list[str] | None,
    typer.Option("--model-opt", help="Router: a model's own llama-server setting, MODEL:KEY=VALUE (repeat; "
                 "KEY= removes it on edit), e.g. q8:ctx-size=8192."),
]  # fmt: skip
IEngine = Annotated[
    str | None,
    typer.Option(
        "--engine", help="llama (llama-server), mlx (mlx_lm.server) or auto (from the model's format)."
    ),
]


def _instances(system: bool, no_systemd: bool = False) -> Instances:
    from nativellm.serve.instances import Instances
    from nativellm.serve.systemd import Systemd

    scope = _scope(system)
    return Instances(resolve_paths(scope), None if no_systemd else Systemd(scope))


def _instance_options(
    model: str | None, port: int | None, host: str | None, ctx: int | None, gpu_layers: int | None,
    threads: int | None, parallel: int | None, batch: int | None, flash_attn: str | None,
    cache_type_k: str | None, cache_type_v: str | None, mlock: bool | None, metrics: bool | None,
    api_key_file: Path | None, insecure_no_api_key: bool | None, memory_max: str | None, cpus: str | None,
    numa_node: int | None, gpus: str | None, build: str | None, enable: bool | None, start_timeout: int | None,
    extra: list[str] | None, force: bool,
) -> InstanceOptions:  # fmt: skip
    from nativellm import validate as v
    from nativellm.serve.instances import InstanceOptions

    # Each value through its validator before anything else looks at it (InstanceSpec.validate
    # checks them again, for `instance edit` merges and hand-edited TOML).
    if memory_max is not None:
        v.byte_size(memory_max, "--memory-max")
    if cpus is not None:
        v.cpus(cpus, "--cpus")
    if host is not None:
        v.host(host, "--host")
    if build is not None:
        v.build_id(build, "--build")
    if model is not None:
        v.no_control(model, "--model")
    for arg in extra or []:
        v.no_control(arg, "extra llama-server argument")
    if api_key_file is not None:
        v.no_control(str(api_key_file), "--api-key-file")
    gpu_list = _gpu_indices(gpus)
    key = str(api_key_file.resolve()) if api_key_file is not None else None
    if api_key_file is not None and not api_key_file.is_file():
        raise UsageError(f"--api-key-file {api_key_file} does not exist", "create the key file first")
    return InstanceOptions(
        model=model, port=port, host=host, ctx=ctx, threads=threads, gpu_layers=gpu_layers, parallel=parallel,
        batch=batch, flash_attn=flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v, mlock=mlock,
        metrics=metrics, api_key_file=key, insecure_no_api_key=insecure_no_api_key, memory_max=memory_max,
        cpus=cpus, numa_node=numa_node, gpus=gpu_list, build=build, enable=enable, start_timeout=start_timeout,
        extra_args=tuple(extra) if extra else None, force=force,
    )  # fmt: skip


def _with_rpc(opts: InstanceOptions, rpc: str | None) -> InstanceOptions:
    import dataclasses

    from nativellm import validate as v

    if rpc is None:
        return opts
    endpoints = tuple(e.strip() for e in v.no_control(rpc, "--rpc").split(",") if e.strip())
    for endpoint in endpoints:
        v.endpoint(endpoint, "--rpc")
    return dataclasses.replace(opts, rpc=endpoints)


def _with_router(
    opts: InstanceOptions, router: bool, models: str | None, models_max: int | None, load_on_start: str | None,
    warmup: bool | None, model_opt: list[str] | None,
) -> InstanceOptions:  # fmt: skip
    import dataclasses

    from nativellm import validate as v

    def names(text: str, flag: str) -> tuple[str, ...]:
        return tuple(m.strip() for m in v.no_control(text, flag).split(",") if m.strip())

    if router and models is None:
        raise UsageError("--router needs --models", "name its models: --models a,b,c")
    settings: dict[str, dict[str, str]] = {}
    for item in model_opt or []:
        model, sep, rest = v.no_control(item, "--model-opt").partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not model or not key:
            raise UsageError(
                f"--model-opt {item!r} is not MODEL:KEY=VALUE", "e.g. --model-opt q8:ctx-size=8192"
            )
        settings.setdefault(model.strip(), {})[key.strip()] = value.strip()
    return dataclasses.replace(
        opts,
        models=names(models, "--models") if models is not None else None,
        models_max=models_max,
        load_on_start=names(load_on_start, "--load-on-start") if load_on_start is not None else None,
        warmup=warmup,
        model_settings=settings or None,
    )


def _instance_result(
    command: str, json_out: bool, outcome: Outcome, warnings: list[str] | None = None
) -> None:
    if json_out:
        data = {"name": outcome.name, "message": outcome.message, "files": list(outcome.files),
                "restarted": outcome.restarted, "warnings": warnings or [],
                "spec": outcome.spec.to_dict() if outcome.spec is not None else None}  # fmt: skip
        emit_json(envelope(command, outcome.changed, data))
        return
    out.print(escape(outcome.message))
    for w in warnings or []:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")


def _linger_notes(instances: Instances, linger: bool) -> list[str]:
    from nativellm.serve.instances import enable_linger, linger_enabled

    if instances.paths.scope is not Scope.USER:
        return []
    if linger:
        enable_linger()
        return []
    state = linger_enabled()
    if state is False:
        return ["lingering is off for this user: instances stop at logout and don't start at boot; "
                "rerun with --linger (loginctl enable-linger)"]  # fmt: skip
    return []


@instance_app.command("add")
def instance_add(
    name: INameArg, extra: IExtra = None, model: IModel = None, port: IPort = None, host: IHost = None,
    ctx: ICtx = None, gpu_layers: IGpuLayers = None, threads: IThreads = None, parallel: IParallel = None,
    batch: IBatch = None, flash_attn: IFlash = None, cache_type_k: ICacheK = None, cache_type_v: ICacheV = None,
    mlock: IMlock = None, metrics: IMetrics = None, api_key_file: IKey = None, insecure_no_api_key: IInsecure = None,
    memory_max: IMem = None, cpus: ICpus = None, numa_node: INuma = None, gpus: IGpus = None, build: IBuild = None,
    enable: IEnable = None, start_timeout: ITimeout = None, force: IForce = False, no_systemd: INoSystemd = False,
    linger: ILinger = False, rpc: IRpc = None, router: IRouter = False, models: IModels = None,
    models_max: IModelsMax = None, load_on_start: ILoadOnStart = None, warmup: IWarmup = None,
    model_opt: IModelOpt = None, system: SystemOpt = False, json_out: JsonOpt = False, engine: IEngine = None,
) -> None:  # fmt: skip
    """Add an instance: write its spec and render its systemd units (does not start it).

    A router instance (--router --models a,b,c) serves several registered models behind one port;
    clients pick one with the request's `model` field."""
    _begin("instance add", json_out)
    opts = _instance_options(model, port, host, ctx, gpu_layers, threads, parallel, batch, flash_attn, cache_type_k,
                             cache_type_v, mlock, metrics, api_key_file, insecure_no_api_key, memory_max, cpus,
                             numa_node, gpus, build, enable, start_timeout, extra, force)  # fmt: skip
    opts = _with_router(_with_rpc(opts, rpc), router, models, models_max, load_on_start, warmup, model_opt)
    opts = _with_engine(opts, engine)
    inst = _instances(system, no_systemd)
    outcome = inst.add(name, opts)
    _instance_result("instance add", json_out, outcome, [] if no_systemd else _linger_notes(inst, linger))


@instance_app.command("edit")
def instance_edit(
    name: INameArg, extra: IExtra = None, model: IModel = None, port: IPort = None, host: IHost = None,
    ctx: ICtx = None, gpu_layers: IGpuLayers = None, threads: IThreads = None, parallel: IParallel = None,
    batch: IBatch = None, flash_attn: IFlash = None, cache_type_k: ICacheK = None, cache_type_v: ICacheV = None,
    mlock: IMlock = None, metrics: IMetrics = None, api_key_file: IKey = None, insecure_no_api_key: IInsecure = None,
    memory_max: IMem = None, cpus: ICpus = None, numa_node: INuma = None, gpus: IGpus = None, build: IBuild = None,
    enable: IEnable = None, start_timeout: ITimeout = None, force: IForce = False, no_systemd: INoSystemd = False,
    rpc: IRpc = None, models: IModels = None, models_max: IModelsMax = None, load_on_start: ILoadOnStart = None,
    warmup: IWarmup = None, model_opt: IModelOpt = None, system: SystemOpt = False, json_out: JsonOpt = False,
    engine: IEngine = None,
) -> None:  # fmt: skip
    """Change an instance; a running instance restarts only when its units changed (a router's
    preset too: new model settings apply at once)."""
    _begin("instance edit", json_out)
    opts = _instance_options(model, port, host, ctx, gpu_layers, threads, parallel, batch, flash_attn, cache_type_k,
                             cache_type_v, mlock, metrics, api_key_file, insecure_no_api_key, memory_max, cpus,
                             numa_node, gpus, build, enable, start_timeout, extra, force)  # fmt: skip
    opts = _with_router(_with_rpc(opts, rpc), False, models, models_max, load_on_start, warmup, model_opt)
    opts = _with_engine(opts, engine)
    _instance_result("instance edit", json_out, _instances(system, no_systemd).edit(name, opts))


@instance_app.command("rm")
def instance_rm(name: INameArg, no_systemd: INoSystemd = False, system: SystemOpt = False,
                json_out: JsonOpt = False) -> None:  # fmt: skip
    """Stop and disable an instance and remove its spec and drop-ins."""
    _begin("instance rm", json_out)
    _instance_result("instance rm", json_out, _instances(system, no_systemd).remove(name))


@instance_app.command("list")
def instance_list(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """List instance specs."""
    _begin("instance list", json_out)
    specs = _instances(system, True).specs()
    if json_out:
        emit_json({"schema": "nativellm.instances/1", "instances": [s.to_dict() for s in specs]})
        return
    if not specs:
        out.print("no instances; add one with `nativellm instance add NAME --model MODEL`")
    for s in specs:
        out.print(
            f"{s.name}\t{s.model_label}\thttp://{s.host}:{s.port}\tbuild {s.build}"
            + ("\tenabled" if s.enable else "")
        )


@instance_app.command("show")
def instance_show(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Show an instance's spec and its rendered units."""
    _begin("instance show", json_out)
    inst = _instances(system, True)
    spec, units = inst.get(name), inst.rendered(name)
    if json_out:
        emit_json({"schema": "nativellm.instance/1", "spec": spec.to_dict(), "units": units})
        return
    out.print(f"# {inst.paths.config / 'instances' / (name + '.toml')}", markup=False)
    out.print(spec.to_toml(), markup=False)
    for rel, text in units.items():
        out.print(f"# {inst.paths.units / rel}", markup=False)
        out.print(text, markup=False)


def _lifecycle(command: str, name: str, system: bool, json_out: bool, action: str) -> None:
    _begin(command, json_out)
    inst = _instances(system)
    actions: dict[str, Callable[[str], Outcome]] = {
        "start": inst.start, "stop": inst.stop, "restart": inst.restart,
        "enable": lambda n: inst.set_enabled(n, True), "disable": lambda n: inst.set_enabled(n, False),
    }  # fmt: skip
    outcome = actions[action](name)
    _instance_result(command, json_out, outcome)


@app.command("start")
def instance_start(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Start an instance; returns when /health answers 200, or fails with llama-server's error."""
    _lifecycle("start", name, system, json_out, "start")


@app.command("stop")
def instance_stop(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Stop an instance."""
    _lifecycle("stop", name, system, json_out, "stop")


@app.command("restart")
def instance_restart(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Restart an instance and wait until it is ready."""
    _lifecycle("restart", name, system, json_out, "restart")


@app.command("enable")
def instance_enable(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Start an instance at boot (llama.target)."""
    _lifecycle("enable", name, system, json_out, "enable")


@app.command("disable")
def instance_disable(name: INameArg, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Don't start an instance at boot."""
    _lifecycle("disable", name, system, json_out, "disable")


@app.command("status")
def instance_status(
    name: Annotated[str | None, typer.Argument(help="One instance (default: all).")] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Unit state, PID, uptime, restarts, memory, CPU, health and metrics of instances."""
    _begin("status", json_out)
    rows = [s.to_dict() for s in _instances(system).status(name)]
    if json_out:
        emit_json({"schema": "nativellm.status/1", "instances": rows})
        return
    from nativellm.cli.views import show_instance_status

    show_instance_status(rows)


@app.command("logs")
def instance_logs(
    name: INameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines to show.")] = 50,
    system: SystemOpt = False,
) -> None:
    """Read an instance's journal."""
    from nativellm import run as runner

    _begin("logs", False)
    runner.exec_replace(_instances(system, True).journal_argv(name, follow=follow, lines=lines))


@app.command("run")
def instance_run(name: INameArg, system: SystemOpt = False) -> None:
    """Run an instance in the foreground without systemd (same argv as its unit)."""
    from nativellm import run as runner

    _begin("run", False)
    inst = _instances(system, True)
    argv = inst.foreground_argv(name)
    env = inst.foreground_env(name)
    runner.exec_replace(argv, **({"env": env} if env else {}))


# --------------------------------------------------------------------------- end instance commands


def _with_engine(opts: InstanceOptions, engine: str | None) -> InstanceOptions:
    """--engine llama|mlx|auto (checked by the use case: serve/mlx_instance.py)."""
    import dataclasses

    return opts if engine is None else dataclasses.replace(opts, engine=engine)
