"""Commands: the model store (`nativellm model ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nativellm.cli.app import JsonOpt, SystemOpt, _begin, _scope, app
from nativellm.cli.build_cmds import ProfileOpt, _report
from nativellm.cli.output import emit_json, envelope, out
from nativellm.errors import UsageError
from nativellm.paths import resolve_paths

if TYPE_CHECKING:
    from nativellm.models.registry import ModelRecord

# --------------------------------------------------------------------------- model commands (issue 3)
# (section owned by the model-store work; keep additions between these markers)
model_app = typer.Typer(help="The model store: add, pull, import, inspect, verify and fit GGUF models.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(model_app, name="model")

NameOpt = Annotated[str | None, typer.Option("--name", help="Registry name (default: from the file).")]


def _model_result(command: str, json_out: bool, changed: bool, rec: ModelRecord, done: str) -> None:
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
    from nativellm.models.registry import add_model

    _begin("model add", json_out)
    if link and copy:
        raise UsageError("--link and --copy exclude each other", "pick one")
    from nativellm.models.mlx import is_mlx_dir
    from nativellm.models.mlx_store import add_mlx_model

    add = add_mlx_model if is_mlx_dir(path.expanduser()) else add_model  # an MLX directory (issue 17)
    rec, changed = add(resolve_paths(_scope(system)), path, name=name, copy=copy, sha256=sha256)
    _model_result("model add", json_out, changed, rec, "registered")


@model_app.command("pull")
def model_pull(
    spec: Annotated[
        str,
        typer.Argument(
            help="hf:OWNER/REPO/FILE.gguf[@REV], hf:OWNER/REPO:QUANT, hf:OWNER/REPO (MLX) or https://..."
        ),
    ],
    name: NameOpt = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected sha256 of the file.")] = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Download a model (resumable, verified), validate it and register it."""
    from nativellm.cli.views import DownloadProgress
    from nativellm.models.pull import PullOptions, pull_model

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
    from nativellm.models.registry import import_ollama, import_ollama_all

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
    from nativellm.models.registry import ModelRegistry

    _begin("model list", json_out)
    records = ModelRegistry(resolve_paths(_scope(system))).list()
    if json_out:
        emit_json({"schema": "nativellm.models/1", "models": [r.to_dict() for r in records]})
        return
    from nativellm.cli.views import show_list

    show_list(records)


@model_app.command("inspect")
def model_inspect(
    name: Annotated[str, typer.Argument(help="A registered model, or the path of a GGUF file.")],
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Read the GGUF and show architecture, parameters, quant, context, layers, heads and more."""
    from nativellm.models.registry import inspect_model

    _begin("model inspect", json_out)
    rec = inspect_model(resolve_paths(_scope(system)), name)
    if json_out:
        emit_json({"schema": "nativellm.model/1", "model": rec.to_dict()})
        return
    from nativellm.cli.views import show_inspect

    show_inspect(rec)


@model_app.command("verify")
def model_verify(name: str, system: SystemOpt = False, json_out: JsonOpt = False) -> None:
    """Re-hash the model's file(s), compare with the recorded sha256 and re-validate the GGUF."""
    from nativellm.models.registry import verify_model

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
    from nativellm.models.registry import remove_model

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
    from nativellm.models.registry import write_demo_model

    _begin("model demo", json_out)
    rec, changed = write_demo_model(resolve_paths(_scope(system)), name, size, vocab)
    _model_result("model demo", json_out, changed, rec, "wrote demo model")


@model_app.command("fit")
def model_fit(
    name: str,
    ctx: Annotated[
        int, typer.Option("--ctx", min=0, help="llama-server --ctx-size (0: the model's own).")
    ] = 4096,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Parallel slots.")] = 1,
    gpu_layers: Annotated[int, typer.Option("--gpu-layers", min=0, help="Layers offloaded to GPUs.")] = 0,
    cache_type_k: Annotated[str, typer.Option("--cache-type-k", help="KV cache type for K.")] = "f16",
    cache_type_v: Annotated[str, typer.Option("--cache-type-v", help="KV cache type for V.")] = "f16",
    profile: ProfileOpt = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
    n_cpu_moe: Annotated[
        int, typer.Option("--n-cpu-moe", min=0, help="Keep the experts of the first N layers in RAM.")
    ] = 0,
    cpu_moe: Annotated[bool, typer.Option("--cpu-moe", help="Keep all expert weights in RAM.")] = False,
    swa_full: Annotated[bool, typer.Option("--swa-full", help="Full-context sliding-window cache.")] = False,
) -> None:
    """Estimate the memory the model needs and say whether it fits this host (or --profile)."""
    from nativellm.hardware import detect_host
    from nativellm.hardware.amd import probe_rocm_vram_usage
    from nativellm.hardware.profile import load_profile
    from nativellm.hardware.vram import device_inventory, probe_nvml
    from nativellm.models.registry import fit_model

    _begin("model fit", json_out)
    host = load_profile(profile) if profile else detect_host(verify=False)
    # Free memory is this host's, live: never mixed into a --profile of another machine.
    devices = device_inventory(host, nvml=None if profile else probe_nvml,
                               amd=None if profile else probe_rocm_vram_usage)  # fmt: skip
    # Only the placement flags given: a plain fit calls fit_model as it always has.
    arch: dict[str, Any] = {k: v for k, v in (("n_cpu_moe", n_cpu_moe), ("cpu_moe", cpu_moe),
                                              ("swa_full", swa_full)) if v}  # fmt: skip
    report = fit_model(resolve_paths(_scope(system)), name, host, ctx=ctx, parallel=parallel,
                       gpu_layers=gpu_layers, cache_type_k=cache_type_k,
                       cache_type_v=cache_type_v, devices=devices, **arch)  # fmt: skip
    if json_out:
        emit_json({"schema": "nativellm.fit/1", "model": name, "ctx": ctx, **report.to_dict()})
        return
    from nativellm.cli.views import show_fit

    show_fit(report)


# --------------------------------------------------------------------------- end model commands
