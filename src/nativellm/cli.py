"""The typer app: parse, call one use-case function, render. The only importer of typer."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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
    debug: Annotated[
        bool, typer.Option("--debug", help="Verbose logs and full tracebacks on errors.")
    ] = False,
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


def _plan_options(backend: str | None, portable: bool, native: bool, baseline: bool, rpc: bool) -> Any:
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
        source=SourceRequest(
            directory=source, tarball=tarball, sha256=sha256, ref=ref, repo=repo or DEFAULT_REPO
        ),
        jobs=jobs,
        dry_run=dry_run,
        from_index=from_index,
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
    from nativellm.systemd import Systemd
    from nativellm.upgrade import rollback_and_restart

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


# --------------------------------------------------------------------------- model commands (issue 3)
# (section owned by the model-store work; keep additions between these markers)
model_app = typer.Typer(help="The model store: add, pull, import, inspect, verify and fit GGUF models.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(model_app, name="model")

NameOpt = Annotated[str | None, typer.Option("--name", help="Registry name (default: from the file).")]


def _model_result(command: str, json_out: bool, changed: bool, rec: Any, done: str) -> None:
    if json_out:
        emit_json(envelope(command, changed, {"model": rec.to_dict()}))
    else:
        same = f"{rec.name} is already registered; no change"
        out.print(f"{done} {rec.name} ({rec.path})" if changed else same)


@model_app.command("add")
def model_add(
    path: Annotated[Path, typer.Argument(help="A GGUF file (the first part of a split model).")],
    name: NameOpt = None,
    link: Annotated[bool, typer.Option("--link", help="Reference the file where it is (default).")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the file into the store.")] = False,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 of the file; refused if it differs.")
    ] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Validate and register an existing GGUF file."""
    from nativellm.models import add_model

    _begin("model add", json_out)
    if link and copy:
        raise UsageError("--link and --copy exclude each other", "pick one")
    rec, changed = add_model(resolve_paths(_scope(system)), path, name=name, copy=copy, sha256=sha256)
    _model_result("model add", json_out, changed, rec, "registered")


