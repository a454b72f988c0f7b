"""Rendering an instance spec into systemd units: the exact llama-server argv, the per-instance
drop-ins, and the shared templates shipped in the package's `systemd/` folder.

Pure: takes a spec plus the resolved paths, returns file texts. Writing happens in instances.py.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nativellm.errors import InstanceError
from nativellm.hardware.devices import DeviceClass
from nativellm.paths import Scope, package_data
from nativellm.serve.router import PRESET_NAME, render_preset, router_argv
from nativellm.serve.server_flags import UNKNOWN, ServerFlags
from nativellm.serve.units import Section, UnitFile, exec_line, plain_value, quote_env, render
from nativellm.specs import InstanceSpec, http_url

TEMPLATE_FILES = ("llama@.service", "llama.target", "llama-watchdog@.service", "llama-watchdog@.timer")
DROPIN_NAME = "50-nativellm.conf"
CREDENTIAL = "api-key"

# Hang probe: 3 tries, 3 s each, 1 s apart, every 15 s (timer) -> a hung server is killed
# within about 30 s and restarted by Restart=on-failure.
PROBE_TRIES = 3
PROBE_TIMEOUT_S = 3
# Linux keeps a closed connection in TIME_WAIT for 60 s: the longest a server waits for its port
# (see ServerFlags.socket_reuse) before it starts anyway.
TIME_WAIT_S = 65
# How long one start of a GPU instance waits for its device (node, then llama-server listing it).
# Short on purpose: a failed start is retried by Restart=on-failure, so with the template's start
# limit (5 starts in 120 s) a late driver gets about 5 x 15 s, and a GPU that is gone ends `failed`
# within about 80 s instead of restarting forever (60 s a try would never reach the limit).
DEVICE_WAIT_S = 15


@dataclass(frozen=True)
class Resolved:
    """Everything outside the spec that rendering needs, looked up once by the caller."""

    scope: Scope
    server_binary: Path
    model_path: Path
    backend: str
    python: str
    healthcheck: Path
    systemctl: str
    spec_path: Path
    # What this build's llama-server accepts (its --help): the argv is rendered for it.
    flags: ServerFlags = UNKNOWN
    # A router's models (name -> file) and where its preset INI goes (the unit dir).
    model_paths: Mapping[str, Path] = field(default_factory=dict)
    units_dir: Path = Path("/")
    # --engine mlx: server_binary is the MLX runtime's Python, and the unit runs in this alias
    # directory (nativellm/mlx/engine.py) with this environment.
    workdir: Path | None = None
    engine_env: Mapping[str, str] | None = None


def unsafe_for_root(path: Path) -> str | None:
    """Why root should not run (or read code from) `path`, else None.

    Every component of its real path, the file and each directory up to /, must be owned by
    root and not writable by group or others: anyone who could write one of them could replace
    what root runs. A world-writable directory with the sticky bit (/tmp) is accepted, because
    its root-owned entries (checked too) cannot be renamed or removed by other users. Parts that
    don't exist yet (the helper before its first write) are skipped: nativellm creates them as root.
    """
    real = Path(os.path.realpath(path))
    for part in (real, *real.parents):
        try:
            st = os.stat(part)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{part} cannot be checked ({exc.strerror})"
        if st.st_uid != 0:
            return f"{part} is owned by uid {st.st_uid}, not root"
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_dir:
            return f"{part} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def require_root_owned(helpers: Mapping[str, Path]) -> None:
    """System-scope units run the Python interpreter and the health helper as root (`+` and the
    watchdog): refuse when a non-root user could change what they run (see unsafe_for_root)."""
    for what, path in helpers.items():
        why = unsafe_for_root(path)
        if why is not None:
            raise InstanceError(
                f"system-scope units would run {what} {path} as root, but {why}",
                "install nativellm with a Python that root owns (e.g. /usr/bin/python3 or a venv under "
                "/opt made by root, no group/world-writable directories), then run the command again",
            )


def unit_name(name: str) -> str:
    return f"llama@{name}.service"


def watchdog_unit(name: str) -> str:
    return f"llama-watchdog@{name}.service"


def base_url(spec: InstanceSpec) -> str:
    """Where nativellm itself (and the readiness and hang probes) reach the server."""
    return http_url(spec.host, spec.port)


def health_url(spec: InstanceSpec) -> str:
    return f"{base_url(spec)}/health"


def server_argv(
    spec: InstanceSpec,
    binary: Path,
    model: Path,
    *,
    api_key_path: str | None,
    flags: ServerFlags = UNKNOWN,
    backend: str | None = None,
) -> list[str]:
    """The exact llama-server argv for the server `flags` describes; `nativellm run` uses it as
    is, the unit through quoting. Raises InstanceError when that server lacks a flag the spec
    needs (an old tag pinned by the user), instead of a unit that can never start.

    A Vulkan instance with GPU layers also logs at verbosity 4: its load log (the device each layer
    went to, and the buffer sizes `status` reports as its GPU memory) is printed only at that level
    in 2026 trees, and Vulkan has no per-process memory tool like NVML or amd-smi. The price is
    about 25 more journal lines per request; CUDA and HIP instances keep the default."""
    argv = [
        str(binary),
        "--model",
        str(model),
        "--alias",
        spec.name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
    ]
    if spec.ctx is not None:
        argv += ["--ctx-size", str(spec.ctx)]
    if spec.threads is not None:
        argv += ["--threads", str(spec.threads)]
    if spec.gpu_layers is not None:
        argv += ["--n-gpu-layers", str(spec.gpu_layers)]
    if spec.parallel is not None:
        argv += ["--parallel", str(spec.parallel)]
    if spec.batch is not None:
        argv += ["--batch-size", str(spec.batch)]
    if spec.flash_attn is not None:
        argv += flags.flash_attn_args(spec.flash_attn)
    if spec.cache_type_k is not None:
        argv += ["--cache-type-k", spec.cache_type_k]
    if spec.cache_type_v is not None:
        argv += ["--cache-type-v", spec.cache_type_v]
    if spec.mlock:
        argv += list(flags.mlock_args)
    if spec.numa_node is not None:
        argv += ["--numa", "numactl"]
    if spec.rpc:
        argv += ["--rpc", ",".join(spec.rpc)]
    if spec.metrics and flags.knows("--metrics"):  # only `status` reads it: optional
        argv.append("--metrics")
    if backend == "vulkan" and spec.gpu_layers and flags.knows("--log-verbosity"):
        argv += ["--log-verbosity", "4"]
    if api_key_path is not None:
        argv += ["--api-key-file", api_key_path]
    missing = [a for a in argv[1:] if a.startswith("--") and not flags.knows(a)]
    if missing:
        raise InstanceError(
            f"instance {spec.name} needs {', '.join(missing)}, which the llama-server of {binary} "
            "does not know (it is older)",
            f"use a newer build (`nativellm builds list`, `nativellm upgrade`), or drop the setting "
            f"with `nativellm instance edit {spec.name}`",
        )
    argv += list(spec.extra_args)
    return argv


def _cpu_limits(cpus: str) -> tuple[str, str]:
    """--cpus 2.5 -> CPUQuota=250%; --cpus 0-3,6 -> AllowedCPUs=0-3,6."""
    try:
        return "CPUQuota", f"{round(float(cpus) * 100)}%"
    except ValueError:
        return "AllowedCPUs", cpus


def render_dropin(spec: InstanceSpec, r: Resolved) -> str:
    devices = DeviceClass.for_backend(r.backend)
    key_path = "${CREDENTIALS_DIRECTORY}/" + CREDENTIAL if spec.api_key_file else None
    if spec.engine == "mlx":
        from nativellm.mlx.engine import mlx_argv

        argv = mlx_argv(spec, r.server_binary, spec.name)
    elif spec.is_router:
        argv = router_argv(spec, r.server_binary, preset_path(spec, r), api_key_path=key_path)
    else:
        argv = server_argv(
            spec, r.server_binary, r.model_path, api_key_path=key_path, flags=r.flags, backend=r.backend
        )
    expand = [len(argv) - len(spec.extra_args) - 1] if key_path else []
    # In system scope the helpers run with "+" (outside the sandbox, as root): the interpreter
    # nativellm was installed with (pyenv, a venv under /root) may be unreadable to the
    # dynamic user. They only poll /health on loopback. Because they run as root, the caller
    # checks first that only root can change the interpreter and the helper (require_root_owned).
    privileged = "+" if r.scope is Scope.SYSTEM else ""
    ready = [
        r.python,
        "-I",
        str(r.healthcheck),
        "ready",
        "--url",
        health_url(spec),
        "--timeout",
        str(spec.start_timeout),
    ]
    ready_expand: list[int] = []
    if spec.is_router and spec.load_on_start:
        # A router is ready once its start-up models are loaded (and warmed up): `instance start`
        # returns when they serve, as it does for a single-model instance.
        ready += ["--models", ",".join(spec.load_on_start)] + (["--warmup"] if spec.warmup else [])
        if key_path:
            ready_expand = [len(ready) + 1]
            ready += ["--api-key-file", key_path]
    if spec.engine == "mlx":
        # mlx_lm.server answers /health 200 while it still loads: ready once it generates a token.
        ready += ["--engine", "mlx"]
    if spec.gpu_layers and not spec.is_router:
        # A router's children log through it with a port prefix, and may load later: their offload
        # is not checked here (the device check before start still is).
        # Readiness includes the offload: llama-server's own load log must not show a CPU fallback
        # (and where it logs placement, must show layers on a GPU); healthcheck.offload_problem.
        ready += ["--gpu-layers", str(spec.gpu_layers)]

    program = "mlx_lm.server" if spec.engine == "mlx" else "llama-server"
    what = f"router for {', '.join(spec.models or ())}" if spec.is_router else f"model {spec.model}"
    unit: list[tuple[str, str]] = [("Description", plain_value(f"{program} {spec.name}: {what}"))]
    service: list[tuple[str, str]] = []
    if devices.ready_path:
        unit.append(("After", "systemd-modules-load.service nvidia-persistenced.service"))
        # A bounded wait, not AssertPathExists: an assert fails the start for good (no restart),
        # though the driver may only be a few seconds late at boot.
        device_wait = [r.python, "-I", str(r.healthcheck), "device", "--path", devices.ready_path,
                       "--timeout", str(DEVICE_WAIT_S)]  # fmt: skip
        service.append(("ExecStartPre", privileged + exec_line(device_wait)))
    if spec.gpu_layers and r.flags.knows("--list-devices"):
        # Before serving: llama-server itself, under this unit's environment and device policy,
        # must list a GPU (bounded retries for a late driver), or the start fails; see healthcheck.
        # An RPC head's layers go to its workers' devices: --rpc (before --list-devices, which
        # prints and exits when parsed) registers them, so they are listed too.
        rpc = ["--rpc", ",".join(spec.rpc)] if spec.rpc else []
        devices_check = [r.python, "-I", str(r.healthcheck), "devices", "--timeout", str(DEVICE_WAIT_S),
                         "--", str(r.server_binary), *rpc, "--list-devices"]  # fmt: skip
        # System scope: as the other helpers, with "+" (the interpreter may be unreadable to the
        # dynamic user); the unit's Environment= (the *_VISIBLE_DEVICES filter) still applies.
        service.append(("ExecStartPre", privileged + exec_line(devices_check)))
    # Waits (seconds at most) until this server's bind would succeed; see ServerFlags.socket_reuse.
    port_wait = [r.python, "-I", str(r.healthcheck), "port", "--host", spec.host, "--port", str(spec.port),
                 "--reuse", r.flags.socket_reuse, "--timeout", str(TIME_WAIT_S)]  # fmt: skip
    service += [
        ("ExecStartPre", privileged + exec_line(port_wait)),
        ("ExecStart", ""),
        ("ExecStart", exec_line(argv, expand=expand)),
        ("ExecStartPost", privileged + exec_line(ready, expand=ready_expand)),
        ("TimeoutStartSec", f"{spec.start_timeout}s"),
    ]
    if r.workdir is not None:
        service.append(("WorkingDirectory", plain_value(str(r.workdir))))
    for key, value in sorted({**(r.engine_env or {}), **_environment(spec, devices)}.items()):
        service.append(("Environment", quote_env(key, value)))
    if spec.api_key_file:
        # The key file is read by systemd; llama-server reads it from its credentials dir.
        service.append(("LoadCredential", plain_value(f"{CREDENTIAL}:{spec.api_key_file}")))
    if spec.memory_max:
        service.append(("MemoryMax", plain_value(spec.memory_max)))
    if spec.cpus:
        service.append(_cpu_limits(spec.cpus))
    if spec.numa_node is not None:
        service += [("NUMAPolicy", "bind"), ("NUMAMask", str(spec.numa_node))]
    if spec.mlock:
        service.append(("LimitMEMLOCK", "infinity"))
    if r.scope is Scope.SYSTEM:
        # An unprivileged, per-instance user; the store and models stay world-readable.
        service.append(("DynamicUser", "yes"))
        needed = (r.server_binary, r.model_path, *r.model_paths.values(), Path(r.python), r.healthcheck)
        if not any(_under_home(p) for p in needed):
            service.append(("ProtectHome", "yes"))
    if devices is not DeviceClass.CPU:
        service += [("PrivateDevices", "no"), ("DevicePolicy", "closed")]
        service += [("DeviceAllow", d) for d in devices.device_allow]
        # GPU drivers JIT-compile kernels into W+X pages (CUDA PTX, ROCm code objects).
        service.append(("MemoryDenyWriteExecute", "no"))
    header = (
        f"Generated by nativellm from {r.spec_path}. Do not edit:\n"
        f"change it with `nativellm instance edit {spec.name}`."
    )
    return render(UnitFile((Section("Unit", tuple(unit)), Section("Service", tuple(service))), header=header))


def _under_home(path: Path) -> bool:
    return any(path.is_relative_to(h) for h in (Path("/home"), Path("/root"), Path("/run/user")))


# A router also lists the models in llama.cpp's download cache (LLAMA_CACHE, else ~/.cache/llama.cpp):
# pointed at a path that never exists, it serves exactly the instance's models.
ROUTER_CACHE = "/nonexistent/nativellm-router-cache"


def _environment(spec: InstanceSpec, devices: DeviceClass) -> Mapping[str, str]:
    env = ({"LLAMA_CACHE": ROUTER_CACHE} if spec.is_router else {}) | dict(spec.env)
    if spec.gpus is not None:
        env[devices.visible_devices_var] = ",".join(str(g) for g in spec.gpus)
    return env


def render_watchdog_dropin(spec: InstanceSpec, r: Resolved) -> str:
    scope = ["--user"] if r.scope is Scope.USER else []
    unit = unit_name(spec.name)
    condition = [r.systemctl, *scope, "is-active", "--quiet", unit]
    probe = [
        r.python,
        "-I",
        str(r.healthcheck),
        "probe",
        "--url",
        health_url(spec),
        "--tries",
        str(PROBE_TRIES),
        "--timeout",
        str(PROBE_TIMEOUT_S),
        "--",
        r.systemctl,
        *scope,
        "kill",
        "--signal=SIGKILL",
        unit,
    ]
    header = f"Generated by nativellm: hang probe for {unit}."
    service = (("ExecCondition", exec_line(condition)), ("ExecStart", exec_line(probe)))
    return render(UnitFile((Section("Service", service),), header=header))


def preset_path(spec: InstanceSpec, r: Resolved) -> Path:
    """A router's preset INI: in its unit's drop-in dir (systemd reads only *.conf there), written and
    removed with the unit files, readable by the unit's user as they are."""
    return r.units_dir / f"{unit_name(spec.name)}.d" / PRESET_NAME


def render_instance_files(spec: InstanceSpec, r: Resolved) -> dict[str, str]:
    """Unit-dir-relative path -> text for one instance's drop-ins (and a router's preset)."""
    files = {
        f"{unit_name(spec.name)}.d/{DROPIN_NAME}": render_dropin(spec, r),
        f"{watchdog_unit(spec.name)}.d/{DROPIN_NAME}": render_watchdog_dropin(spec, r),
    }
    if spec.is_router:
        header = f"Generated by nativellm from {r.spec_path}. Do not edit:\nchange it with `nativellm instance edit {spec.name}`."
        files[f"{unit_name(spec.name)}.d/{PRESET_NAME}"] = render_preset(
            spec, r.model_paths, r.flags, header=header
        )
    return files


def template_files() -> dict[str, str]:
    """The shared units shipped in the package's systemd/ folder."""
    root = package_data("systemd")
    return {name: (root / name).read_text(encoding="utf-8") for name in TEMPLATE_FILES}
