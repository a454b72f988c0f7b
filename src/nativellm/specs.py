"""The instance spec: a named llama-server configuration, stored as TOML (the source of truth).

`<config>/instances/<name>.toml` holds the top-level keys below. Units are rendered from it;
`Store.pinned()` reads its `build` key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import tomli_w

from nativellm import validate as v
from nativellm.errors import InstanceError, UsageError
from nativellm.fsutil import write_if_changed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_SCHEMA = "nativellm.instance/1"
DEFAULT_START_TIMEOUT_S = 900
FLASH_ATTN = ("on", "off", "auto")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


# Per-model router settings that must be whole numbers (checked before they reach a preset file).
ROUTER_INT_KEYS = (
    "ctx-size",
    "n-gpu-layers",
    "threads",
    "parallel",
    "batch-size",
    "ubatch-size",
    "stop-timeout",
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def validate_name(name: str, kind: str = "instance") -> str:
    """The one name rule for instances, RPC workers and models: it is used in unit names, file names,
    journal matches and URLs unescaped. fullmatch, so a trailing newline is refused too."""
    return v.name(name, kind)


def validate_sha256(text: str, what: str = "--sha256") -> str:
    """64 hexadecimal digits, returned lowercase."""
    digest = text.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise UsageError(f"{what} {text!r} is not a sha256", "give all 64 hexadecimal digits")
    return digest


def parse_endpoint(text: str, what: str = "RPC endpoint") -> tuple[str, int]:
    """host:port or [v6]:port -> (host, port)."""
    return v.endpoint(text, what)


def is_loopback(host: str) -> bool:
    """A loopback address or name (brackets of an IPv6 URL host allowed)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_is_loopback(url: str) -> bool:
    return is_loopback(urlparse(url).hostname or "")


