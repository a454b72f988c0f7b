"""llama.cpp RPC workers (`rpc-server`) under systemd: spec, rendering, add/remove (issue 5).

llama.cpp's RPC protocol is unauthenticated and has had remote-code-execution flaws, so a
worker binds 127.0.0.1 unless told otherwise, a non-loopback worker needs an explicit peer
allow-list (`IPAddressAllow=` + the template's `IPAddressDeny=any`), and adding one warns.
The spec lives in `<config>/rpc-workers/<name>.toml`; units are rendered from it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from nativellm import client
from nativellm import validate as v
from nativellm.build.store import Store
from nativellm.errors import InstanceError, NotFoundError, UsageError
from nativellm.fsutil import write_if_changed
from nativellm.hardware.devices import DeviceClass
from nativellm.paths import Paths, Scope, package_data
from nativellm.serve.dropins import DROPIN_NAME
from nativellm.serve.systemd import Systemd, UnitState, reachable, require_reachable, require_reads_units_from
from nativellm.serve.units import Section, UnitFile, exec_line, plain_value, render, write_unit
from nativellm.specs import check_toml_types, is_loopback, reach_host, read_spec_text, validate_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATE = "llama-rpc@.service"
RPC_SCHEMA = "nativellm.rpc-worker/1"
RISK = (
    "llama.cpp RPC has no authentication and has had remote-code-execution flaws: anyone who can "
    "reach {where} can run code as this worker. Keep it on a private network, reachable only from "
    "the head instances (IPAddressAllow= lists them)."
)


def rpc_unit(name: str) -> str:
    return f"llama-rpc@{name}.service"


def _check_peer(peer: str) -> str:
    try:
        ipaddress.ip_network(peer, strict=False)
    except ValueError:
        if peer not in ("localhost", "link-local", "multicast", "any"):
            raise UsageError(
                f"--allow {peer!r} is not an IP address or network",
                "give addresses or CIDR networks, e.g. --allow 10.0.0.5,10.0.1.0/24",
            ) from None
    if peer == "any":
        raise UsageError(
            "--allow any would let anyone reach the worker", "list the head instances' addresses"
        )
    return peer


@dataclass(frozen=True)
class RpcWorkerSpec:
    """One rpc-server. `allow` lists the peers (heads) that may connect when it is not on loopback."""

    name: str
    port: int
    host: str = "127.0.0.1"
    gpus: tuple[int, ...] | None = None
    allow: tuple[str, ...] = ()
    threads: int | None = None
    build: str = "current"

    def validate(self) -> RpcWorkerSpec:
        validate_name(self.name)
        v.build_id(self.build, "--build")
        if not 1 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is out of range", "use a port between 1 and 65535")
        if self.host != "localhost":
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise UsageError(
                    f"--host {self.host!r} is not an IP address", "give the address to bind"
                ) from None
        for peer in self.allow:
            _check_peer(peer)
        if not self.loopback and not self.allow:
            raise InstanceError(
                f"an RPC worker on {self.host} would accept anyone who can reach it",
                "name the head instances that may connect with --allow ADDR[,ADDR...]",
            )
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be 1 or more", "give a positive --threads")
        return self

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def warning(self) -> str | None:
        return None if self.loopback else RISK.format(where=self.endpoint)

    def to_toml(self) -> str:
        doc: dict[str, Any] = {"schema": RPC_SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            doc[f.name] = list(value) if isinstance(value, tuple) else value
        return tomli_w.dumps(doc)

    @classmethod
    def from_toml(cls, text: str, origin: str) -> RpcWorkerSpec:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InstanceError(f"{origin} is not valid TOML: {exc}", "re-add the worker") from exc
        doc.pop("schema", None)
        check_toml_types(cls, doc, origin)
        for key in ("gpus", "allow"):
            if key in doc:
                doc[key] = tuple(doc[key])
        try:
            spec = cls(**doc)
        except TypeError as exc:
            raise InstanceError(f"{origin} is not a worker spec: {exc}", "re-add the worker") from exc
        try:
            return spec.validate()
        except UsageError as exc:
            raise InstanceError(f"{origin}: {exc.message}", f"fix the file ({exc.hint})") from exc


def rpc_argv(spec: RpcWorkerSpec, binary: Path) -> list[str]:
    argv = [str(binary), "--host", spec.host, "--port", str(spec.port)]
    if spec.threads is not None:
        argv += ["--threads", str(spec.threads)]
    return argv


def render_rpc_dropin(
    spec: RpcWorkerSpec, binary: Path, backend: str, spec_file: Path, scope: Scope = Scope.USER
) -> str:
    devices = DeviceClass.for_backend(backend)
    service: list[tuple[str, str]] = [("ExecStart", ""), ("ExecStart", exec_line(rpc_argv(spec, binary)))]
    if spec.gpus is not None:
        var = {DeviceClass.AMD: "HIP_VISIBLE_DEVICES"}.get(devices, "CUDA_VISIBLE_DEVICES")
        service.append(("Environment", f"{var}={','.join(str(g) for g in spec.gpus)}"))
    # Loopback peers always; a non-loopback worker adds exactly the listed heads.
    service.append(("IPAddressAllow", "localhost"))
    service += [("IPAddressAllow", peer) for peer in spec.allow]
    if scope is Scope.SYSTEM:
        # As for instances: an unprivileged, per-unit user; the store stays world-readable.
        service.append(("DynamicUser", "yes"))
        if not binary.is_relative_to("/home") and not binary.is_relative_to("/root"):
            service.append(("ProtectHome", "yes"))
    if devices is not DeviceClass.CPU:
        service += [("PrivateDevices", "no"), ("DevicePolicy", "closed")]
        service += [("DeviceAllow", d) for d in devices.device_allow]
        service.append(("MemoryDenyWriteExecute", "no"))
    unit = [("Description", plain_value(f"llama.cpp RPC worker {spec.name} on {spec.endpoint}"))]
    header = f"Generated by nativellm from {spec_file}. Do not edit:\nre-add it with `nativellm instance add-rpc-worker`."
    return render(UnitFile((Section("Unit", tuple(unit)), Section("Service", tuple(service))), header=header))


def rpc_template() -> str:
    return (package_data("systemd") / TEMPLATE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class RpcOutcome:
    name: str
    changed: bool
    message: str
    spec: RpcWorkerSpec
    files: tuple[str, ...] = ()
    warning: str | None = None
    started: bool = False


class RpcWorkers:
    """Add, start and remove RPC workers for one scope. `systemd=None` renders files only."""

    def __init__(self, paths: Paths, systemd: Systemd | None) -> None:
        self.paths = paths
        self.systemd = systemd

    def _spec_path(self, name: str) -> Path:
        return self.paths.config / "rpc-workers" / f"{validate_name(name)}.toml"

    def _binary(self, spec: RpcWorkerSpec) -> tuple[Path, str]:
        store = Store(self.paths)
        rec = store.current() if spec.build == "current" else store.find(spec.build)
        if rec is None:
            raise NotFoundError(f"build {spec.build!r} is missing", "build with `nativellm build --rpc`")
        binary = (self.paths.current if spec.build == "current" else rec.path) / "bin" / "rpc-server"
        if not (rec.path / "bin" / "rpc-server").is_file():
            raise NotFoundError(
                f"build {rec.id} has no rpc-server", "build one with RPC: `nativellm build --auto --rpc`"
            )
        return binary, rec.backend

    def files(self, spec: RpcWorkerSpec) -> dict[Path, str]:
        binary, backend = self._binary(spec)
        dropin = self.paths.units / f"{rpc_unit(spec.name)}.d" / DROPIN_NAME
        return {
            self.paths.units / TEMPLATE: rpc_template(),
            dropin: render_rpc_dropin(spec, binary, backend, self._spec_path(spec.name), self.paths.scope),
        }

    def add(self, spec: RpcWorkerSpec, *, start: bool = False) -> RpcOutcome:
        spec.validate()
        # A pin by its full id: `builds rm`/`gc` read worker specs too and compare full ids.
        spec = dataclasses.replace(spec, build=Store(self.paths).resolve_pin(spec.build))
        files = self.files(spec)
        sd = require_reachable(self.systemd, "use --no-systemd") if self.systemd is not None else None
        if sd is not None:
            require_reads_units_from(sd, self.paths.units)
        written = [str(p) for p, text in files.items() if write_unit(p, text)]
        spec_changed = write_if_changed(self._spec_path(spec.name), spec.to_toml())
        changed = spec_changed or bool(written)
        started = False
        if sd is not None:
            if changed:
                sd.daemon_reload()
            active = sd.state(rpc_unit(spec.name)).running
            if start and (changed or not active):
                self._start(sd, spec, restart=active)
                started = True
        msg = (
            f"RPC worker {spec.name} "
            + ("added" if changed else "unchanged")
            + f": {rpc_unit(spec.name)} on {spec.endpoint}"
        )
        if started:
            msg += ", listening"
        warning = spec.warning()
        if warning and self.paths.scope is Scope.USER and os.geteuid() != 0:
            warning += (
                " An unprivileged user manager cannot load the IP filter, so systemd may ignore"
                " IPAddressAllow= here: run workers in system scope (--system) for the filter."
            )
        return RpcOutcome(spec.name, changed or started, msg, spec, tuple(written), warning, started)

    def _start(self, sd: Systemd, spec: RpcWorkerSpec, *, restart: bool, timeout: float = 60) -> None:
        unit = rpc_unit(spec.name)
        probe = reach_host(spec.host)

        def listening(st: UnitState) -> bool:
            return client.port_in_use(spec.port, probe)

        st = sd.start_and_wait(unit, restart=restart, timeout=timeout, ready=listening, interval=0.1)
        if st.active_state == "active" and listening(st):
            return
        raise InstanceError(
            f"{unit} did not start listening on {spec.endpoint}",
            f"see `journalctl --user -u {unit}` (or without --user in system scope)",
        )

    def remove(self, name: str) -> RpcOutcome:
        path = self._spec_path(name)
        text = read_spec_text(path, "RPC worker spec")
        if text is None:
            raise NotFoundError(f"no RPC worker named {name!r}", "see the files under config/rpc-workers")
        spec = RpcWorkerSpec.from_toml(text, str(path))
        sd = reachable(self.systemd)
        if sd is not None:
            sd.stop(rpc_unit(name))
            sd.wait_settled(rpc_unit(name), timeout=60)
        dropin = self.paths.units / f"{rpc_unit(name)}.d" / DROPIN_NAME
        removed = [str(dropin)] if dropin.exists() else []
        dropin.unlink(missing_ok=True)
        if dropin.parent.is_dir() and not any(dropin.parent.iterdir()):
            dropin.parent.rmdir()
        path.unlink()
        folder = path.parent
        if not any(folder.glob("*.toml")):
            (self.paths.units / TEMPLATE).unlink(missing_ok=True)
            removed.append(str(self.paths.units / TEMPLATE))
        if sd is not None:
            sd.daemon_reload()
            sd.reset_failed(rpc_unit(name))
        return RpcOutcome(name, True, f"RPC worker {name} removed", spec, tuple(removed))
