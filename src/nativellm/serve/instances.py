"""Instance use cases: add, edit, rm, list, show, start/stop/restart/enable/disable, status, logs, run.

The TOML spec is the source of truth; units are rendered from it. Every mutating use case
checks all its input first and writes nothing on a bad one; it reports whether it changed
anything, and restarts a running instance only when its rendered units changed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nativellm import client, run
from nativellm.build.store import Store
from nativellm.errors import (
    InstanceError,
    ModelError,
    NativeLLMError,
    NotFoundError,
    ResourceError,
    UsageError,
)
from nativellm.hardware import detect_host
from nativellm.hardware.profile import HostProfile
from nativellm.hardware.vram import GpuProcessProbe
from nativellm.models.fit import estimate_fit
from nativellm.models.gguf import read_header
from nativellm.models.registry import ModelRegistry
from nativellm.paths import Paths, Scope
from nativellm.serve import mlx_instance
from nativellm.serve.dropins import (
    ROUTER_CACHE,
    Resolved,
    base_url,
    require_root_owned,
    server_argv,
)
from nativellm.serve.gpu_status import instance_gpu_memory
from nativellm.serve.manager import HEALTHCHECK as HEALTHCHECK
from nativellm.serve.manager import ServiceManager, default_manager
from nativellm.serve.observe import (
    find_error_line,
    offload_failure,
    read_metrics,
)
from nativellm.serve.router import PRESET_NAME, check_router, router_argv, router_models
from nativellm.serve.router_fit import router_fit
from nativellm.serve.server_flags import ServerFlags, probe_server_flags
from nativellm.serve.status import InstanceStatus as InstanceStatus
from nativellm.serve.systemd import Systemd, UnitState
from nativellm.serve.units import write_unit
from nativellm.specs import (
    InstanceSpec,
    is_loopback,
    list_specs,
    load_spec,
    read_spec_text,
    spec_path,
    validate_name,
    write_spec,
)

FIRST_PORT = 8080


@dataclass(frozen=True)
class InstanceOptions:
    """What the user asked for on `instance add/edit`. None: not given (keep / default)."""

    model: str | None = None
    port: int | None = None
    host: str | None = None
    ctx: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    parallel: int | None = None
    batch: int | None = None
    flash_attn: str | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    mlock: bool | None = None
    metrics: bool | None = None
    api_key_file: str | None = None
    insecure_no_api_key: bool | None = None
    memory_max: str | None = None
    cpus: str | None = None
    numa_node: int | None = None
    gpus: tuple[int, ...] | None = None
    rpc: tuple[str, ...] | None = None
    build: str | None = None
    enable: bool | None = None
    start_timeout: int | None = None
    extra_args: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    models_max: int | None = None
    load_on_start: tuple[str, ...] | None = None
    warmup: bool | None = None
    model_settings: Mapping[str, Mapping[str, str]] | None = None
    force: bool = False
    engine: str | None = None  # llama|mlx|auto


@dataclass(frozen=True)
class Outcome:
    name: str
    changed: bool
    message: str
    spec: InstanceSpec | None
    files: tuple[str, ...] = ()
    restarted: bool = False


@dataclass(frozen=True)
class Refresh:
    """Units re-rendered after `current` moved: which changed, which could not be rendered (why)."""

    rewritten: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def _insecure_warning(spec: InstanceSpec) -> str | None:
    if spec.insecure_no_api_key and not spec.api_key_file and not is_loopback(spec.host):
        return f"{spec.name} listens on {spec.host} without an API key: anyone who can reach it can use it"
    return None


def _default_profile() -> HostProfile:
    return detect_host(verify=False)


class Instances:
    """The instance use cases for one scope. `systemd=None` renders files only (no D-Bus)."""

    def __init__(
        self,
        paths: Paths,
        systemd: Systemd | None,
        *,
        profile: Callable[[], HostProfile] = _default_profile,
        port_in_use: Callable[[int, str], bool] = client.port_in_use,
        server_flags: Callable[[Path], ServerFlags] = probe_server_flags,
        python: str = sys.executable,
        gpu_probe: Callable[[], GpuProcessProbe] = GpuProcessProbe,
        manager: ServiceManager | None = None,
        mlx_runtime: Callable[[Paths], Path] | None = None,
    ) -> None:
        self._mlx_runtime = mlx_runtime
        self._gpu_probe = gpu_probe
        # add/edit/rm and the lifecycle (start/stop/restart/enable/status/logs) go through this.
        self.manager = manager or default_manager(paths, systemd)
        self.paths = paths
        self._python = python
        self.systemd = systemd
        self._profile = profile
        self._port_in_use = port_in_use
        self._server_flags = server_flags

    # -- resolution ----------------------------------------------------------------------
    def _model_path(self, model: str) -> Path:
        rec = ModelRegistry(self.paths).find(model)
        if rec is not None:
            return rec.path
        if Path(model).is_absolute() and Path(model).is_file():
            return Path(model)  # an unregistered GGUF by path: handy for debugging
        raise NotFoundError(
            f"no model named {model!r}", "see `nativellm model list`, or add one with `nativellm model add`"
        )

    def _check_model(self, spec: InstanceSpec) -> None:
        """A registered model's file(s) still exist and still parse as GGUF: a bounded header read
        (no hashing), so a file deleted or damaged since `model add` is refused before anything is
        written or exec'd. An unregistered path is _model_path's to check."""
        for model in spec.models or (spec.model,):
            rec = ModelRegistry(self.paths).find(model)
            if not spec.is_router and mlx_instance.check_engine_model(self, spec, rec):
                return
            if rec is None:
                if spec.is_router:
                    self._model_path(model)  # a router serves registered models only: NotFoundError
                continue
            if spec.is_router and rec.format == "mlx":
                raise ModelError(
                    f"model {model!r} is an MLX directory; a router's llama-server loads GGUF files",
                    f"serve it with its own instance: `nativellm instance add NAME --engine mlx --model {model}`",
                )
            for part in rec.parts or (rec.path,):
                try:
                    read_header(part)
                except ModelError as exc:
                    raise ModelError(
                        f"model {model!r}: {exc.message}",
                        f"check it with `nativellm model verify {model}`, or remove it "
                        f"(`nativellm model rm {model}`) and add it again",
                    ) from None

    def _resolve(self, spec: InstanceSpec) -> Resolved:
        if spec.engine == "mlx":
            return mlx_instance.resolve(self, spec)
        store = Store(self.paths)
        if spec.build == "current":
            rec = store.current()
            if rec is None:
                raise NotFoundError(
                    "there is no current build", "build llama.cpp first: `nativellm build --auto`"
                )
            # Through the `current` link, so `builds use`/`rollback` + restart switch builds.
            binary = self.paths.current / "bin" / "llama-server"
        else:
            rec = store.find(spec.build)
            if rec is None:
                raise NotFoundError(
                    f"build {spec.build!r} is missing or was removed", "see `nativellm builds list`"
                )
            binary = rec.binary("llama-server")
        if not binary.is_file():
            raise NotFoundError(
                f"build {rec.id} has no llama-server at {binary}", "rebuild with `nativellm build --auto`"
            )
        # The units must not depend on where nativellm's venv lives (a service's PrivateTmp
        # hides /tmp, ProtectHome others): the base interpreter runs a copy of the stdlib-only
        # helper that sits in the store next to the builds.
        python = os.path.realpath(self._python)
        helper = self.paths.home / HEALTHCHECK
        if self.paths.scope is Scope.SYSTEM:
            # The helpers run as root there: the interpreter, the stdlib it imports and the
            # helper script must be root's alone.
            stdlib = sysconfig.get_path("stdlib") if python == os.path.realpath(sys.executable) else None
            require_root_owned(
                {"the Python interpreter": Path(python), "the health helper": helper}
                | ({"the Python standard library": Path(stdlib)} if stdlib else {})
            )
        flags = self._server_flags(binary)
        models = {m: self._model_path(m) for m in spec.models or ()}
        if spec.is_router:
            check_router(spec, binary, flags)
        return Resolved(
            scope=self.paths.scope,
            server_binary=binary,
            model_path=next(iter(models.values())) if models else self._model_path(spec.model),
            model_paths=models,
            units_dir=self.paths.units,
            backend=rec.backend,
            python=python,
            healthcheck=helper,
            systemctl=run.which("systemctl") or "/usr/bin/systemctl",
            spec_path=spec_path(self.paths.config, spec.name),
            flags=flags,
        )

    def _pin(self, spec: InstanceSpec) -> InstanceSpec:
        """Store a pinned build by its full id: `builds rm`/`gc` compare full ids."""
        full = Store(self.paths).resolve_pin(spec.build)
        return spec if full == spec.build else dataclasses.replace(spec, build=full)

    def _other_ports(self, name: str) -> dict[int, str]:
        return {s.port: s.name for s in list_specs(self.paths.config) if s.name != name}

    def _pick_port(self, name: str, host: str) -> int:
        taken = self._other_ports(name)
        for port in range(FIRST_PORT, FIRST_PORT + 1000):
            if port not in taken and not self._port_in_use(port, host):
                return port
        raise ResourceError(f"no free port in {FIRST_PORT}-{FIRST_PORT + 999}", "give one with --port")

    def _check_port(self, spec: InstanceSpec, previous: InstanceSpec | None) -> None:
        owner = self._other_ports(spec.name).get(spec.port)
        if owner is not None:
            raise ResourceError(  # a port is a resource, whether an instance or another process holds it
                f"port {spec.port} is already in use by instance {owner}", "choose another --port"
            )
        ours = previous is not None and previous.port == spec.port
        if not ours and self._port_in_use(spec.port, spec.host):
            raise ResourceError(f"port {spec.port} is in use by another process", "choose another --port")

    def _check_fit(self, spec: InstanceSpec, force: bool) -> str | None:
        if spec.is_router:
            return router_fit(self.paths, spec, self._profile(), force=force)
        rec = ModelRegistry(self.paths).find(spec.model)
        if rec is None or not rec.facts or rec.format != "gguf":
            return None
        report = estimate_fit(
            rec,
            self._profile(),
            ctx=spec.ctx or 0,
            parallel=spec.parallel or 1,
            gpu_layers=spec.gpu_layers or 0,
            cache_type_k=spec.cache_type_k or "f16",
            cache_type_v=spec.cache_type_v or "f16",
        )
        if report.verdict == "does_not_fit" and not force:
            raise ModelError(report.message, "lower --ctx/--parallel, pick a smaller model, or pass --force")
        return report.message if report.verdict != "fits" else None

    def _merge(self, name: str, base: InstanceSpec | None, opts: InstanceOptions) -> InstanceSpec:
        given = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "force"}
        given = {k: v for k, v in given.items() if v is not None}
        if "model_settings" in given:  # per key: a model's other settings stay; an empty value removes one
            merged = {m: dict(kv) for m, kv in (base.model_settings if base else {}).items()}
            for m, kv in given["model_settings"].items():
                merged.setdefault(m, {}).update(kv)
            given["model_settings"] = {
                m: {k: x for k, x in kv.items() if x} for m, kv in merged.items() if any(kv.values())
            }
        if base is not None:
            return dataclasses.replace(base, **given)
        if "model" not in given and "models" not in given:
            raise UsageError("--model is required", "name a model from `nativellm model list`")
        given.setdefault("model", "")
        host = given.get("host", "127.0.0.1")
        if "port" not in given:
            given["port"] = self._pick_port(name, host)
        if "threads" not in given:
            given["threads"] = self._profile().cpu.physical_cores
        return InstanceSpec(name=name, **given)

    # -- writing -------------------------------------------------------------------------
    def add(self, name: str, opts: InstanceOptions) -> Outcome:
        validate_name(name)
        existing = load_spec(self.paths.config, name)
        spec = self._pin(mlx_instance.merge_engine(self, name, existing, opts).validate())
        if existing is not None and spec != existing:
            raise InstanceError(
                f"instance {name} already exists with other settings",
                f"change it with `nativellm instance edit {name}`, or remove it first",
            )
        self._check_port(spec, existing)
        self._check_model(spec)
        warning = self._check_fit(spec, opts.force) or _insecure_warning(spec)
        mgr = self.manager
        installed = mgr.install(spec, self._resolve(spec))
        installed = dataclasses.replace(
            installed, written=(*installed.written, *mlx_instance.write_alias(self, spec))
        )
        changed = write_spec(self.paths.config, spec) or bool(installed.written)
        if not mgr.files_only:
            if changed:
                mgr.reload()
            if spec.enable:
                mgr.set_enabled(name, True)
        msg = (
            f"instance {name} added: {mgr.service_name(name)} on port {spec.port}"
            if changed
            else f"instance {name} unchanged"
        )
        if warning:
            msg += f" (warning: {warning})"
        return Outcome(name, changed, msg, spec, installed.written)

    def edit(self, name: str, opts: InstanceOptions) -> Outcome:
        existing = self.get(name)
        spec = self._pin(mlx_instance.merge_engine(self, name, existing, opts).validate())
        self._check_port(spec, existing)
        if opts.model is not None or opts.models is not None:
            self._check_model(spec)
        warning = self._check_fit(spec, opts.force) or _insecure_warning(spec)
        mgr = self.manager
        installed = mgr.install(spec, self._resolve(spec))
        installed = dataclasses.replace(
            installed, written=(*installed.written, *mlx_instance.write_alias(self, spec))
        )
        changed = write_spec(self.paths.config, spec) or bool(installed.written)
        restarted = False
        if not mgr.files_only and changed:
            mgr.reload()
            if spec.enable != existing.enable:
                mgr.set_enabled(name, spec.enable)
            if installed.service_changed and mgr.state(name).running:
                self._start(mgr, spec, restart=True)
                restarted = True
        msg = (
            f"instance {name} updated" + (" and restarted" if restarted else "")
            if changed
            else f"instance {name} unchanged"
        )
        if warning:
            msg += f" (warning: {warning})"
        return Outcome(name, changed, msg, spec, installed.written, restarted)

    def refresh_units(self, names: Sequence[str] | None = None) -> Refresh:
        """Re-render the units of the instances that follow `current` (or of `names` among them)
        for the build `current` now names: its llama-server may spell flags differently (see
        server_flags.py). Called whenever `current` moves (upgrade, rollback, `builds use`),
        before any restart. Running servers are not touched; a unit that cannot be rendered
        for the build keeps its old text and is reported, not raised."""
        rewritten: list[str] = []
        failed: list[tuple[str, str]] = []
        for spec in self.specs():
            if spec.build != "current" or (names is not None and spec.name not in names):
                continue
            try:
                installed = self.manager.install(spec, self._resolve(spec), check=False)
            except NativeLLMError as exc:
                failed.append((spec.name, exc.message))
                continue
            if installed.written:
                rewritten.append(spec.name)
        if rewritten and self.manager.available():
            self.manager.reload()
        return Refresh(tuple(rewritten), tuple(failed))

    def remove(self, name: str) -> Outcome:
        spec = self.get(name)
        last = not any(other.name != name for other in self.specs())
        removed = self.manager.uninstall(name, last=last)
        spec_path(self.paths.config, name).unlink()
        mlx_instance.forget(self.paths, spec)
        return Outcome(name, True, f"instance {name} removed", spec, removed)

    # -- reading -------------------------------------------------------------------------
    def get(self, name: str) -> InstanceSpec:
        spec = load_spec(self.paths.config, name)
        if spec is None:
            raise NotFoundError(f"no instance named {name!r}", "see `nativellm instance list`")
        return spec

    def specs(self) -> list[InstanceSpec]:
        return list_specs(self.paths.config)

    def specs_and_errors(self) -> tuple[list[InstanceSpec], list[NativeLLMError]]:
        """Every spec that reads, and the error of each one that does not (doctor lists those
        instead of stopping at the first)."""
        folder = self.paths.config / "instances"
        specs: list[InstanceSpec] = []
        errors: list[NativeLLMError] = []
        for p in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                text = read_spec_text(p)
                if text is not None:
                    specs.append(InstanceSpec.from_toml(text, str(p)))
            except NativeLLMError as exc:
                errors.append(exc)
        return specs, errors

    def rendered(self, name: str) -> dict[str, str]:
        """The service's own files, path (relative to the unit dir, or absolute) -> text, as `instance
        show` prints them."""
        spec = self.get(name)
        return self.manager.rendered(spec, self._resolve(spec))

    # -- lifecycle -----------------------------------------------------------------------
    def _sd(self) -> ServiceManager:
        return self.manager.require_reachable(
            "run the instance in the foreground instead: `nativellm run NAME`"
        )

    def _start(self, sd: ServiceManager, spec: InstanceSpec, *, restart: bool) -> UnitState:
        """Start (or restart) and wait for the outcome: ready, or failed for good.

        A start job ends at the first failed attempt, while Restart=on-failure tries again;
        so a failing server is followed until it is active or systemd gives up at the
        start limit, and the caller sees that final state.
        """
        unit = sd.service_name(spec.name)
        st = sd.start(spec, restart=restart, timeout=spec.start_timeout + 60)
        if st.active_state != "active":
            line = self.error_line(spec.name)
            why = f"result {st.result}"
            if st.start_limit_hit:
                why = f"stopped at the start limit after {st.n_restarts} restarts, last result {st.result}"
            raise InstanceError(
                f"{unit} failed to start ({st.active_state}/{st.sub_state}, {why})"
                + (f": {line}" if line else ""),
                f"see the full log with `nativellm logs {spec.name}`",
            )
        return st

    def start(self, name: str) -> Outcome:
        spec = self.get(name)
        sd = self._sd()
        before = sd.state(name)
        if before.active_state == "active":
            return Outcome(name, False, f"{sd.service_name(name)} is already running", spec)
        self._start(sd, spec, restart=False)
        return Outcome(
            name, True, f"{sd.service_name(name)} is ready at http://{spec.host}:{spec.port}", spec
        )

    def restart(self, name: str) -> Outcome:
        spec = self.get(name)
        self._start(self._sd(), spec, restart=True)
        return Outcome(
            name, True, f"{self.manager.service_name(name)} restarted and ready", spec, restarted=True
        )

    def stop(self, name: str) -> Outcome:
        spec = self.get(name)
        sd = self._sd()
        if sd.state(name).stopped:
            return Outcome(name, False, f"{sd.service_name(name)} is not running", spec)
        sd.stop(name)
        return Outcome(name, True, f"{sd.service_name(name)} stopped", spec)

    def set_enabled(self, name: str, enabled: bool) -> Outcome:
        spec = self.get(name)
        sd = self._sd()
        now = sd.is_enabled(name)
        if now == enabled and spec.enable == enabled:
            return Outcome(
                name,
                False,
                f"{sd.service_name(name)} is already {'enabled' if enabled else 'disabled'}",
                spec,
            )
        sd.set_enabled(name, enabled)
        spec = dataclasses.replace(spec, enable=enabled)
        write_spec(self.paths.config, spec)
        return Outcome(name, True, f"{sd.service_name(name)} {'enabled' if enabled else 'disabled'}", spec)

    def status(self, name: str | None = None) -> list[InstanceStatus]:
        specs = [self.get(name)] if name else self.specs()
        sd = self.manager if self.manager.available() else None
        probe = self._gpu_probe()
        result = []
        for spec in specs:
            st = sd.state(spec.name) if sd is not None else None
            base = base_url(spec)
            h = client.health(base, timeout=2.0).status
            # A router's /metrics is per model (?model=): its models' states say more.
            metrics = read_metrics(base) if h == "ok" and spec.metrics and not spec.is_router else {}
            err_line = self.error_line(spec.name) if st is not None and st.active_state != "active" else None
            gpu = instance_gpu_memory(self.paths, spec, st, probe)
            models = router_models(spec) if spec.is_router and h == "ok" else None
            result.append(InstanceStatus(spec.name, spec, st, h, metrics, err_line, gpu, models))
        return result

    def journal_argv(self, name: str, *, follow: bool = False, lines: int = 50) -> list[str]:
        """`nativellm logs NAME`: the journal of an instance that exists (NotFoundError otherwise)."""
        return self.manager.logs_argv(self.get(name).name, follow=follow, lines=lines)

    def error_line(self, name: str) -> str | None:
        """Why the instance is down, from its latest journal entries: the readiness helper's offload
        verdict first (GPU layers asked for, none on a GPU: it served nothing from the CPU), else
        llama-server's own error line."""
        text = self.manager.recent_log(self.get(name).name, 200)
        if text is None:
            return None
        offload = offload_failure(text)
        return f"offload check failed: {offload}" if offload else find_error_line(text)

    def foreground_argv(self, name: str) -> list[str]:
        """`nativellm run NAME`: the unit's argv, with the key file read directly."""
        spec = self.get(name)
        # What llama-server would only report after its exec (or not clearly): checked here.
        self._check_model(spec)
        if self._port_in_use(spec.port, spec.host):
            raise ResourceError(
                f"port {spec.port} of instance {name} is in use (by its own service, or another process)",
                f"stop it (`nativellm stop {name}`), free the port, or move the instance: "
                f"`nativellm instance edit {name} --port N`",
            )
        r = self._resolve(spec)
        if spec.engine == "mlx":
            return mlx_instance.foreground_argv(spec, r)
        if spec.is_router:  # its preset, as the unit has it (written again: it may have been removed)
            rel, text = next(
                (k, v) for k, v in self.manager.rendered(spec, r).items() if k.endswith(PRESET_NAME)
            )
            write_unit(self.paths.units / rel, text)
            return router_argv(spec, r.server_binary, self.paths.units / rel, api_key_path=spec.api_key_file)
        return server_argv(
            spec,
            r.server_binary,
            r.model_path,
            api_key_path=spec.api_key_file,
            flags=r.flags,
            backend=r.backend,
        )

    def foreground_env(self, name: str) -> dict[str, str]:
        """What `nativellm run NAME` adds to the environment: the spec's, and a router's empty cache."""
        spec = self.get(name)
        return ({"LLAMA_CACHE": ROUTER_CACHE} if spec.is_router else {}) | dict(spec.env)


def linger_enabled(user: str | None = None) -> bool | None:
    """Whether this user's units survive logout and start at boot; None when unknown.

    logind keeps the setting as a flag file, which also answers for users without a session
    (`loginctl show-user` only knows logged-in or lingering users).
    """
    import getpass

    linger_dir = Path("/var/lib/systemd/linger")
    if not linger_dir.parent.is_dir():
        return None
    return (linger_dir / (user or getpass.getuser())).exists()


def enable_linger(user: str | None = None) -> None:
    import getpass

    res = run.run(["loginctl", "enable-linger", user or getpass.getuser()], timeout=30)
    if not res.ok:
        raise InstanceError(
            f"loginctl enable-linger failed: {res.stderr.strip()}",
            "ask an administrator to run `loginctl enable-linger USER`",
        )
