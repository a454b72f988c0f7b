"""Filters that turn the role's model and instance dicts into nativellm argv lists."""

from __future__ import annotations

from typing import Any

# Instance keys with a value: the CLI option each maps to (mirrors `nativellm instance add`).
_VALUE_OPTIONS = {
    "model": "--model",
    "port": "--port",
    "host": "--host",
    "ctx": "--ctx",
    "gpu_layers": "--gpu-layers",
    "threads": "--threads",
    "parallel": "--parallel",
    "batch": "--batch",
    "flash_attn": "--flash-attn",
    "cache_type_k": "--cache-type-k",
    "cache_type_v": "--cache-type-v",
    "api_key_file": "--api-key-file",
    "memory_max": "--memory-max",
    "cpus": "--cpus",
    "numa_node": "--numa-node",
    "gpus": "--gpus",
    "build": "--build",
    "start_timeout": "--start-timeout",
    "rpc": "--rpc",
}
# Booleans with a --X/--no-X pair.
_TOGGLES = {"mlock": "mlock", "metrics": "metrics", "enabled": "enable"}
# Flags that are only ever switched on.
_FLAGS = {"insecure_no_api_key": "--insecure-no-api-key", "force": "--force"}
_ROLE_KEYS = {"name", "state", "extra_args", "linger"}
_DOWNLOAD_PREFIXES = ("hf:", "http://", "https://")


def nativellm_is_download(source: str) -> bool:
    return str(source).startswith(_DOWNLOAD_PREFIXES)


def nativellm_model_argv(model: dict[str, Any], binary: str, scope: list[str]) -> list[str]:
    source = str(model["source"])
    argv = [binary, "model", "pull" if nativellm_is_download(source) else "add", source]
    argv += ["--name", str(model["name"])]
    if model.get("sha256"):
        argv += ["--sha256", str(model["sha256"])]
    if model.get("copy") and not nativellm_is_download(source):
        argv.append("--copy")
    return [*argv, *scope, "--json"]


def nativellm_instance_argv(inst: dict[str, Any], binary: str, scope: list[str], exists: bool) -> list[str]:
    unknown = set(inst) - set(_VALUE_OPTIONS) - set(_TOGGLES) - set(_FLAGS) - _ROLE_KEYS
    if unknown:
        raise ValueError(f"instance {inst.get('name')!r}: unknown keys {sorted(unknown)}")
    argv = [binary, "instance", "edit" if exists else "add", str(inst["name"])]
    for key, opt in _VALUE_OPTIONS.items():
        value = inst.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [opt, str(value)]
    for key, opt in _TOGGLES.items():
        if inst.get(key) is not None:
            argv.append(f"--{opt}" if inst[key] else f"--no-{opt}")
    for key, opt in _FLAGS.items():
        if inst.get(key):
            argv.append(opt)
    if inst.get("linger") and not exists:
        argv.append("--linger")
    argv += [*scope, "--json"]
    extra = inst.get("extra_args") or []
    return [*argv, "--", *(str(a) for a in extra)] if extra else argv


def nativellm_health_url(spec: dict[str, Any]) -> str:
    host = str(spec.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{spec['port']}/health"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "nativellm_is_download": nativellm_is_download,
            "nativellm_model_argv": nativellm_model_argv,
            "nativellm_instance_argv": nativellm_instance_argv,
            "nativellm_health_url": nativellm_health_url,
        }