def reach_host(host: str) -> str:
    """The address this machine reaches a server bound to `host` on: loopback for a wildcard bind."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host.strip("[]")


def http_url(host: str, port: int) -> str:
    """The base URL nativellm itself uses for a server bound to host:port (IPv6 bracketed)."""
    h = reach_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


@dataclass(frozen=True)
class InstanceSpec:
    """One instance. None means "llama-server's own default" and is left off the argv."""

    name: str
    model: str
    port: int
    build: str = "current"
    host: str = "127.0.0.1"
    ctx: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    parallel: int | None = None
    batch: int | None = None
    flash_attn: str | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    mlock: bool = False
    metrics: bool = True
    api_key_file: str | None = None
    insecure_no_api_key: bool = False
    memory_max: str | None = None
    cpus: str | None = None
    numa_node: int | None = None
    gpus: tuple[int, ...] | None = None
    rpc: tuple[str, ...] | None = None  # llama.cpp RPC workers, host:port (llama-server --rpc)
    enable: bool = False
    start_timeout: int = DEFAULT_START_TIMEOUT_S
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    # Router instances (llama-server router mode): `models` set, `model` empty. The instance-wide
    # settings above go to the preset's [*] section; `model_settings` holds per-model overrides
    # (llama-server long option names without dashes -> value). See serve/router.py.
    models: tuple[str, ...] | None = None
    models_max: int | None = None
    load_on_start: tuple[str, ...] | None = None
    warmup: bool = True
    model_settings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    # The server program: None (llama-server) or "mlx" (mlx_lm.server from the managed MLX
    # runtime, nativellm/mlx/). None stays off the TOML, so older specs read and write unchanged.
    engine: str | None = None

    @property
    def is_router(self) -> bool:
        return bool(self.models)

    @property
    def model_label(self) -> str:
        """What the instance serves, for humans: its model, or a router's models."""
        return f"router: {', '.join(self.models or ())}" if self.is_router else self.model

    def validate(self) -> InstanceSpec:
        """Check every value; each kind of value through its one validator (nativellm.validate)."""
        validate_name(self.name)
        if self.models is not None or self.model_settings or self.load_on_start or self.models_max:
            self._validate_router()
        elif not self.model:
            raise UsageError("--model is required", "name a model from `nativellm model list`")
        # A registered model's name, or the absolute path of a GGUF (it reaches Description=).
        elif self.model.startswith("/"):
            v.abs_path(self.model, "--model")
        else:
            v.name(self.model, "model")
        v.build_id(self.build, "--build")
        v.host(self.host, "--host")
        if not 1 <= self.port <= 65535:
            raise UsageError(f"port {self.port} is out of range", "use a port between 1 and 65535")
        for label, value in (
            ("ctx", self.ctx),
            ("threads", self.threads),
            ("parallel", self.parallel),
            ("batch", self.batch),
            ("start-timeout", self.start_timeout),
        ):
            if value is not None and value < (0 if label == "ctx" else 1):
                raise UsageError(f"--{label} {value} is invalid", f"give a positive --{label}")
        if self.gpu_layers is not None and self.gpu_layers < 0:
            raise UsageError("--gpu-layers must be 0 or more", "give --gpu-layers 0..N")
        if self.numa_node is not None and self.numa_node < 0:
            raise UsageError("--numa-node must be 0 or more", "give a NUMA node number")
        if any(g < 0 for g in self.gpus or ()):
            raise UsageError("--gpus must list GPU indices 0 or more", "use e.g. --gpus 0,1")
        if self.flash_attn is not None and self.flash_attn not in FLASH_ATTN:
            raise UsageError(f"--flash-attn {self.flash_attn!r} is invalid", "use on, off or auto")
        for label, ct in (("k", self.cache_type_k), ("v", self.cache_type_v)):
            if ct is not None and ct not in CACHE_TYPES:
                raise UsageError(
                    f"--cache-type-{label} {ct!r} is invalid", f"use one of {', '.join(CACHE_TYPES)}"
                )
        if self.api_key_file is not None:
            v.abs_path(self.api_key_file, "--api-key-file")
        if self.memory_max is not None:
            v.byte_size(self.memory_max, "--memory-max")
        if self.cpus is not None:
            v.cpus(self.cpus, "--cpus")
        if not is_loopback(self.host) and not self.api_key_file and not self.insecure_no_api_key:
            raise InstanceError(
                f"binding {self.host} exposes llama-server beyond this machine without an API key",
                "add --api-key-file FILE (or --insecure-no-api-key if you really mean it)",
            )
        for endpoint in self.rpc or ():
            parse_endpoint(endpoint, "--rpc")
        for var, text in self.env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                raise UsageError(f"environment variable name {var!r} is invalid", "use letters, digits and _")
            v.no_control(text, f"environment variable {var}")
        for arg in self.extra_args:
            v.no_control(arg, "extra llama-server argument")
        if self.engine is not None:
            check_engine_spec(self)
        return self

    def _validate_router(self) -> None:
        models = self.models or ()
        if not models:
            raise UsageError(
                "a router instance needs --models",
                "name its models: --models a,b,c (see `nativellm model list`)",
            )
        if self.model:
            raise UsageError(
                "a router instance serves --models, not --model", "drop --model, or drop --router/--models"
            )
        for m in models:
            v.name(m, "model")
        if len(set(models)) != len(models):
            raise UsageError("--models lists a model twice", "name each model once")
        unknown = [m for m in (*(self.load_on_start or ()), *self.model_settings) if m not in models]
        if unknown:
            raise UsageError(
                f"{', '.join(sorted(set(unknown)))} is not one of this router's models ({', '.join(models)})",
                "add it to --models, or name one of them",
            )
        if self.models_max is not None:
            if self.models_max < 0:
                raise UsageError("--models-max must be 0 (no limit) or more", "give e.g. --models-max 2")
            starting = len(self.load_on_start or ())
            if self.models_max and starting > self.models_max:
                raise UsageError(
                    f"--models-max {self.models_max} is smaller than the {starting} models to load at start",
                    f"raise --models-max to {starting} or more, or load fewer with --load-on-start",
                )
        for m, settings in self.model_settings.items():
            for key, value in settings.items():
                if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", key):
                    raise UsageError(
                        f"setting {key!r} for model {m} is not a llama-server option name",
                        "use its long name without dashes, e.g. ctx-size=8192 or n-gpu-layers=0",
                    )
                v.no_control(value, f"setting {key} for model {m}")
                if key in ROUTER_INT_KEYS and value and not value.lstrip("-").isdigit():
                    raise UsageError(
                        f"setting {key}={value!r} for model {m} is not a number", f"give e.g. {key}=4096"
                    )

    # -- TOML ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            doc[f.name] = (
                list(value)
                if isinstance(value, tuple)
                else {k: dict(x) if isinstance(x, Mapping) else x for k, x in value.items()}
                if isinstance(value, Mapping)
                else value
            )
        return doc

    def to_toml(self) -> str:
        doc: dict[str, Any] = {"schema": SPEC_SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                if not value:
                    continue
                value = {k: dict(x) if isinstance(x, Mapping) else x for k, x in value.items()}
            doc[f.name] = value
        return tomli_w.dumps(doc)

    @classmethod
    def from_toml(cls, text: str, origin: str = "spec") -> InstanceSpec:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InstanceError(
                f"{origin} is not valid TOML: {exc}", "fix the file or re-add the instance"
            ) from exc
        doc.pop("schema", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InstanceError(f"{origin} has unknown keys: {', '.join(unknown)}", "remove them")
        check_toml_types(cls, doc, origin)
        for key in ("gpus", "extra_args", "rpc", "models", "load_on_start"):
            if key in doc:
                doc[key] = tuple(doc[key])
        try:
            spec = cls(**doc)
        except TypeError as exc:
            raise InstanceError(f"{origin} is incomplete: {exc}", "re-add the instance") from exc
        try:  # a hand-edited file passes the same validators as the CLI flags
            return spec.validate()
        except UsageError as exc:
            raise InstanceError(f"{origin}: {exc.message}", f"fix the file ({exc.hint})") from exc


def _type_matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, str):
        return isinstance(value, tp) and not isinstance(value, bool)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return isinstance(value, (list, tuple)) and all(_type_matches(x, item) for x in value)
    if origin is Mapping or origin is dict:
        k, val = typing.get_args(tp)
        return isinstance(value, Mapping) and all(
            _type_matches(a, k) and _type_matches(b, val) for a, b in value.items()
        )
    return isinstance(value, origin or tp)


_TYPE_NAMES = {bool: "true or false", int: "an integer", str: "a string"}


def check_toml_types(cls: type, doc: Mapping[str, Any], origin: str) -> None:
    """Each key of a loaded spec has its field's type (`port = "abc"` names the file and key)."""
    hints = typing.get_type_hints(cls)
    for key, value in doc.items():
        tp = hints.get(key)
        if tp is not None and not _type_matches(value, tp):
            plain = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            want = _TYPE_NAMES.get(plain[0], "a list" if typing.get_origin(plain[0]) is tuple else "a table")
            raise InstanceError(
                f"{origin}: key {key!r} is {type(value).__name__} {value!r}, expected {want}",
                f"fix {key} in the file",
            )


def spec_path(config: Path, name: str) -> Path:
    return config / "instances" / f"{name}.toml"


def read_spec_text(path: Path, what: str = "instance spec") -> str | None:
    """A spec file's text; None when it does not exist; a clean error for a directory, bytes
    that are not UTF-8 or an unreadable file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise InstanceError(f"{what} {path} is a directory, not a file", f"remove or rename {path}") from None
    except UnicodeDecodeError as exc:
        raise InstanceError(
            f"{what} {path} is not UTF-8 text ({exc.reason})", "fix or remove the file"
        ) from None
    except OSError as exc:
        raise InstanceError(
            f"cannot read {what} {path}: {exc.strerror}", "check the file's permissions"
        ) from None


def load_spec(config: Path, name: str) -> InstanceSpec | None:
    path = spec_path(config, validate_name(name))
    text = read_spec_text(path)
    return None if text is None else InstanceSpec.from_toml(text, str(path))


def list_specs(config: Path) -> list[InstanceSpec]:
    folder = config / "instances"
    if not folder.is_dir():
        return []
    specs = []
    for p in sorted(folder.glob("*.toml")):
        text = read_spec_text(p)
        if text is not None:
            specs.append(InstanceSpec.from_toml(text, str(p)))
    return specs


def write_spec(config: Path, spec: InstanceSpec) -> bool:
    return write_if_changed(spec_path(config, spec.name), spec.to_toml())


# Settings llama-server has and mlx_lm.server has no equivalent for: refused, not silently dropped.
_LLAMA_ONLY = {
    "gpu_layers": "--gpu-layers",
    "threads": "--threads",
    "rpc": "--rpc",
    "flash_attn": "--flash-attn",
    "cache_type_k": "--cache-type-k",
    "cache_type_v": "--cache-type-v",
    "ctx": "--ctx",
    "parallel": "--parallel",
    "batch": "--batch",
    "numa_node": "--numa-node",
    "gpus": "--gpus",
    "api_key_file": "--api-key-file",
}


def check_engine_spec(spec: InstanceSpec) -> None:
    """The engine-specific rules of a spec (called by InstanceSpec.validate); the MLX engine is
    nativellm/mlx/."""
    if spec.engine != "mlx":
        raise UsageError(f"engine {spec.engine!r} is unknown", "use --engine llama, mlx or auto")
    if spec.is_router:
        raise UsageError(
            "a router instance runs llama-server's router mode, not mlx_lm.server",
            "drop --engine mlx, or add one --engine mlx instance per MLX model",
        )
    given = [flag for field, flag in _LLAMA_ONLY.items() if getattr(spec, field) not in (None, False, ())]
    if spec.mlock:
        given.append("--mlock")
    if given:
        raise UsageError(
            f"{', '.join(given)} {'is a llama-server setting' if len(given) == 1 else 'are llama-server settings'}"
            " that mlx_lm.server does not have",
            "drop them for an --engine mlx instance",
        )
    if not is_loopback(spec.host):
        raise UsageError(
            f"mlx_lm.server has no API key, so an --engine mlx instance cannot bind {spec.host}",
            "bind it to 127.0.0.1 (the default) and put an authenticating proxy in front",
        )