@model_app.command("pull")
def model_pull(
    spec: Annotated[
        str, typer.Argument(help="hf:OWNER/REPO/FILE.gguf[@REV], hf:OWNER/REPO:QUANT or https://...")
    ],
    name: NameOpt = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected sha256 of the file.")] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Download a model (resumable, verified), validate it and register it."""
    from nativellm.models_pull import PullOptions, pull_model
    from nativellm.models_view import DownloadProgress

    _begin("model pull", json_out)
    progress = DownloadProgress(quiet=json_out)
    try:
        rec, changed = pull_model(resolve_paths(_scope(system)), PullOptions(spec, name, sha256), progress,
                                  progress.waiting)  # fmt: skip
    finally:
        progress.close()
    _model_result("model pull", json_out, changed, rec, "pulled")


@model_app.command("import-ollama")
def model_import_ollama(
    ref: Annotated[str | None, typer.Argument(help="Ollama model NAME[:TAG].")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Import every model Ollama has.")] = False,
    ollama_dir: Annotated[
        Path | None, typer.Option("--ollama-dir", help="Ollama's models dir (has manifests/ and blobs/).")
    ] = None,
    name: NameOpt = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Register Ollama's GGUF blobs in place, with their template and parameters."""
    from nativellm.models import import_ollama, import_ollama_all

    _begin("model import-ollama", json_out)
    paths = resolve_paths(_scope(system))
    if all_models == (ref is not None):
        raise UsageError("give either an Ollama model NAME[:TAG] or --all", "e.g. import-ollama llama3.2:3b")
    if all_models and name:
        raise UsageError("--name applies to one model, not --all", "drop --name")
    results = (
        import_ollama_all(paths, ollama_dir=ollama_dir)
        if all_models
        else [import_ollama(paths, ref or "", ollama_dir=ollama_dir, name=name)]
    )
    changed = any(c for _, c in results)
    if json_out:
        data = {"models": [r.to_dict() for r, _ in results], "imported": [r.name for r, c in results if c]}
        emit_json(envelope("model import-ollama", changed, data))
        return
    if not results:
        out.print("the Ollama store has no models")
    for rec, c in results:
        out.print(f"imported {rec.name} ({rec.path})" if c else f"{rec.name} is already registered")


@model_app.command("list")
def model_list(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """List registered models."""
    from nativellm.models import ModelRegistry

    _begin("model list", json_out)
    records = ModelRegistry(resolve_paths(_scope(system))).list()
    if json_out:
        emit_json({"schema": "nativellm.models/1", "models": [r.to_dict() for r in records]})
        return
    from nativellm.models_view import show_list

    show_list(records)


@model_app.command("inspect")
def model_inspect(
    name: Annotated[str, typer.Argument(help="A registered model, or the path of a GGUF file.")],
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Read the GGUF and show architecture, parameters, quant, context, layers, heads and more."""
    from nativellm.models import inspect_model

    _begin("model inspect", json_out)
    rec = inspect_model(resolve_paths(_scope(system)), name)
    if json_out:
        emit_json({"schema": "nativellm.model/1", "model": rec.to_dict()})
        return
    from nativellm.models_view import show_inspect

    show_inspect(rec)


@model_app.command("verify")
def model_verify(name: str, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Re-hash the model's file(s), compare with the recorded sha256 and re-validate the GGUF."""
    from nativellm.models import verify_model

    _begin("model verify", json_out)
    res = verify_model(resolve_paths(_scope(system)), name)
    _report("model verify", json_out, False, f"{name}: ok, sha256 {res.actual}",
            {"name": name, "ok": res.ok, "sha256": res.actual, "path": str(res.path)})  # fmt: skip


@model_app.command("rm")
def model_rm(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="Remove even if an instance uses it.")] = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Unregister a model (deleting its file only if the store owns it)."""
    from nativellm.models import remove_model

    _begin("model rm", json_out)
    rec = remove_model(resolve_paths(_scope(system)), name, force=force)
    _report("model rm", json_out, True, f"removed {rec.name}" + ("" if rec.owned else f" (kept {rec.path})"),
            {"removed": rec.name, "deleted_files": rec.owned})  # fmt: skip


@model_app.command("demo")
def model_demo(
    name: Annotated[str, typer.Option("--name", help="Name in the registry.")] = "demo",
    size: Annotated[str, typer.Option("--size", help="tiny (~17M params) or small (~0.4B).")] = "tiny",
    vocab: Annotated[
        Path | None, typer.Option("--vocab", help="llama.cpp source tree (or vocab GGUF): the tokenizer.")
    ] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a random-weight llama model with a real tokenizer (its output is gibberish) and register it."""
    from nativellm.models import write_demo_model

    _begin("model demo", json_out)
    rec, changed = write_demo_model(resolve_paths(_scope(system)), name, size, vocab)
    _model_result("model demo", json_out, changed, rec, "wrote demo model")


@model_app.command("fit")
def model_fit(
    name: str,
    ctx: Annotated[int, typer.Option("--ctx", help="llama-server --ctx-size (0: the model's own).")] = 4096,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Parallel slots.")] = 1,
    gpu_layers: Annotated[int, typer.Option("--gpu-layers", min=0, help="Layers offloaded to GPUs.")] = 0,
    cache_type_k: Annotated[str, typer.Option("--cache-type-k", help="KV cache type for K.")] = "f16",
    cache_type_v: Annotated[str, typer.Option("--cache-type-v", help="KV cache type for V.")] = "f16",
    profile: ProfileOpt = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Estimate the memory the model needs and say whether it fits this host (or --profile)."""
    from nativellm.hardware import detect_host
    from nativellm.hardware.profile import load_profile
    from nativellm.models import fit_model

    _begin("model fit", json_out)
    host = load_profile(profile) if profile else detect_host(verify=False)
    report = fit_model(resolve_paths(_scope(system)), name, host, ctx=ctx, parallel=parallel,
                       gpu_layers=gpu_layers, cache_type_k=cache_type_k,
                       cache_type_v=cache_type_v)  # fmt: skip
    if json_out:
        emit_json({"schema": "nativellm.fit/1", "model": name, "ctx": ctx, **report.to_dict()})
        return
    from nativellm.models_view import show_fit

    show_fit(report)


# --------------------------------------------------------------------------- end model commands


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


def _instances(system: bool, no_systemd: bool = False) -> Any:
    from nativellm.instances import Instances
    from nativellm.systemd import Systemd

    scope = _scope(system)
    return Instances(resolve_paths(scope), None if no_systemd else Systemd(scope))


def _instance_options(
    model: str | None, port: int | None, host: str | None, ctx: int | None, gpu_layers: int | None,
    threads: int | None, parallel: int | None, batch: int | None, flash_attn: str | None,
    cache_type_k: str | None, cache_type_v: str | None, mlock: bool | None, metrics: bool | None,
    api_key_file: Path | None, insecure_no_api_key: bool | None, memory_max: str | None, cpus: str | None,
    numa_node: int | None, gpus: str | None, build: str | None, enable: bool | None, start_timeout: int | None,
    extra: list[str] | None, force: bool,
) -> Any:  # fmt: skip
    from nativellm.instances import InstanceOptions

    gpu_list: tuple[int, ...] | None = None
    if gpus is not None:
        try:
            gpu_list = tuple(int(g) for g in gpus.split(",") if g.strip())
        except ValueError:
            raise UsageError(f"--gpus {gpus!r} is not a list of GPU indices", "use e.g. --gpus 0,1") from None
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


def _with_rpc(opts: Any, rpc: str | None) -> Any:
    import dataclasses

    if rpc is None:
        return opts
    return dataclasses.replace(opts, rpc=tuple(e.strip() for e in rpc.split(",") if e.strip()))


def _instance_result(command: str, json_out: bool, outcome: Any, warnings: list[str] | None = None) -> None:
    if json_out:
        data = {"name": outcome.name, "message": outcome.message, "files": list(outcome.files),
                "restarted": outcome.restarted, "warnings": warnings or [],
                "spec": outcome.spec.to_dict() if outcome.spec is not None else None}  # fmt: skip
        emit_json(envelope(command, outcome.changed, data))
        return
    out.print(escape(outcome.message))
    for w in warnings or []:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")


def _linger_notes(instances: Any, linger: bool) -> list[str]:
    from nativellm.instances import enable_linger, linger_enabled

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
    linger: ILinger = False, rpc: IRpc = None, system: SystemOpt = False, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Add an instance: write its spec and render its systemd units (does not start it)."""
    _begin("instance add", json_out)
    opts = _instance_options(model, port, host, ctx, gpu_layers, threads, parallel, batch, flash_attn, cache_type_k,
                             cache_type_v, mlock, metrics, api_key_file, insecure_no_api_key, memory_max, cpus,
                             numa_node, gpus, build, enable, start_timeout, extra, force)  # fmt: skip
    opts = _with_rpc(opts, rpc)
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
    rpc: IRpc = None, system: SystemOpt = False, json_out: JsonOpt = False,
) -> None:  # fmt: skip
    """Change an instance; a running instance restarts only when its units changed."""
    _begin("instance edit", json_out)
    opts = _instance_options(model, port, host, ctx, gpu_layers, threads, parallel, batch, flash_attn, cache_type_k,
                             cache_type_v, mlock, metrics, api_key_file, insecure_no_api_key, memory_max, cpus,
                             numa_node, gpus, build, enable, start_timeout, extra, force)  # fmt: skip
    opts = _with_rpc(opts, rpc)
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
            f"{s.name}\t{s.model}\thttp://{s.host}:{s.port}\tbuild {s.build}"
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
    outcome = {
        "start": inst.start, "stop": inst.stop, "restart": inst.restart,
        "enable": lambda n: inst.set_enabled(n, True), "disable": lambda n: inst.set_enabled(n, False),
    }[action](name)  # fmt: skip
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
    from nativellm.instance_views import show_instance_status

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
    runner.exec_replace(_instances(system, True).foreground_argv(name))


# --------------------------------------------------------------------------- end instance commands


# ---- artifact commands (issue 5)
artifacts_app = typer.Typer(help="Artifact indexes for fleets: build once, install everywhere.",
                            no_args_is_help=True)  # fmt: skip
app.add_typer(artifacts_app, name="artifacts")


@app.command("pack")
def pack_cmd(
    build_id: Annotated[str | None, typer.Argument(help="Build to pack (default: current).")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Artifact file, or a directory for the default name."),
    ] = None,
    compression: Annotated[
        str, typer.Option("--compression", help="auto (zst if zstandard is installed, else gz), zst or gz.")
    ] = "auto",
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Pack an installed build into nativellm-<id>-<variant>.tar.zst and print its sha256."""
    from nativellm.artifacts import PackOptions, pack

    _begin("pack", json_out)
    res = pack(resolve_paths(_scope(system)), PackOptions(build_id, output, compression))
    data = {"build_id": res.build_id, "file": str(res.path), "sha256": res.sha256, "size": res.size,
            "variant": res.meta["variant"], "fingerprint": res.meta["fingerprint"],
            "requirements": res.meta["requirements"], "duration_s": round(res.duration_s, 2)}  # fmt: skip
    if json_out:
        emit_json(envelope("pack", res.changed, data))
        return
    verb = "packed" if res.changed else "unchanged"
    out.print(f"{verb} {res.build_id} -> {res.path} ({res.size / 1e6:.1f} MB)")
    out.print(f"needs: {res.meta['requirements_text']}")
    out.print(f"sha256 {res.sha256}  {res.path.name}")


@app.command("install-artifact")
def install_artifact_cmd(
    location: Annotated[str, typer.Argument(help="Artifact file or http(s) URL.", metavar="FILE_OR_URL")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 (default: FILE_OR_URL.sha256).")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="Check requirements against this HostProfile instead of this host."),
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Make it current after the smoke test.")
    ] = True,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify, check the requirements, unpack, smoke-test and install a packed build."""
    from nativellm.artifacts import InstallOptions, install_artifact

    _begin("install-artifact", json_out)
    res = install_artifact(
        resolve_paths(_scope(system)),
        InstallOptions(location, sha256, profile, activate),
        ConsoleReporter(quiet=json_out),
    )
    data = {"build_id": res.build_id, "installed": res.installed, "activated": res.activated,
            "sha256": res.sha256, "requirements": res.requirements.to_dict(), "smoke_test": res.smoke_test,
            "path": str(res.record.path), "duration_s": round(res.duration_s, 2),
            "notes": list(res.notes)}  # fmt: skip
    if json_out:
        emit_json(envelope("install-artifact", res.changed, data))
        return
    for note in res.notes:
        out.print(note)
    if res.activated:
        out.print(f"current -> {res.build_id}")


@app.command("fingerprint")
def fingerprint_cmd(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """Print this host's hardware-class key: hosts with equal keys can share an artifact."""
    from nativellm.fingerprint import fingerprint
    from nativellm.hardware import detect_host
    from nativellm.hardware.profile import load_profile

    _begin("fingerprint", json_out)
    fp = fingerprint(load_profile(profile) if profile else detect_host())
    if json_out:
        emit_json(fp.to_dict())
        return
    out.print(fp.key)


@artifacts_app.command("index")
def artifacts_index(
    directory: Annotated[Path, typer.Argument(help="Directory holding nativellm-*.tar.zst/.tar.gz files.")],
    json_out: JsonOpt = False,
) -> None:
    """Write DIR/index.json: {fingerprint, version} -> {file, sha256, size}, for a fleet to read."""
    from nativellm.artifact_index import write_index

    _begin("artifacts index", json_out)
    res = write_index(directory)
    data = {"index": str(res.path), "artifacts": [dict(e) for e in res.entries]}
    if json_out:
        emit_json(envelope("artifacts index", res.changed, data))
        return
    out.print(f"{'wrote' if res.changed else 'unchanged'} {res.path} ({len(res.entries)} artifact(s))")
    for e in res.entries:
        out.print(f"  {e['fingerprint']}  {e['version']}  {e['file']}")


# ---- end artifact commands


# --------------------------------------------------------------------------- bench commands (issue 6)
@app.command("bench")
def bench(
    target: Annotated[str, typer.Argument(help="An instance name, or `builds` to compare builds.")],
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
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Measure throughput: `bench builds` compares builds with llama-bench; `bench NAME` loads an instance."""
    from nativellm import benchview

    _begin("bench", json_out)
    paths = resolve_paths(_scope(system))
    if target == "builds":
        report = benchview.run_bench_builds(
            paths, build_ids or [], model, repetitions, n_prompt, n_gen, json_out
        )
    else:
        try:
            levels = [int(x) for x in concurrency.split(",") if x.strip()]
        except ValueError:
            raise UsageError(
                f"--concurrency {concurrency!r} is not a list of integers", "pass e.g. 1,4,8"
            ) from None
        report = benchview.run_bench_instance(
            paths, target, url, levels, prompt_tokens, max_tokens, requests, duration, json_out
        )
    if json_out:
        emit_json(report)


@app.command("doctor")
def doctor(system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Check the store, builds, instances, models, disk and hardware; say how to fix each finding."""
    from nativellm import benchview

    _begin("doctor", json_out)
    findings = benchview.run_doctor_checks(resolve_paths(_scope(system)))
    problems = [f for f in findings if not f.ok]
    if json_out:
        emit_json(
            {"schema": "nativellm.doctor/1", "ok": not problems, "findings": [f.to_dict() for f in findings]}
        )
    else:
        benchview.show_findings(findings)
    if problems:
        from nativellm.doctor import DoctorFoundProblems

        raise DoctorFoundProblems(f"{len(problems)} problem(s) found", "apply the fixes listed above")


# --------------------------------------------------------------------------- end bench commands


# ---- fleet commands (issue 5)
@app.command("upgrade")
def upgrade_cmd(
    ref: Annotated[str | None, typer.Option("--ref", help="llama.cpp git tag or commit to build.")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="Git URL to clone --ref from.")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="Build from a local llama.cpp tree.")
    ] = None,
    tarball: Annotated[
        str | None, typer.Option("--tarball", help="Build from a tarball (path or URL).")
    ] = None,
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="Install this packed build instead of compiling.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 of --tarball/--artifact.")
    ] = None,
    instances: Annotated[
        str, typer.Option("--instances", help="all, or NAME,... of the instances to move.")
    ] = "all",
    canary: Annotated[
        str | None, typer.Option("--canary", help="Move this one instance only, then stop.")
    ] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build or install a new llama.cpp beside the old one, then restart the instances that follow
    `current` one at a time, each checked with /health and a real completion; any failure puts
    the old build back and restarts the affected instances on it."""
    from nativellm.build import BuildOptions
    from nativellm.source import DEFAULT_REPO, SourceRequest
    from nativellm.systemd import Systemd
    from nativellm.upgrade import UpgradeOptions, raise_if_rolled_back, rollback_error, upgrade

    _begin("upgrade", json_out)
    if sum(x is not None for x in (source, tarball, ref, artifact)) > 1:
        raise UsageError(
            "--ref, --source, --tarball and --artifact exclude each other", "give one new version"
        )
    if sha256 and not (tarball or artifact):
        raise UsageError("--sha256 only applies to --tarball or --artifact", "drop --sha256")
    build_opts = None
    if artifact is None and (source or tarball or ref):
        build_opts = BuildOptions(
            source=SourceRequest(
                directory=source, tarball=tarball, sha256=sha256, ref=ref, repo=repo or DEFAULT_REPO
            )
        )
    names = None if instances == "all" else tuple(n.strip() for n in instances.split(",") if n.strip())
    if canary is not None and instances != "all":
        raise UsageError("--canary and --instances exclude each other", "give one of them")
    scope = _scope(system)
    res = upgrade(
        resolve_paths(scope),
        UpgradeOptions(build_opts, artifact, sha256 if artifact else None, names, canary),
        Systemd(scope),
        ConsoleReporter(quiet=json_out),
    )
    if json_out and res.rolled_back:
        failure = rollback_error(res)
        # One document: the error envelope plus what happened; _fail then only writes stderr.
        emit_json(error_envelope("upgrade", failure) | {"changed": True, "data": res.to_dict()})
        STATE.json = False
        raise failure
    if json_out:
        emit_json(envelope("upgrade", res.changed, res.to_dict()))
    else:
        for s in res.steps:
            out.print(
                escape(f"{s.name}: {s.result} in {s.seconds:.1f}s" + (f" ({s.detail})" if s.detail else ""))
            )
        for name, why in res.skipped:
            out.print(escape(f"{name}: skipped ({why})"))
        if not res.rolled_back:
            out.print(escape(f"current: {res.previous} -> {res.current}" if res.previous != res.current
                             else f"current: {res.current} (unchanged)"))  # fmt: skip
        for note in res.notes:
            out.print(escape(note))
    raise_if_rolled_back(res)


RpcHost = Annotated[str, typer.Option("--host", help="Bind address (default 127.0.0.1; see the warning).")]


@instance_app.command("add-rpc-worker")
def add_rpc_worker(
    name: Annotated[str, typer.Argument(help="Worker name, e.g. gpu1.")],
    port: Annotated[int, typer.Option("--port", help="Port rpc-server listens on.")],
    host: RpcHost = "127.0.0.1",
    allow: Annotated[
        str | None, typer.Option("--allow", help="Peers (heads) that may connect: ADDR or CIDR,...")
    ] = None,
    gpus: IGpus = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of the worker.")] = None,
    build: IBuild = None,
    start: Annotated[bool, typer.Option("--start", help="Start it and wait until it listens.")] = False,
    no_systemd: INoSystemd = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a llama.cpp RPC worker (rpc-server) as llama-rpc@NAME.service; needs a `build --rpc`."""
    from nativellm.rpc import RpcWorkers, RpcWorkerSpec
    from nativellm.systemd import Systemd

    _begin("instance add-rpc-worker", json_out)
    gpu_list: tuple[int, ...] | None = None
    if gpus is not None:
        try:
            gpu_list = tuple(int(g) for g in gpus.split(",") if g.strip())
        except ValueError:
            raise UsageError(f"--gpus {gpus!r} is not a list of GPU indices", "use e.g. --gpus 0,1") from None
    peers = tuple(p.strip() for p in (allow or "").split(",") if p.strip())
    spec = RpcWorkerSpec(name, port, host, gpu_list, peers, threads, build or "current")
    scope = _scope(system)
    res = RpcWorkers(resolve_paths(scope), None if no_systemd else Systemd(scope)).add(spec, start=start)
    if json_out:
        data = {"name": res.name, "message": res.message, "files": list(res.files), "started": res.started,
                "endpoint": spec.endpoint, "warnings": [res.warning] if res.warning else []}  # fmt: skip
        emit_json(envelope("instance add-rpc-worker", res.changed, data))
    else:
        out.print(escape(res.message))
    if res.warning:
        err.print(f"[yellow]warning:[/yellow] {escape(res.warning)}")


@instance_app.command("rm-rpc-worker")
def rm_rpc_worker(
    name: Annotated[str, typer.Argument(help="Worker name.")],
    no_systemd: INoSystemd = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Stop an RPC worker and remove its spec and drop-in."""
    from nativellm.rpc import RpcWorkers
    from nativellm.systemd import Systemd

    _begin("instance rm-rpc-worker", json_out)
    scope = _scope(system)
    res = RpcWorkers(resolve_paths(scope), None if no_systemd else Systemd(scope)).remove(name)
    if json_out:
        emit_json(envelope("instance rm-rpc-worker", True, {"name": name, "files": list(res.files)}))
    else:
        out.print(escape(res.message))


# ---- end fleet commands


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
    if rv == Interrupted.exit_code:  # typer turns Ctrl-C into a silent "return 130"; commands return None
        _fail(Interrupted("interrupted; nothing was changed", "run the command again"))
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
