"""Every command of the CLI, run in process (the cibuildwheel habit).

Each test runs `nativellm.cli.main()` as the console script does (sys.argv patched), so the one
place that maps errors to exit codes is on the path. The command's use case is replaced by a
recorder that answers with real values of the real return types (frozen dataclasses from src/),
so the CLI's own rendering runs for real. A test then checks what the flags became (the options
object the use case received), the exit code, and the --json document that Ansible reads.

`test_every_command_has_in_process_tests` walks the typer app: a new command without a success
test here, or without an entry in CASES (its typed-error test), fails the suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
import typer

import nativellm
import nativellm.hardware
from nativellm import __version__
from nativellm import run as run_mod
from nativellm.build import artifacts as artifacts_mod
from nativellm.build import fingerprint as fingerprint_mod
from nativellm.build import index as index_mod
from nativellm.build import pipeline as pipeline_mod
from nativellm.build import plan as plan_mod
from nativellm.build import signing as signing_mod
from nativellm.build import single as single_mod
from nativellm.build import store as store_mod
from nativellm.build.artifacts import (
    InstallOptions,
    InstallOutcome,
    PackOptions,
    PackOutcome,
    artifact_meta,
)
from nativellm.build.fingerprint import fingerprint, requirements_of
from nativellm.build.index import IndexOutcome
from nativellm.build.options import BuildOptions, BuildOutcome
from nativellm.build.plan import Backend, PlanOptions, plan_build
from nativellm.build.source import DEFAULT_REPO, SourceRequest
from nativellm.build.store import BuildRecord
from nativellm.build.ui import UiAssets
from nativellm.cli import app, main, output
from nativellm.cli.app import STATE
from nativellm.cli.output import ConsoleReporter
from nativellm.cli.views import DownloadProgress
from nativellm.errors import (
    ArtifactError,
    BuildError,
    DownloadError,
    InstanceError,
    ModelError,
    NativeLLMError,
    NotFoundError,
    PlanError,
    ResourceError,
    SourceError,
    StoreError,
    ToolchainError,
    UsageError,
)
from nativellm.hardware import HostProfile
from nativellm.hardware import profile as profile_mod
from nativellm.hardware import vram as vram_mod
from nativellm.hardware.profile import load_profile
from nativellm.hardware.vram import profile_devices
from nativellm.models import pull as pull_mod
from nativellm.models import registry as registry_mod
from nativellm.models.fit import FitReport, estimate_fit
from nativellm.models.pull import PullOptions
from nativellm.models.registry import ModelRecord, VerifyResult
from nativellm.ops import bench as bench_mod
from nativellm.ops import doctor as doctor_mod
from nativellm.ops import loadgen as loadgen_mod
from nativellm.ops import upgrade as upgrade_mod
from nativellm.ops.bench import BuildBench, BuildsReport, Spread
from nativellm.ops.doctor import Finding
from nativellm.ops.loadgen import LevelResult, LoadReport, RequestResult
from nativellm.ops.upgrade import RollbackOutcome, Step, UpgradeOptions, UpgradeOutcome, UseOutcome
from nativellm.paths import Paths, Scope, resolve_paths
from nativellm.serve import instances as instances_mod
from nativellm.serve import rpc as rpc_mod
from nativellm.serve import systemd as systemd_mod
from nativellm.serve.instances import InstanceOptions, InstanceStatus, Outcome, Refresh
from nativellm.serve.rpc import RpcOutcome, RpcWorkerSpec
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RESULT_SCHEMA = "nativellm.result/1"  # spelled out: the envelope is a contract, not an import

# =============================================================================== the harness


class Call(NamedTuple):
    label: str  # "build_llama", or "Store" (the constructor) and "Store.get" (a method)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Recorder:
    """Stands in for use cases: records every call and answers with a prepared value.

    An answer that is an exception is raised instead, which is how the error tests fail a use case.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._mp = monkeypatch
        self.calls: list[Call] = []

    def fn(
        self,
        owner: object,
        attr: str,
        answer: object = None,
        effect: Callable[..., None] | None = None,
    ) -> None:
        """Replace the function `owner.attr`; `effect` sees the arguments first (to call callbacks)."""

        def fake(*args: Any, **kwargs: Any) -> Any:
            if effect is not None:
                effect(*args, **kwargs)
            return self._answer(attr, args, kwargs, answer)

        self._mp.setattr(owner, attr, fake)

    def cls(self, owner: object, attr: str, **answers: object) -> None:
        """Replace the class `owner.attr`; its methods named in `answers` answer like `fn`."""
        recorder = self

        class Fake:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                recorder.calls.append(Call(attr, args, kwargs))
                self.paths = args[0] if args else None  # Store, Instances... keep theirs

            def __getattr__(self, name: str) -> Callable[..., Any]:
                if name not in answers:
                    raise AttributeError(f"the CLI called {attr}.{name}, which this test did not expect")

                def method(*args: Any, **kwargs: Any) -> Any:
                    return recorder._answer(f"{attr}.{name}", args, kwargs, answers[name])

                return method

        Fake.__name__ = Fake.__qualname__ = f"Fake{attr}"
        self._mp.setattr(owner, attr, Fake)

    def _answer(self, label: str, args: tuple[Any, ...], kwargs: dict[str, Any], answer: object) -> Any:
        self.calls.append(Call(label, args, kwargs))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.calls]

    def one(self, label: str) -> Call:
        found = [c for c in self.calls if c.label == label]
        assert len(found) == 1, f"{label} was called {len(found)} times: {self.labels}"
        return found[0]

    def called(self, label: str, *args: object, **kwargs: object) -> None:
        """`label` was called exactly once, with exactly these arguments."""
        assert self.one(label) == Call(label, args, kwargs)


@dataclass(frozen=True)
class FakeSystemd:
    """serve.systemd.Systemd as constructed by the CLI; equal when built for the same scope."""

    scope: Scope
    address: str | None = None


_MISSING = object()


class Like:
    """Equal to any instance of `kind` whose attributes have these values (for objects without __eq__)."""

    def __init__(self, kind: type, **attrs: object) -> None:
        self.kind = kind
        self.attrs = attrs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.kind) and all(
            getattr(other, k, _MISSING) == v for k, v in self.attrs.items()
        )

    def __repr__(self) -> str:
        return f"Like({self.kind.__name__}, {self.attrs})"


class AnyCallable:
    def __eq__(self, other: object) -> bool:
        return callable(other)

    def __repr__(self) -> str:
        return "AnyCallable()"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


class Cli:
    """`nativellm ARGS...` in this process, through `nativellm.cli.main` and its exit-code mapping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self._mp = monkeypatch
        self._capsys = capsys
        # How the process was started, as click reads it for the program name: the console script
        # by default; `python -m nativellm` is argv0 ".../nativellm/__main__.py" and package "nativellm".
        self.argv0 = "nativellm"
        self.main_package: str | None = None

    def __call__(self, *argv: str | Path) -> Run:
        self._mp.setattr(sys, "argv", [self.argv0, *map(str, argv)])
        self._mp.setattr(sys.modules["__main__"], "__package__", self.main_package)  # not pytest's
        # A fresh process starts with a fresh STATE; a usage error can come before _begin sets it.
        STATE.debug, STATE.json, STATE.command = False, False, ""
        self._capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = self._capsys.readouterr()
        code = exit_info.value.code
        assert code is None or isinstance(code, int), f"exit code {code!r} is not a number"
        run = Run(code or 0, _ANSI.sub("", captured.out), _ANSI.sub("", captured.err))
        if "--debug" not in argv:
            assert "Traceback" not in run.err, run.err
        return run


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NATIVELLM_UNIT_DIR", str(tmp_path / "units"))
    for console in (output.out, output.err):  # wide tables: ids are never wrapped or cut
        monkeypatch.setattr(console, "_width", 200)
    for field in dataclasses.fields(STATE):  # restored after the test
        monkeypatch.setattr(STATE, field.name, getattr(STATE, field.name))


@pytest.fixture
def paths() -> Paths:
    return resolve_paths(Scope.USER)


@pytest.fixture
def system_paths() -> Paths:
    return resolve_paths(Scope.SYSTEM)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The recorder, with systemd and hardware detection already out of the way."""
    recorder = Recorder(monkeypatch)
    monkeypatch.setattr(systemd_mod, "Systemd", FakeSystemd)
    recorder.fn(nativellm.hardware, "detect_host", H100)
    return recorder


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)


def envelope(command: str, changed: bool, data: dict[str, Any]) -> dict[str, Any]:
    return {"schema": RESULT_SCHEMA, "ok": True, "command": command, "changed": changed, "data": data}


def error_envelope(command: str, exc: NativeLLMError) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "ok": False,
        "command": command,
        "changed": False,
        "error": {"kind": exc.kind, "message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code},
    }


def jsonable(value: Any) -> Any:
    """What --json makes of a value: tuples become lists, paths strings."""
    return json.loads(json.dumps(value, default=str))


def cells(row: str) -> list[str]:
    """The cells of one row of a boxed rich table."""
    return [c.strip() for c in row.split("\u2502")[1:-1]]


def assert_usage_error(run: Run, message: str, hint: str) -> None:
    assert run.code == 2
    assert run.err_lines == [f"error: {message}", f"  hint: {hint}"]


SUCCESS: set[str] = set()  # commands with a success test (see `covers`)
JSON_CHECKED: set[str] = set()  # commands whose --json output a success test checks
T = TypeVar("T", bound=Callable[..., None])


def covers(*commands: str, checks_json: bool = True) -> Callable[[T], T]:
    """Register the commands a success test runs, for the coverage test."""

    def mark(test: T) -> T:
        SUCCESS.update(commands)
        if checks_json:
            JSON_CHECKED.update(commands)
        return test

    return mark


def _walk(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    subcommands = getattr(command, "commands", None)  # a group, in click and in typer's own copy
    if subcommands:
        for name, sub in sorted(subcommands.items()):
            yield from _walk(sub, (*prefix, name))
    else:
        yield " ".join(prefix), command


COMMANDS: dict[str, Any] = dict(_walk(typer.main.get_command(app)))
JSON_COMMANDS = {
    name for name, cmd in COMMANDS.items() if any("--json" in getattr(p, "opts", ()) for p in cmd.params)
}

# =============================================================================== realistic values
H100 = load_profile(FIXTURES / "profiles" / "2x-h100.json")
SPR_FILE = FIXTURES / "profiles" / "sapphire-rapids-vm-amx-dropped.json"
PLAN = plan_build(H100, PlanOptions())


def _refusal(options: PlanOptions) -> UsageError:
    with pytest.raises(UsageError) as info:
        plan_build(H100, options)
    return info.value


SINGLE_PORTABLE = _refusal(PlanOptions(single_binary=True, portable=True))
SINGLE_CUDA = _refusal(PlanOptions(single_binary=True, backend=Backend.CUDA))

NEW_ID, OLD_ID, OLDEST_ID = "cuda-3f9c2a7b1e04", "cuda-8d41e6c0a9b2", "cuda-1b7e93d0c5aa"
_BUILDS = {  # id -> (created, llama.cpp tag)
    OLDEST_ID: ("2026-10-02T08:00:00+00:00", "b6900"),
    OLD_ID: ("2026-11-01T10:30:00+00:00", "b7000"),
    NEW_ID: ("2026-11-20T07:45:12+00:00", "b7100"),
}
OTHER_REPO = "https://git.example.org/mirrors/llama.cpp.git"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(build_id: str) -> dict[str, Any]:
    created, ref = _BUILDS[build_id]
    return {
        "id": build_id,
        "created": created,
        "plan": {k: v for k, v in PLAN.to_dict().items() if k not in ("reasons", "warnings")},
        "built_for": H100.to_dict(),
        "built_on": H100.to_dict(),
        "source": {"kind": "git", "repo": DEFAULT_REPO, "ref": ref, "commit": sha(ref)[:40]},
        "smoke_test": {"passed": True, "cases": [{"quant": "Q4_0", "passed": True}]},
        "fallbacks": [],
        "nativellm_version": __version__,
    }


def build_record(paths: Paths, build_id: str = NEW_ID) -> BuildRecord:
    m = manifest(build_id)
    return BuildRecord(build_id, paths.builds / build_id, "cuda", m["created"], m["source"], True, m)


FALLBACK_REASON = "the smoke test crashed with it enabled (Q4_K_M: SIGILL)"


def build_outcome(paths: Paths) -> BuildOutcome:
    fallback = {
        "build_id": "cuda-5e0f11aa2b3c",
        "smoke_test": {"passed": False, "summary": "Q4_K_M: SIGILL"},
        "log": str(paths.work / "cuda-5e0f11aa2b3c" / "smoke" / "smoke.log"),
        "dropped": "avx512",
        "reason": FALLBACK_REASON,
    }
    return BuildOutcome(
        PLAN, NEW_ID, changed=True, activated=True, record=build_record(paths), fallbacks=(fallback,),
        jobs=16, duration_s=412.337, notes=(f"built {NEW_ID}", f"dropped avx512: {FALLBACK_REASON}"),
        ui=UiAssets("0123456789abcdef", paths.ui_cache / "0123456789abcdef" / "dist", True, 201.04, 97, 10_100_000),
    )  # fmt: skip


QWEN_FACTS: dict[str, Any] = {
    "architecture": "qwen2",
    "name": "Qwen2.5 0.5B Instruct",
    "parameters": 494_032_768,
    "file_type": "Q4_K_M",
    "context_length": 32768,
    "block_count": 24,
    "head_count": 14,
    "head_count_kv": 2,
    "embedding_length": 896,
    "key_length": 64,
    "value_length": 64,
    "feed_forward_length": 4864,
    "vocab_size": 151_936,
    "tensor_count": 290,
    "tensor_bytes": 491_400_032,
    "has_chat_template": True,
    "split_count": 1,
    "gguf_version": 3,
}
QWEN_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"


def model_record(paths: Paths, owned: bool = True) -> ModelRecord:
    path = paths.models / "files" / "qwen2.5-0.5b" / QWEN_FILE if owned else Path("/srv/models") / QWEN_FILE
    return ModelRecord(
        name="qwen2.5-0.5b", path=path, sha256=sha(QWEN_FILE), size=491_400_032, source="hf",
        facts=QWEN_FACTS, added="2026-11-20T09:14:03+00:00",
        metadata={"owned": owned, "origin": "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"},
    )  # fmt: skip


def ollama_record(tag: str = "3b") -> ModelRecord:
    blob = sha(f"llama3.2:{tag}")
    return ModelRecord(
        name=f"llama3.2-{tag}", path=Path(f"/usr/share/ollama/.ollama/models/blobs/sha256-{blob}"),
        sha256=blob, size=2_019_377_376, source="ollama",
        facts={**QWEN_FACTS, "architecture": "llama", "parameters": 3_212_749_888, "block_count": 28},
        added="2026-11-21T12:00:00+00:00",
        metadata={"ollama_ref": f"llama3.2:{tag}", "template": "{{ .Prompt }}", "params": {"stop": ["<|eot_id|>"]}},
    )  # fmt: skip


def demo_record(paths: Paths, name: str = "demo", size: str = "tiny") -> ModelRecord:
    path = paths.models / "files" / name / f"{name}-{size}-f16.gguf"
    return ModelRecord(
        name=name, path=path, sha256=sha(name + size), size=35_651_584, source="demo",
        facts={**QWEN_FACTS, "architecture": "llama", "parameters": 17_000_000, "file_type": "F16"},
        added="2026-11-22T00:00:00+00:00",
        metadata={"size": size, "vocab": "/srv/llama.cpp/models/ggml-vocab-llama-bpe.gguf", "owned": True,
                  "note": "random weights: gibberish"},
    )  # fmt: skip


def fit_report(profile: HostProfile, paths: Paths) -> FitReport:
    return estimate_fit(
        model_record(paths), profile, ctx=8192, parallel=2, gpu_layers=99,
        cache_type_k="q8_0", cache_type_v="q8_0",
    )  # fmt: skip


SPEC = InstanceSpec(name="q4", model="demo", port=8080, threads=2)
CODER = InstanceSpec(name="coder", model="qwen2.5-0.5b", port=8081, gpu_layers=99, enable=True)
UNIT_TEXTS = {
    "llama@q4.service.d/50-nativellm.conf": (FIXTURES / "units" / "user-cpu-q4.conf").read_text(),
    "llama-watchdog@q4.service.d/50-nativellm.conf": (
        FIXTURES / "units" / "user-cpu-q4-watchdog.conf"
    ).read_text(),
}


def instance_files(paths: Paths, name: str = "q4") -> tuple[str, ...]:
    return (
        str(paths.config / "instances" / f"{name}.toml"),
        str(paths.units / f"llama@{name}.service.d" / "50-nativellm.conf"),
        str(paths.units / f"llama-watchdog@{name}.service.d" / "50-nativellm.conf"),
    )


LIFECYCLE_MESSAGES = {
    "start": "llama@q4.service is ready at http://127.0.0.1:8080",
    "stop": "llama@q4.service stopped",
    "restart": "llama@q4.service restarted and ready",
    "enable": "llama@q4.service enabled",
    "disable": "llama@q4.service disabled",
}


def unit_state(name: str, active: str, sub: str, result: str, pid: int) -> UnitState:
    return UnitState(
        name=f"llama@{name}.service", load_state="loaded", active_state=active, sub_state=sub,
        result=result, main_pid=pid, n_restarts=0 if pid else 5, memory_bytes=734_003_200 if pid else None,
        cpu_ns=12_500_000_000, active_since_us=0, job_pending=False, unit_file_state="enabled",
        start_limit_burst=5,
    )  # fmt: skip


STATUSES = [
    InstanceStatus(
        "q4", SPEC, unit_state("q4", "active", "running", "success", 4242), "ok",
        {"tokens_per_s": 41.7, "requests_processing": 1.0, "kv_cache_usage_ratio": 0.12}, None,
    ),
    InstanceStatus(
        "coder", CODER, unit_state("coder", "failed", "failed", "exit-code", 0), "down", {},
        "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' data is not within the file bounds",
    ),
]  # fmt: skip
JOURNAL_ARGV = ["journalctl", "--no-pager", "--user-unit", "llama@q4.service", "-n", "200", "-f"]
SERVER_ARGV = [
    "/srv/nativellm/current/bin/llama-server",
    "--model",
    "/srv/models/demo.gguf",
    "--port",
    "8080",
]

RPC_SPEC = RpcWorkerSpec("gpu1", 50052, "10.0.0.5", (0, 1), ("10.0.0.2", "10.0.0.3"), 8, NEW_ID)
RPC_WARNING = str(RPC_SPEC.warning())  # rpc-server has no authentication: its real wording


def rpc_outcome(paths: Paths, spec: RpcWorkerSpec = RPC_SPEC) -> RpcOutcome:
    warning = RPC_WARNING if spec.host != "127.0.0.1" else None
    files = (
        str(paths.config / "rpc" / f"{spec.name}.toml"),
        str(paths.units / "llama-rpc@gpu1.service.d" / "50-nativellm.conf"),
    )
    msg = f"RPC worker {spec.name} added: llama-rpc@{spec.name}.service on {spec.endpoint}"
    return RpcOutcome(spec.name, True, msg + ", listening", spec, files, warning, True)  # fmt: skip


def pack_outcome(out_dir: Path) -> PackOutcome:
    meta = artifact_meta(manifest(NEW_ID))
    name = f"nativellm-{NEW_ID}-{meta['variant']}.tar.gz"
    return PackOutcome(out_dir / name, sha(name), 123_456_789, True, NEW_ID, meta, 8.914)


def install_outcome(paths: Paths, activated: bool) -> InstallOutcome:
    m = manifest(NEW_ID)
    notes = (f"verified sha256 {sha('artifact')[:12]}", f"installed {NEW_ID}")
    return InstallOutcome(
        build_id=NEW_ID, changed=True, installed=True, activated=activated, sha256=sha("artifact"),
        requirements=requirements_of(m), record=build_record(paths), smoke_test=m["smoke_test"],
        duration_s=21.456, notes=notes,
    )  # fmt: skip


def index_outcome(directory: Path) -> IndexOutcome:
    meta = artifact_meta(manifest(NEW_ID))
    name = f"nativellm-{NEW_ID}-{meta['variant']}.tar.gz"
    keep = ("build_id", "variant", "backend", "fingerprint", "requirements", "requirements_text")
    entry = {k: meta[k] for k in keep} | {
        "file": name, "sha256": sha(name), "size": 123_456_789, "version": meta["version"],
        "source": meta["source"], "plan": meta["plan"], "dropped": meta["dropped"],
    }  # fmt: skip
    return IndexOutcome(directory / "index.json", True, (entry,))


def upgrade_outcome(rolled_back: bool = False) -> UpgradeOutcome:
    if rolled_back:
        return UpgradeOutcome(
            previous=OLD_ID, current=OLD_ID, changed=True,
            steps=(Step("q4", "failed", 60.02, "/health did not answer within 60s"), Step("q4", "rolled back", 9.81)),
            skipped=(), canary="q4", duration_s=455.1, rolled_back=True,
            reason=f"q4 failed on {NEW_ID}: /health did not answer within 60s", rollback_s=9.81,
        )  # fmt: skip
    return UpgradeOutcome(
        previous=OLD_ID, current=NEW_ID, changed=True,
        steps=(Step("q4", "upgraded", 14.21, "health ok, completion ok"), Step("coder", "upgraded", 31.5)),
        skipped=(("pinned", f"pinned to build {OLDEST_ID}"),), canary=None, duration_s=402.77,
        notes=(f"built {NEW_ID}",),
    )  # fmt: skip


def builds_report() -> BuildsReport:
    old = BuildBench(OLD_ID, Spread.of([1510.2, 1522.8]), Spread.of([48.1, 48.9]), None, None)
    new = BuildBench(
        NEW_ID, Spread.of([1688.0, 1701.4]), Spread.of([52.3, 52.0]),
        Spread.of([1.118, 1.117]), Spread.of([1.087, 1.063]),
    )  # fmt: skip
    crashed = BuildBench(OLDEST_ID, Spread.of([]), Spread.of([]), None, None, crashed="SIGILL")
    return BuildsReport(Path("/srv/models/qwen.gguf"), 2, 128, 32, (old, new, crashed))


def load_report(url: str) -> LoadReport:
    warmup = RequestResult(True, 0.84, 2.1, 64, 128, 1520.0)
    levels = (
        LevelResult(1, 4, 0, 6.2, 256, 0, 0.051, 0.07, 48.2, 41.3, 1510.0),
        LevelResult(2, 4, 0, 4.9, 256, 1, 0.094, 0.12, 44.0, 52.2, 1490.5),
    )
    return LoadReport(url, warmup, levels)


FINDINGS_OK = [
    Finding("store", True, f"3 builds; current {NEW_ID} passed its smoke test"),
    Finding("flags", True, "every ISA flag of the current build is verified on this host"),
    Finding("disk", True, "412.0 GiB free under the store"),
]
FINDING_BAD = Finding(
    "instance",
    False,
    "llama@coder.service failed (exit-code)",
    "read `nativellm logs coder`, then fix the spec",
)

# =============================================================================== use cases replaced
# One function per command: it puts the recorder where the command's use case is. `fail` (when
# given) is what the use case raises instead of answering; CASES below pairs each with its error.
Fail = NativeLLMError | None


def _detect(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(nativellm.hardware, "detect_host", fail or H100)


def _plan(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(plan_mod, "plan_build", fail or PLAN)


def _build(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(pipeline_mod, "build_llama", fail or build_outcome(p))


def _store(r: Recorder, p: Paths, fail: Fail) -> None:
    r.cls(
        store_mod, "Store", list_builds=fail or [build_record(p, OLD_ID), build_record(p, NEW_ID)],
        current_id=NEW_ID, pinned={OLD_ID: ["coder"]}, get=fail or build_record(p, OLD_ID),
        set_current=True, remove=fail or OLD_ID, gc=fail or [OLDEST_ID], broken=[],
    )  # fmt: skip


def _use(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(upgrade_mod, "use_build", fail or UseOutcome(OLD_ID, True, Refresh(("q4",), ())))


def _rollback(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(
        upgrade_mod,
        "rollback_and_restart",
        fail or RollbackOutcome(NEW_ID, OLD_ID, ("q4",), ("coder",), True),
    )


def _model_add(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "add_model", fail or (model_record(p), True))


def _model_pull(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(pull_mod, "pull_model", fail or (model_record(p), True))


def _import_ollama(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "import_ollama", fail or (ollama_record(), True))
    r.fn(registry_mod, "import_ollama_all", fail or [(ollama_record(), True), (ollama_record("1b"), False)])


def _model_list(r: Recorder, p: Paths, fail: Fail) -> None:
    r.cls(registry_mod, "ModelRegistry", list=fail or [model_record(p), ollama_record()])


def _model_inspect(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "inspect_model", fail or model_record(p))


def _model_verify(r: Recorder, p: Paths, fail: Fail) -> None:
    m = model_record(p)
    r.fn(registry_mod, "verify_model", fail or VerifyResult(m.name, True, m.sha256, m.sha256, m.path))


def _model_rm(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "remove_model", fail or model_record(p))


def _model_demo(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "write_demo_model", fail or (demo_record(p), True))


def _model_fit(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(registry_mod, "fit_model", fail or fit_report(H100, p))
    r.fn(vram_mod, "probe_nvml", None)  # no live NVML here: the inventory is the profile's


def _instances(r: Recorder, p: Paths, fail: Fail, linger: bool | None = True) -> None:
    added = Outcome("q4", True, "instance q4 added: llama@q4.service on port 8080", SPEC, instance_files(p))
    edited = Outcome(
        "q4", True, "instance q4 changed; llama@q4.service restarted", SPEC, instance_files(p)[1:], True
    )
    removed = Outcome("q4", True, "instance q4 removed", SPEC, instance_files(p))
    r.cls(
        instances_mod, "Instances", add=fail or added, edit=fail or edited, remove=fail or removed,
        specs=fail or [SPEC, CODER], get=fail or SPEC, rendered=UNIT_TEXTS, status=fail or STATUSES,
        start=fail or Outcome("q4", True, LIFECYCLE_MESSAGES["start"], SPEC),
        stop=fail or Outcome("q4", True, LIFECYCLE_MESSAGES["stop"], SPEC),
        restart=fail or Outcome("q4", True, LIFECYCLE_MESSAGES["restart"], SPEC, restarted=True),
        set_enabled=fail or Outcome("q4", True, LIFECYCLE_MESSAGES["enable"], SPEC),
        journal_argv=JOURNAL_ARGV, foreground_argv=fail or SERVER_ARGV, foreground_env={},
    )  # fmt: skip
    r.fn(instances_mod, "linger_enabled", linger)
    r.fn(instances_mod, "enable_linger", None)


def _exec(r: Recorder, p: Paths, fail: Fail) -> None:
    _instances(r, p, None)
    r.fn(run_mod, "exec_replace", fail)


def _run(r: Recorder, p: Paths, fail: Fail) -> None:
    _instances(r, p, fail)
    r.fn(run_mod, "exec_replace", None)


def _pack(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(artifacts_mod, "pack", fail or pack_outcome(Path.cwd()))


def _install_artifact(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(artifacts_mod, "install_artifact", fail or install_outcome(p, activated=True))


def _fingerprint(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(fingerprint_mod, "fingerprint", fingerprint(H100))
    if fail:  # a pure function of the profile: what fails in practice is reading --profile
        r.fn(profile_mod, "load_profile", fail)


def _index(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(index_mod, "write_index", fail or index_outcome(Path("/srv/artifacts")))


KEYGEN = signing_mod.KeygenOutcome(Path("/srv/k"), Path("/srv/k.pub"), "SHA256:abc", "ssh-ed25519 AAAA fleet")


def _keygen(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(signing_mod, "generate_key", fail or KEYGEN)


def _upgrade(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(upgrade_mod, "upgrade", fail or upgrade_outcome())


def _rpc(r: Recorder, p: Paths, fail: Fail) -> None:
    removed = RpcOutcome("gpu1", True, "RPC worker gpu1 removed", RPC_SPEC, rpc_outcome(p).files)
    r.cls(rpc_mod, "RpcWorkers", add=fail or rpc_outcome(p), remove=fail or removed)


def _bench(r: Recorder, p: Paths, fail: Fail) -> None:
    def rounds(*args: Any, on_round: Callable[[int, str], None], **kwargs: Any) -> None:
        on_round(1, OLD_ID)
        on_round(2, NEW_ID)

    r.fn(bench_mod, "bench_store_builds", fail or builds_report(), effect=rounds)
    r.fn(bench_mod, "instance_endpoint", fail or ("http://127.0.0.1:8080", "sk-local-0123"))
    r.fn(loadgen_mod, "run_load", fail or load_report("http://127.0.0.1:8080"))


def _doctor(r: Recorder, p: Paths, fail: Fail) -> None:
    r.fn(doctor_mod, "doctor_all", fail or FINDINGS_OK)


# =============================================================================== success: detect, plan, build
@covers("detect")
def test_detect_shows_the_verified_profile_and_its_json(cli: Cli, rec: Recorder) -> None:
    run = cli("detect")
    assert run.code == 0 and run.err == ""
    assert rec.calls == [Call("detect_host", (), {})]
    assert H100.cpu.model in run.out
    assert f"GPU 0: {H100.gpus[0].name} (nvidia sm_90, 79.6 GiB)" in run.out
    assert f"toolkits: cuda={H100.toolkits.cuda} rocm=-" in run.out

    run = cli("detect", "--json")
    assert run.code == 0
    assert run.json() == jsonable(H100.to_dict())
    assert run.json()["schema"] == "nativellm.host/1"


@covers("plan")
def test_plan_turns_flags_into_plan_options_and_reads_a_profile_file(
    cli: Cli, rec: Recorder, paths: Paths
) -> None:
    _plan(rec, paths, None)
    run = cli("plan", "--profile", SPR_FILE, "--backend", "CUDA", "--rpc", "--json")
    assert run.code == 0
    rec.called("plan_build", load_profile(SPR_FILE), PlanOptions(backend=Backend.CUDA, rpc=True))
    assert "detect_host" not in rec.labels  # --profile replaces detection
    assert run.json() == jsonable(PLAN.to_dict())

    rec.calls.clear()
    run = cli("plan", "--portable", "--no-ui")
    assert run.code == 0
    assert rec.calls == [
        Call("detect_host", (), {}),
        Call("plan_build", (H100, PlanOptions(portable=True, ui=False)), {}),
    ]
    assert "backend: cuda" in run.out and "CMAKE_CUDA_ARCHITECTURES" in run.out


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--backend", "tpu"], "unknown backend 'tpu'", "choose one of: cpu, cuda, hip, vulkan, metal, sycl"),
        (["--native", "--baseline"], "--portable, --native and --baseline exclude each other", "pick one of them"),
        (["--define", "LLAMA_CURL"], "--define 'LLAMA_CURL' is not NAME=VALUE", "write it as --define LLAMA_CURL=OFF"),
        (["--single-binary", "--portable"], SINGLE_PORTABLE.message, SINGLE_PORTABLE.hint),
        (["--single-binary", "--backend", "cuda"], SINGLE_CUDA.message, SINGLE_CUDA.hint),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["plan", "build"])
def test_plan_options_are_checked_before_any_work(
    cli: Cli, rec: Recorder, paths: Paths, command: str, argv: list[str], message: str, hint: str
) -> None:
    _plan(rec, paths, None)
    _build(rec, paths, None)
    assert_usage_error(cli(command, *argv), message, hint)
    assert rec.calls == []
    run = cli(command, "--json", *argv)
    assert run.code == 2 and run.json() == error_envelope(command, UsageError(message, hint))


@covers("plan", "build")
def test_single_binary_reaches_the_plan_options(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _plan(rec, paths, None)
    _build(rec, paths, None)
    assert cli("plan", "--single-binary", "--backend", "cpu", "--baseline", "--json").code == 0
    rec.called("plan_build", H100, PlanOptions(backend=Backend.CPU, baseline=True, single_binary=True))
    rec.calls.clear()
    run = cli("build", "--single-binary", "--source", "/src/llama.cpp", "--json")
    assert run.code == 0
    expected = BuildOptions(
        auto=False,
        plan=PlanOptions(single_binary=True),
        source=SourceRequest(directory=Path("/src/llama.cpp")),
    )
    rec.called("build_llama", paths, expected, Like(ConsoleReporter, quiet=True))
    assert run.json()["data"]["build_id"] == NEW_ID


@covers("build")
def test_build_turns_flags_into_build_options(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _build(rec, paths, None)
    run = cli("build", "--auto", "--backend", "cuda", "--rpc", "--ref", "b7100", "--repo", OTHER_REPO, "-j", "8",
              "--dry-run", "--no-ui")  # fmt: skip
    assert run.code == 0
    expected = BuildOptions(
        auto=True, plan=PlanOptions(backend=Backend.CUDA, rpc=True, ui=False),
        source=SourceRequest(ref="b7100", repo=OTHER_REPO), jobs=8, dry_run=True,
    )  # fmt: skip
    rec.called("build_llama", paths, expected, Like(ConsoleReporter, quiet=False))
    assert f"dropped avx512: {FALLBACK_REASON}" in run.out
    assert f"current -> {NEW_ID} (412.3s)" in run.out


@covers("build")
def test_build_from_a_tarball_for_another_profile_in_system_scope_json(
    cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths
) -> None:
    _build(rec, paths, None)
    tarball = "https://example.org/llama.cpp-b7100.tar.gz"
    run = cli("build", "--tarball", tarball, "--sha256", sha("tar"), "--profile", SPR_FILE, "--portable",
              "--from-index", "/srv/artifacts", "--insecure-unsigned", "--system", "--json")  # fmt: skip
    assert run.code == 0
    expected = BuildOptions(
        auto=False, profile=SPR_FILE, plan=PlanOptions(portable=True),
        source=SourceRequest(tarball=tarball, sha256=sha("tar")), from_index="/srv/artifacts",
        insecure_unsigned=True,
    )  # fmt: skip
    rec.called("build_llama", system_paths, expected, Like(ConsoleReporter, quiet=True))
    outcome = build_outcome(paths)
    assert run.json() == envelope("build", True, {
        "build_id": NEW_ID, "cached": False, "activated": True, "plan": jsonable(PLAN.to_dict()),
        "fallbacks": jsonable(outcome.fallbacks), "jobs": 16, "duration_s": 412.34,
        "notes": list(outcome.notes),
        "ui": {"key": "0123456789abcdef", "dist": str(paths.ui_cache / "0123456789abcdef" / "dist"), "built": True,
               "seconds": 201.0, "files": 97, "bytes": 10_100_000},
    })  # fmt: skip
    assert run.err == ""  # the reporter is quiet under --json


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--source", "/src/llama.cpp", "--ref", "b7100"], "--source, --tarball and --ref exclude each other",
         "give one llama.cpp source"),
        (["--sha256", "ab" * 32], "--sha256 only applies to --tarball", "drop --sha256 or add --tarball"),
    ],
)  # fmt: skip
def test_build_refuses_conflicting_sources(
    cli: Cli, rec: Recorder, paths: Paths, argv: list[str], message: str, hint: str
) -> None:
    _build(rec, paths, None)
    assert_usage_error(cli("build", *argv), message, hint)
    assert "build_llama" not in rec.labels


# =============================================================================== success: builds
@covers("builds list")
def test_builds_list_marks_current_and_pins(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _store(rec, paths, None)
    run = cli("builds", "list")
    assert run.code == 0
    assert rec.labels == ["Store", "Store.list_builds", "Store.current_id", "Store.pinned", "Store.broken"]
    rec.called("Store", paths)
    rows = [cells(line) for line in run.out.splitlines() if "cuda-" in line]
    assert rows == [
        ["", OLD_ID, "cuda", _BUILDS[OLD_ID][0], "b7000", "pass", "coder"],
        ["*", NEW_ID, "cuda", _BUILDS[NEW_ID][0], "b7100", "pass", ""],
    ]

    run = cli("builds", "list", "--json")
    assert run.code == 0
    assert run.json() == {
        "schema": "nativellm.builds/1",
        "current": NEW_ID,
        "broken": [],
        "builds": [
            {"id": b, "backend": "cuda", "created": _BUILDS[b][0], "current": b == NEW_ID,
             "smoke_test_passed": True, "smoke_test": "passed", "pinned_by": ["coder"] if b == OLD_ID else [],
             "source": manifest(b)["source"], "path": str(paths.builds / b)}
            for b in (OLD_ID, NEW_ID)
        ],
    }  # fmt: skip


@covers("builds use")
def test_builds_use_resolves_a_prefix_and_reports_change(
    cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths
) -> None:
    _use(rec, paths, None)
    run = cli("builds", "use", "cuda-8d41")
    assert run.code == 0
    assert run.out == f"current -> {OLD_ID}; units re-rendered for its llama-server: q4 (restart to move)\n"
    rec.called("use_build", paths, "cuda-8d41", FakeSystemd(Scope.USER))

    rec.calls.clear()
    run = cli("builds", "use", "cuda-8d41", "--system", "--json")
    rec.called("use_build", system_paths, "cuda-8d41", FakeSystemd(Scope.SYSTEM))
    assert run.json() == envelope(
        "builds use", True, {"current": OLD_ID, "rewritten": ["q4"], "not_rendered": []}
    )


@covers("builds use")
def test_builds_use_of_the_current_build_is_unchanged(cli: Cli, rec: Recorder, paths: Paths) -> None:
    rec.fn(upgrade_mod, "use_build", UseOutcome(NEW_ID, False, Refresh((), ())))
    run = cli("builds", "use", NEW_ID)
    assert run.code == 0 and run.out == f"{NEW_ID} is already current\n"
    run = cli("builds", "use", NEW_ID, "--json")
    assert run.json() == envelope(
        "builds use", False, {"current": NEW_ID, "rewritten": [], "not_rendered": []}
    )


@covers("builds use")
def test_builds_use_names_a_unit_its_server_cannot_run(cli: Cli, rec: Recorder) -> None:
    why = "instance rpc needs --rpc, which the llama-server of /b does not know (it is older)"
    rec.fn(upgrade_mod, "use_build", UseOutcome(OLD_ID, True, Refresh((), (("rpc", why),))))
    run = cli("builds", "use", OLD_ID)
    assert run.out == f"current -> {OLD_ID}; rpc keeps its old unit: {why}\n"


@covers("builds rollback")
def test_builds_rollback_restarts_through_systemd(
    cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths
) -> None:
    _rollback(rec, paths, None)
    run = cli("builds", "rollback")
    assert run.code == 0
    rec.called("rollback_and_restart", paths, FakeSystemd(Scope.USER))
    assert run.out == f"rolled back: current {NEW_ID} -> {OLD_ID}; restarted q4\n"

    rec.calls.clear()
    run = cli("builds", "rollback", "--system", "--json")
    rec.called("rollback_and_restart", system_paths, FakeSystemd(Scope.SYSTEM))
    assert run.json() == envelope("builds rollback", True, {
        "current": OLD_ID, "previous": NEW_ID, "restarted": ["q4"], "not_running": ["coder"], "systemd": True,
    })  # fmt: skip


@covers("builds rollback")
def test_builds_rollback_without_systemd_says_what_to_do(cli: Cli, rec: Recorder) -> None:
    rec.fn(upgrade_mod, "rollback_and_restart", RollbackOutcome(NEW_ID, OLD_ID, (), (), False))
    run = cli("builds", "rollback")
    assert run.code == 0
    assert run.out == (
        f"rolled back: current {NEW_ID} -> {OLD_ID}; systemd is not reachable: "
        "restart the instances that follow current yourself\n"
    )


@covers("builds rm")
def test_builds_rm(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _store(rec, paths, None)
    run = cli("builds", "rm", OLD_ID)
    assert run.code == 0 and run.out == f"removed {OLD_ID}\n"
    rec.called("Store.remove", OLD_ID)
    run = cli("builds", "rm", OLD_ID, "--json")
    assert run.json() == envelope("builds rm", True, {"removed": [OLD_ID]})


@covers("builds gc")
def test_builds_gc_keeps_what_it_is_told(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _store(rec, paths, None)
    run = cli("builds", "gc", "--keep", "1")
    assert run.code == 0 and run.out == f"removed 1 build(s): {OLDEST_ID}\n"
    rec.called("Store.gc", 1)
    run = cli("builds", "gc", "--keep", "1", "--json")
    assert run.json() == envelope("builds gc", True, {"removed": [OLDEST_ID]})


@covers("builds gc")
def test_builds_gc_with_nothing_to_remove_is_unchanged(cli: Cli, rec: Recorder) -> None:
    rec.cls(store_mod, "Store", gc=[])
    run = cli("builds", "gc")
    assert run.code == 0 and run.out == "nothing to remove\n"
    rec.called("Store.gc", 2)  # the default --keep
    assert cli("builds", "gc", "--json").json() == envelope("builds gc", False, {"removed": []})


# =============================================================================== success: models
@covers("model add")
def test_model_add(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_add(rec, paths, None)
    gguf = Path("/srv/models") / QWEN_FILE
    run = cli("model", "add", gguf, "--name", "qwen2.5-0.5b", "--copy", "--sha256", sha(QWEN_FILE))
    assert run.code == 0
    rec.called("add_model", paths, gguf, name="qwen2.5-0.5b", copy=True, sha256=sha(QWEN_FILE))
    record = model_record(paths)
    assert run.out == f"registered qwen2.5-0.5b ({record.path})\n"

    rec.calls.clear()
    run = cli("model", "add", gguf, "--link", "--json")
    rec.called("add_model", paths, gguf, name=None, copy=False, sha256=None)
    assert run.json() == envelope("model add", True, {"model": jsonable(record.to_dict())})


@covers("model add")
def test_model_add_again_is_unchanged_and_link_copy_conflict(cli: Cli, rec: Recorder, paths: Paths) -> None:
    rec.fn(registry_mod, "add_model", (model_record(paths), False))
    run = cli("model", "add", "/srv/models/x.gguf")
    assert run.code == 0 and run.out == "qwen2.5-0.5b is already registered; no change\n"
    assert cli("model", "add", "/srv/models/x.gguf", "--json").json()["changed"] is False

    rec.calls.clear()
    assert_usage_error(cli("model", "add", "/srv/models/x.gguf", "--link", "--copy"),
                       "--link and --copy exclude each other", "pick one")  # fmt: skip
    assert rec.calls == []


@covers("model pull")
def test_model_pull(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_pull(rec, paths, None)
    spec = "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"
    run = cli("model", "pull", spec, "--name", "qwen2.5-0.5b", "--sha256", sha(QWEN_FILE))
    assert run.code == 0
    call = rec.one("pull_model")
    assert call.args[:3] == (
        paths,
        PullOptions(spec, "qwen2.5-0.5b", sha(QWEN_FILE)),
        Like(DownloadProgress, quiet=False),
    )
    # "another pull is running" goes to that same progress display
    assert call.args[3] == call.args[2].waiting and call.kwargs == {}
    assert run.out == f"pulled qwen2.5-0.5b ({model_record(paths).path})\n"

    rec.calls.clear()
    run = cli("model", "pull", spec, "--json")
    assert rec.one("pull_model").args[1:3] == (PullOptions(spec), Like(DownloadProgress, quiet=True))
    assert run.json() == envelope("model pull", True, {"model": jsonable(model_record(paths).to_dict())})


@covers("model import-ollama")
def test_model_import_ollama_one(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _import_ollama(rec, paths, None)
    run = cli("model", "import-ollama", "llama3.2:3b", "--ollama-dir", "/srv/ollama", "--name", "llama3")
    assert run.code == 0
    rec.called("import_ollama", paths, "llama3.2:3b", ollama_dir=Path("/srv/ollama"), name="llama3")
    assert run.out == f"imported llama3.2-3b ({ollama_record().path})\n"

    run = cli("model", "import-ollama", "llama3.2:3b", "--json")
    assert run.json() == envelope(
        "model import-ollama",
        True,
        {"models": [jsonable(ollama_record().to_dict())], "imported": ["llama3.2-3b"]},
    )


@covers("model import-ollama")
def test_model_import_ollama_all(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _import_ollama(rec, paths, None)
    run = cli("model", "import-ollama", "--all")
    assert run.code == 0
    rec.called("import_ollama_all", paths, ollama_dir=None)
    assert run.out.splitlines() == [
        f"imported llama3.2-3b ({ollama_record().path})",
        "llama3.2-1b is already registered",
    ]
    run = cli("model", "import-ollama", "--all", "--json")
    assert run.json() == envelope("model import-ollama", True, {
        "models": [jsonable(ollama_record().to_dict()), jsonable(ollama_record("1b").to_dict())],
        "imported": ["llama3.2-3b"],
    })  # fmt: skip

    rec.fn(registry_mod, "import_ollama_all", [])
    run = cli("model", "import-ollama", "--all")
    assert run.code == 0 and run.out == "the Ollama store has no models\n"
    assert cli("model", "import-ollama", "--all", "--json").json()["changed"] is False


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        ([], "give either an Ollama model NAME[:TAG] or --all", "e.g. import-ollama llama3.2:3b"),
        (["llama3.2:3b", "--all"], "give either an Ollama model NAME[:TAG] or --all", "e.g. import-ollama llama3.2:3b"),
        (["--all", "--name", "x"], "--name applies to one model, not --all", "drop --name"),
    ],
)  # fmt: skip
def test_model_import_ollama_usage(
    cli: Cli, rec: Recorder, paths: Paths, argv: list[str], message: str, hint: str
) -> None:
    _import_ollama(rec, paths, None)
    assert_usage_error(cli("model", "import-ollama", *argv), message, hint)
    assert not {"import_ollama", "import_ollama_all"} & set(rec.labels)


@covers("model list")
def test_model_list(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_list(rec, paths, None)
    run = cli("model", "list")
    assert run.code == 0
    assert rec.calls == [Call("ModelRegistry", (paths,), {}), Call("ModelRegistry.list", (), {})]
    row = next(line for line in run.out.splitlines() if line.startswith("qwen2.5-0.5b"))
    assert row.split()[:6] == ["qwen2.5-0.5b", "hf", "qwen2", "494.0M", "Q4_K_M", "468.6"]

    run = cli("model", "list", "--json")
    assert run.json() == {
        "schema": "nativellm.models/1",
        "models": [jsonable(model_record(paths).to_dict()), jsonable(ollama_record().to_dict())],
    }


@covers("model list")
def test_model_list_empty(cli: Cli, rec: Recorder) -> None:
    rec.cls(registry_mod, "ModelRegistry", list=[])
    run = cli("model", "list")
    assert run.code == 0 and run.out.startswith(
        "no models registered; add one with `nativellm model add FILE`"
    )
    assert cli("model", "list", "--json").json() == {"schema": "nativellm.models/1", "models": []}


@covers("model inspect")
def test_model_inspect(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_inspect(rec, paths, None)
    run = cli("model", "inspect", "qwen2.5-0.5b")
    assert run.code == 0
    rec.called("inspect_model", paths, "qwen2.5-0.5b")
    lines = run.out.splitlines()
    assert "architecture    qwen2" in lines and "chat template   yes" in lines
    assert f"sha256          {sha(QWEN_FILE)}" in lines
    run = cli("model", "inspect", "qwen2.5-0.5b", "--json")
    assert run.json() == {"schema": "nativellm.model/1", "model": jsonable(model_record(paths).to_dict())}


@covers("model verify")
def test_model_verify(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_verify(rec, paths, None)
    run = cli("model", "verify", "qwen2.5-0.5b")
    assert run.code == 0 and run.out == f"qwen2.5-0.5b: ok, sha256 {sha(QWEN_FILE)}\n"
    rec.called("verify_model", paths, "qwen2.5-0.5b")
    run = cli("model", "verify", "qwen2.5-0.5b", "--json")
    assert run.json() == envelope("model verify", False, {
        "name": "qwen2.5-0.5b", "ok": True, "sha256": sha(QWEN_FILE), "path": str(model_record(paths).path),
    })  # fmt: skip


@covers("model rm")
def test_model_rm(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_rm(rec, paths, None)
    run = cli("model", "rm", "qwen2.5-0.5b", "--force")
    assert run.code == 0 and run.out == "removed qwen2.5-0.5b\n"
    rec.called("remove_model", paths, "qwen2.5-0.5b", force=True)
    run = cli("model", "rm", "qwen2.5-0.5b", "--json")
    assert rec.calls[-1].kwargs == {"force": False}
    assert run.json() == envelope("model rm", True, {"removed": "qwen2.5-0.5b", "deleted_files": True})

    rec.fn(registry_mod, "remove_model", model_record(paths, owned=False))
    run = cli("model", "rm", "qwen2.5-0.5b")
    assert run.out == f"removed qwen2.5-0.5b (kept /srv/models/{QWEN_FILE})\n"
    assert cli("model", "rm", "qwen2.5-0.5b", "--json").json()["data"]["deleted_files"] is False


@covers("model demo")
def test_model_demo(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_demo(rec, paths, None)
    run = cli("model", "demo")
    assert run.code == 0 and run.out == f"wrote demo model demo ({demo_record(paths).path})\n"
    rec.called("write_demo_model", paths, "demo", "tiny", None)

    rec.calls.clear()
    run = cli("model", "demo", "--name", "d2", "--size", "small", "--vocab", "/srv/llama.cpp", "--json")
    rec.called("write_demo_model", paths, "d2", "small", Path("/srv/llama.cpp"))
    assert run.json() == envelope("model demo", True, {"model": jsonable(demo_record(paths).to_dict())})


@covers("model fit")
def test_model_fit_on_this_host_and_on_a_profile(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _model_fit(rec, paths, None)
    run = cli("model", "fit", "qwen2.5-0.5b")
    assert run.code == 0
    assert rec.calls == [
        Call("detect_host", (), {"verify": False}),  # fit needs memory and GPUs, not verified ISA flags
        Call("probe_nvml", (), {}),  # free memory of this host's NVIDIA GPUs, when NVML answers
        Call("fit_model", (paths, "qwen2.5-0.5b", H100), {
            "ctx": 4096, "parallel": 1, "gpu_layers": 0, "cache_type_k": "f16", "cache_type_v": "f16",
            "devices": profile_devices(H100)}),
    ]  # fmt: skip
    report = fit_report(H100, paths)
    assert run.out.splitlines()[0] == report.message
    assert "KV cache" in run.out.splitlines()[1]

    rec.calls.clear()
    run = cli("model", "fit", "qwen2.5-0.5b", "--ctx", "8192", "--parallel", "2", "--gpu-layers", "99",
              "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--profile", SPR_FILE, "--json")  # fmt: skip
    assert rec.calls == [  # another machine's profile: nothing live (no NVML) is mixed in
        Call("fit_model", (paths, "qwen2.5-0.5b", load_profile(SPR_FILE)), {
            "ctx": 8192, "parallel": 2, "gpu_layers": 99, "cache_type_k": "q8_0", "cache_type_v": "q8_0",
            "devices": ()}),
    ]  # fmt: skip
    assert run.json() == {
        "schema": "nativellm.fit/1",
        "model": "qwen2.5-0.5b",
        "ctx": 8192,
        **jsonable(report.to_dict()),
    }


# =============================================================================== success: instances
ALL_INSTANCE_FLAGS = [
    "--model", "qwen2.5-0.5b", "--port", "8081", "--host", "0.0.0.0", "--ctx", "8192", "--gpu-layers", "99",
    "--threads", "8", "--parallel", "4", "--batch", "1024", "--flash-attn", "on", "--cache-type-k", "q8_0",
    "--cache-type-v", "q8_0", "--mlock", "--no-metrics", "--memory-max", "8G", "--cpus", "0-7",
    "--numa-node", "0", "--gpus", "0,1", "--build", "cuda-3f9c", "--enable", "--start-timeout", "600",
    "--force", "--rpc", "10.0.0.5:50052, 10.0.0.6:50052",
]  # fmt: skip


def all_flags_options(key: Path) -> InstanceOptions:
    return InstanceOptions(
        model="qwen2.5-0.5b", port=8081, host="0.0.0.0", ctx=8192, threads=8, gpu_layers=99, parallel=4,
        batch=1024, flash_attn="on", cache_type_k="q8_0", cache_type_v="q8_0", mlock=True, metrics=False,
        api_key_file=str(key.resolve()), insecure_no_api_key=None, memory_max="8G", cpus="0-7", numa_node=0,
        gpus=(0, 1), rpc=("10.0.0.5:50052", "10.0.0.6:50052"), build="cuda-3f9c", enable=True,
        start_timeout=600, extra_args=("--jinja", "--temp", "0.7"), force=True,
    )  # fmt: skip


@covers("instance add")
def test_instance_add_turns_every_flag_into_instance_options(
    cli: Cli, rec: Recorder, paths: Paths, tmp_path: Path
) -> None:
    _instances(rec, paths, None, linger=False)
    key = tmp_path / "api.key"
    key.write_text("sk-0123\n")
    run = cli(
        "instance", "add", "q4", *ALL_INSTANCE_FLAGS, "--api-key-file", key, "--", "--jinja", "--temp", "0.7"
    )
    assert run.code == 0
    rec.called("Instances", paths, FakeSystemd(Scope.USER))
    rec.called("Instances.add", "q4", all_flags_options(key))
    rec.called("linger_enabled")
    assert "enable_linger" not in rec.labels
    assert run.out == "instance q4 added: llama@q4.service on port 8080\n"
    assert run.err.startswith("warning: lingering is off for this user: instances stop at logout")


@covers("instance add")
def test_instance_add_json_with_and_without_systemd(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _instances(rec, paths, None, linger=False)
    run = cli("instance", "add", "q4", "--model", "demo", "--json")
    assert run.code == 0
    linger_note = (
        "lingering is off for this user: instances stop at logout and don't start at boot; "
        "rerun with --linger (loginctl enable-linger)"
    )
    data = {"name": "q4", "message": "instance q4 added: llama@q4.service on port 8080",
            "files": list(instance_files(paths)), "restarted": False, "warnings": [linger_note],
            "spec": jsonable(SPEC.to_dict())}  # fmt: skip
    assert run.json() == envelope("instance add", True, data)
    assert run.err == ""  # under --json the warnings are in the document only

    rec.calls.clear()
    run = cli("instance", "add", "q4", "--model", "demo", "--no-systemd", "--json")
    rec.called("Instances", paths, None)
    rec.called("Instances.add", "q4", InstanceOptions(model="demo"))
    assert "linger_enabled" not in rec.labels  # without systemd, lingering is not our business
    assert run.json() == envelope("instance add", True, data | {"warnings": []})


@covers("instance add")
def test_instance_add_linger_and_system_scope(
    cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths
) -> None:
    _instances(rec, paths, None, linger=False)
    run = cli("instance", "add", "q4", "--model", "demo", "--linger")
    assert run.code == 0 and run.err == ""
    rec.called("enable_linger")
    assert "linger_enabled" not in rec.labels

    rec.calls.clear()
    run = cli("instance", "add", "q4", "--model", "demo", "--system", "--linger")
    assert run.code == 0 and run.err == ""
    rec.called("Instances", system_paths, FakeSystemd(Scope.SYSTEM))
    assert "linger_enabled" not in rec.labels and "enable_linger" not in rec.labels  # user scope only


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--gpus", "0,a"], "--gpus '0,a' is not a list of GPU indices", "use e.g. --gpus 0,1"),
        (["--api-key-file", "/nonexistent/api.key"], "--api-key-file /nonexistent/api.key does not exist",
         "create the key file first"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["add", "edit"])
def test_instance_options_are_checked_before_the_use_case(
    cli: Cli, rec: Recorder, paths: Paths, command: str, argv: list[str], message: str, hint: str
) -> None:
    _instances(rec, paths, None)
    assert_usage_error(cli("instance", command, "q4", "--model", "demo", *argv), message, hint)
    assert rec.calls == []


@covers("instance edit")
def test_instance_edit(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _instances(rec, paths, None)
    run = cli("instance", "edit", "q4", "--ctx", "16384", "--no-mlock", "--insecure-no-api-key",
              "--rpc", "10.0.0.5:50052", "--no-enable", "--no-metrics")  # fmt: skip
    assert run.code == 0 and run.out == "instance q4 changed; llama@q4.service restarted\n"
    rec.called("Instances", paths, FakeSystemd(Scope.USER))
    rec.called("Instances.edit", "q4", InstanceOptions(
        ctx=16384, mlock=False, insecure_no_api_key=True, rpc=("10.0.0.5:50052",), enable=False, metrics=False))  # fmt: skip
    assert "linger_enabled" not in rec.labels

    run = cli("instance", "edit", "q4", "--port", "8090", "--no-systemd", "--json")
    assert rec.calls[-1] == Call("Instances.edit", ("q4", InstanceOptions(port=8090)), {})
    assert run.json() == envelope("instance edit", True, {
        "name": "q4", "message": "instance q4 changed; llama@q4.service restarted",
        "files": list(instance_files(paths)[1:]), "restarted": True, "warnings": [], "spec": jsonable(SPEC.to_dict()),
    })  # fmt: skip


@covers("instance rm")
def test_instance_rm(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _instances(rec, paths, None)
    run = cli("instance", "rm", "q4")
    assert run.code == 0 and run.out == "instance q4 removed\n"
    rec.called("Instances", paths, FakeSystemd(Scope.USER))
    rec.called("Instances.remove", "q4")
    rec.calls.clear()
    run = cli("instance", "rm", "q4", "--no-systemd", "--json")
    rec.called("Instances", paths, None)
    assert run.json() == envelope("instance rm", True, {
        "name": "q4", "message": "instance q4 removed", "files": list(instance_files(paths)), "restarted": False,
        "warnings": [], "spec": jsonable(SPEC.to_dict()),
    })  # fmt: skip


@covers("instance list")
def test_instance_list(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _instances(rec, paths, None)
    run = cli("instance", "list")
    assert run.code == 0
    rec.called("Instances", paths, None)  # reading specs needs no systemd
    assert [line.split() for line in run.out.splitlines()] == [  # tab-separated; rich expands the tabs
        ["q4", "demo", "http://127.0.0.1:8080", "build", "current"],
        ["coder", "qwen2.5-0.5b", "http://127.0.0.1:8081", "build", "current", "enabled"],
    ]
    run = cli("instance", "list", "--json")
    assert run.json() == {
        "schema": "nativellm.instances/1",
        "instances": jsonable([SPEC.to_dict(), CODER.to_dict()]),
    }

    rec.cls(instances_mod, "Instances", specs=[])
    assert (
        cli("instance", "list").out
        == "no instances; add one with `nativellm instance add NAME --model MODEL`\n"
    )


@covers("instance show")
def test_instance_show(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _instances(rec, paths, None)
    run = cli("instance", "show", "q4")
    assert run.code == 0
    rec.called("Instances", paths, None)
    rec.called("Instances.get", "q4")
    rec.called("Instances.rendered", "q4")
    assert run.out.startswith(f"# {paths.config / 'instances' / 'q4.toml'}\n{SPEC.to_toml()}")
    assert f"# {paths.units / 'llama@q4.service.d/50-nativellm.conf'}\n" in run.out
    assert "ExecStart=/var/lib/nativellm/current/bin/llama-server" in run.out
    assert "100%%.gguf" in run.out  # printed as it is, no markup or emoji processing
    run = cli("instance", "show", "q4", "--json")
    assert run.json() == {
        "schema": "nativellm.instance/1",
        "spec": jsonable(SPEC.to_dict()),
        "units": UNIT_TEXTS,
    }


LIFECYCLE = [
    ("start", "Instances.start", ("q4",)),
    ("stop", "Instances.stop", ("q4",)),
    ("restart", "Instances.restart", ("q4",)),
    ("enable", "Instances.set_enabled", ("q4", True)),
    ("disable", "Instances.set_enabled", ("q4", False)),
]


@covers("start", "stop", "restart", "enable", "disable")
@pytest.mark.parametrize(("command", "method", "args"), LIFECYCLE)
def test_lifecycle_commands(
    cli: Cli,
    rec: Recorder,
    paths: Paths,
    system_paths: Paths,
    command: str,
    method: str,
    args: tuple[Any, ...],
) -> None:
    outcome = Outcome("q4", True, LIFECYCLE_MESSAGES[command], SPEC, restarted=command == "restart")
    # the CLI looks all of them up before it calls one
    rec.cls(instances_mod, "Instances", **dict.fromkeys(("start", "stop", "restart", "set_enabled"), outcome))
    run = cli(command, "q4")
    assert run.code == 0 and run.out == LIFECYCLE_MESSAGES[command] + "\n"
    rec.called("Instances", paths, FakeSystemd(Scope.USER))
    rec.called(method, *args)

    rec.calls.clear()
    run = cli(command, "q4", "--system", "--json")
    rec.called("Instances", system_paths, FakeSystemd(Scope.SYSTEM))
    assert run.json() == envelope(command, True, {
        "name": "q4", "message": LIFECYCLE_MESSAGES[command], "files": [], "restarted": command == "restart",
        "warnings": [], "spec": jsonable(SPEC.to_dict()),
    })  # fmt: skip


@covers("status")
def test_status(cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths) -> None:
    _instances(rec, paths, None)
    run = cli("status")
    assert run.code == 0
    rec.called("Instances", paths, FakeSystemd(Scope.USER))
    rec.called("Instances.status", None)
    q4_row = next(line for line in run.out.splitlines() if line.startswith("q4 "))
    assert q4_row.split()[:4] == ["q4", "active/running", "4242", "-"]
    assert "41.7" in q4_row and "12%" in q4_row and "700 MiB" in q4_row
    assert f"coder: {STATUSES[1].error_line}" in run.out.splitlines()

    rec.calls.clear()
    run = cli("status", "q4", "--system", "--json")
    rec.called("Instances", system_paths, FakeSystemd(Scope.SYSTEM))
    rec.called("Instances.status", "q4")
    assert run.json() == {
        "schema": "nativellm.status/1",
        "instances": jsonable([s.to_dict() for s in STATUSES]),
    }


@covers("logs", checks_json=False)
def test_logs_execs_journalctl(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _exec(rec, paths, None)
    run = cli("logs", "q4", "-f", "-n", "200")
    assert run.code == 0 and run.out == "" and run.err == ""
    assert rec.calls == [
        Call("Instances", (paths, None), {}),
        Call("Instances.journal_argv", ("q4",), {"follow": True, "lines": 200}),
        Call("exec_replace", (JOURNAL_ARGV,), {}),
    ]
    rec.calls.clear()
    assert cli("logs", "q4").code == 0
    assert rec.calls[1] == Call("Instances.journal_argv", ("q4",), {"follow": False, "lines": 50})


@covers("run", checks_json=False)
def test_run_execs_the_server_in_the_foreground(cli: Cli, rec: Recorder, system_paths: Paths) -> None:
    _run(rec, system_paths, None)
    run = cli("run", "q4", "--system")
    assert run.code == 0 and run.out == ""
    assert rec.calls == [
        Call("Instances", (system_paths, None), {}),
        Call("Instances.foreground_argv", ("q4",), {}),
        Call("Instances.foreground_env", ("q4",), {}),
        Call("exec_replace", (SERVER_ARGV,), {}),
    ]


# =============================================================================== success: fleet
@covers("pack")
def test_pack(cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths) -> None:
    res = pack_outcome(Path("/srv/artifacts"))
    rec.fn(artifacts_mod, "pack", res)
    run = cli("pack")
    assert run.code == 0
    rec.called("pack", paths, PackOptions(None, None, "auto"))
    assert run.out.splitlines() == [
        f"packed {NEW_ID} -> {res.path} (123.5 MB)",
        f"needs: {res.meta['requirements_text']}",
        f"sha256 {res.sha256}  {res.path.name}",
    ]
    rec.calls.clear()
    run = cli("pack", NEW_ID, "-o", "/srv/artifacts", "--compression", "gz", "--sign-key", "/srv/k", "--system",
              "--json")  # fmt: skip
    rec.called("pack", system_paths, PackOptions(NEW_ID, Path("/srv/artifacts"), "gz", Path("/srv/k")))
    assert run.json() == envelope("pack", True, {
        "build_id": NEW_ID, "file": str(res.path), "sha256": res.sha256, "size": 123_456_789,
        "variant": res.meta["variant"], "fingerprint": res.meta["fingerprint"],
        "requirements": res.meta["requirements"], "duration_s": 8.91, "signed_by": None,
    })  # fmt: skip


@covers("pack")
def test_pack_single_binary(cli: Cli, rec: Recorder, paths: Paths) -> None:
    res = pack_outcome(Path("/srv/scp"))
    single = {
        "file": "llama-server",
        "sha256": sha("server"),
        "size": 9_876_543,
        "needed": ["libm.so.6", "libc.so.6"],
    }
    res = dataclasses.replace(res, path=Path(f"/srv/scp/llama-server-{NEW_ID}-x86_64-avx.tar.gz"),
                              meta={**res.meta, "single_binary": single})  # fmt: skip
    rec.fn(single_mod, "pack_single_binary", res)
    run = cli("pack", "--single-binary", "-o", "/srv/scp")
    assert run.code == 0
    rec.called("pack_single_binary", paths, PackOptions(None, Path("/srv/scp"), "auto"))
    assert run.out.splitlines() == [
        f"packed {NEW_ID} -> {res.path} (123.5 MB)",
        f"needs: {res.meta['requirements_text']}",
        "llama-server (9.9 MB) links only libm.so.6, libc.so.6",
        f"sha256 {res.sha256}  {res.path.name}",
    ]
    rec.calls.clear()
    run = cli("pack", NEW_ID, "--single-binary", "--json")
    rec.called("pack_single_binary", paths, PackOptions(NEW_ID, None, "auto"))
    assert run.json() == envelope("pack", True, {
        "build_id": NEW_ID, "file": str(res.path), "sha256": res.sha256, "size": 123_456_789,
        "variant": res.meta["variant"], "fingerprint": res.meta["fingerprint"],
        "requirements": res.meta["requirements"], "duration_s": 8.91, "signed_by": None, "single_binary": single,
    })  # fmt: skip


@covers("install-artifact")
def test_install_artifact(cli: Cli, rec: Recorder, paths: Paths) -> None:
    url = f"https://artifacts.example.org/nativellm-{NEW_ID}-x86_64.tar.gz"
    rec.fn(artifacts_mod, "install_artifact", install_outcome(paths, activated=False))
    run = cli("install-artifact", url, "--sha256", sha("artifact"), "--profile", SPR_FILE, "--no-activate",
              "--insecure-unsigned")  # fmt: skip
    assert run.code == 0
    rec.called("install_artifact", paths, InstallOptions(url, sha("artifact"), SPR_FILE, False, insecure_unsigned=True),
               Like(ConsoleReporter, quiet=False))  # fmt: skip
    assert run.out.splitlines() == list(install_outcome(paths, activated=False).notes)  # no "current ->"

    _install_artifact(rec, paths, None)
    rec.calls.clear()
    run = cli("install-artifact", url, "--json")
    rec.called("install_artifact", paths, InstallOptions(url), Like(ConsoleReporter, quiet=True))
    res = install_outcome(paths, activated=True)
    assert run.json() == envelope("install-artifact", True, {
        "build_id": NEW_ID, "installed": True, "activated": True, "sha256": sha("artifact"),
        "requirements": jsonable(res.requirements.to_dict()), "smoke_test": jsonable(res.smoke_test),
        "path": str(paths.builds / NEW_ID), "duration_s": 21.46, "notes": list(res.notes), "signed_by": None,
    })  # fmt: skip
    run = cli("install-artifact", url)
    assert run.out.splitlines()[-1] == f"current -> {NEW_ID}"


@covers("fingerprint")
def test_fingerprint(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _fingerprint(rec, paths, None)
    fp = fingerprint(H100)
    run = cli("fingerprint")
    assert run.code == 0 and run.out == f"{fp.key}\n"
    assert rec.calls == [Call("detect_host", (), {}), Call("fingerprint", (H100,), {})]

    rec.calls.clear()
    run = cli("fingerprint", "--profile", SPR_FILE, "--json")
    assert rec.calls == [Call("fingerprint", (load_profile(SPR_FILE),), {})]
    assert run.json() == jsonable(fp.to_dict()) and run.json()["schema"] == "nativellm.fingerprint/1"


@covers("artifacts index")
def test_artifacts_index(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _index(rec, paths, None)
    res = index_outcome(Path("/srv/artifacts"))
    run = cli("artifacts", "index", "/srv/artifacts")
    assert run.code == 0
    rec.called("write_index", Path("/srv/artifacts"), None)
    entry = res.entries[0]
    assert run.out.splitlines() == [
        "wrote /srv/artifacts/index.json (1 artifact(s))",
        f"  {entry['fingerprint']}  b7100  {entry['file']}",
    ]
    run = cli("artifacts", "index", "/srv/artifacts", "--json")
    assert run.json() == envelope("artifacts index", True, {
        "index": "/srv/artifacts/index.json", "artifacts": jsonable(list(res.entries)), "signed_by": None,
    })  # fmt: skip


@covers("artifacts keygen")
def test_artifacts_keygen(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _keygen(rec, paths, None)
    run = cli("artifacts", "keygen", "/srv/k")
    assert run.code == 0
    rec.called("generate_key", Path("/srv/k"), "nativellm")
    assert run.out.splitlines() == [
        "wrote /srv/k (private, 0600) and /srv/k.pub",
        "key id SHA256:abc",
        "hosts trust it with this line in /etc/nativellm/trusted-keys (or <config>/trusted-keys):",
        "ssh-ed25519 AAAA fleet",
    ]
    rec.calls.clear()
    run = cli("artifacts", "keygen", "/srv/k", "--comment", "fleet", "--json")
    rec.called("generate_key", Path("/srv/k"), "fleet")
    assert run.json() == envelope("artifacts keygen", True, {
        "private_key": "/srv/k", "public_key": "/srv/k.pub", "key_id": "SHA256:abc",
        "public_line": "ssh-ed25519 AAAA fleet",
    })  # fmt: skip


@covers("upgrade")
def test_upgrade_builds_a_ref_and_moves_named_instances(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _upgrade(rec, paths, None)
    run = cli("upgrade", "--ref", "b7100", "--repo", OTHER_REPO, "--instances", "q4, coder")
    assert run.code == 0
    build = BuildOptions(source=SourceRequest(ref="b7100", repo=OTHER_REPO))
    rec.called("upgrade", paths, UpgradeOptions(build, None, None, ("q4", "coder"), None),
               FakeSystemd(Scope.USER), Like(ConsoleReporter, quiet=False))  # fmt: skip
    assert run.out.splitlines() == [
        "q4: upgraded in 14.2s (health ok, completion ok)",
        "coder: upgraded in 31.5s",
        f"pinned: skipped (pinned to build {OLDEST_ID})",
        f"current: {OLD_ID} -> {NEW_ID}",
        f"built {NEW_ID}",
    ]


@covers("upgrade")
def test_upgrade_installs_an_artifact_on_a_canary_json(cli: Cli, rec: Recorder, system_paths: Paths) -> None:
    _upgrade(rec, system_paths, None)
    run = cli(
        "upgrade", "--artifact", "/srv/a.tar.gz", "--sha256", sha("a"), "--canary", "q4", "--insecure-unsigned",
        "--system", "--json",
    )  # fmt: skip
    assert run.code == 0
    rec.called("upgrade", system_paths, UpgradeOptions(None, "/srv/a.tar.gz", sha("a"), None, "q4", True),
               FakeSystemd(Scope.SYSTEM), Like(ConsoleReporter, quiet=True))  # fmt: skip
    assert run.json() == envelope("upgrade", True, jsonable(upgrade_outcome().to_dict()))

    rec.calls.clear()
    tarball = "https://example.org/llama.cpp-b7100.tar.gz"
    assert cli("upgrade", "--tarball", tarball, "--sha256", sha("t")).code == 0
    build = BuildOptions(source=SourceRequest(tarball=tarball, sha256=sha("t")))
    # with --tarball, --sha256 checks the source; UpgradeOptions.sha256 is the artifact's
    assert rec.one("upgrade").args[1] == UpgradeOptions(build, None, None, None, None)
    rec.calls.clear()
    assert cli("upgrade").code == 0
    assert rec.one("upgrade").args[1] == UpgradeOptions()  # the current source again


@covers("upgrade")
def test_upgrade_that_rolled_back_fails_with_one_document(cli: Cli, rec: Recorder, paths: Paths) -> None:
    res = upgrade_outcome(rolled_back=True)
    rec.fn(upgrade_mod, "upgrade", res)
    message = f"q4 failed on {NEW_ID}: /health did not answer within 60s; rolled back to {OLD_ID}"
    hint = "the instances serve on the old build again; see `nativellm logs NAME` for the failing server's output"
    run = cli("upgrade", "--canary", "q4")
    assert run.code == 16
    assert run.out.splitlines() == [
        "q4: failed in 60.0s (/health did not answer within 60s)",
        "q4: rolled back in 9.8s",
    ]
    assert run.err_lines == [f"error: {message}", f"  hint: {hint}"]

    run = cli("upgrade", "--canary", "q4", "--json")
    assert run.code == 16
    expected = error_envelope("upgrade", upgrade_mod.UpgradeError(message, hint))
    assert run.json() == expected | {"changed": True, "data": jsonable(res.to_dict())}
    assert run.err_lines == [f"error: {message}", f"  hint: {hint}"]


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["--ref", "b7100", "--artifact", "/srv/a.tar.gz"], "--ref, --source, --tarball and --artifact exclude each other",
         "give one new version"),
        (["--ref", "b7100", "--sha256", "ab"], "--sha256 only applies to --tarball or --artifact", "drop --sha256"),
        (["--canary", "q4", "--instances", "q4,coder"], "--canary and --instances exclude each other",
         "give one of them"),
    ],
)  # fmt: skip
def test_upgrade_usage(
    cli: Cli, rec: Recorder, paths: Paths, argv: list[str], message: str, hint: str
) -> None:
    _upgrade(rec, paths, None)
    assert_usage_error(cli("upgrade", *argv), message, hint)
    assert "upgrade" not in rec.labels


@covers("instance add-rpc-worker")
def test_add_rpc_worker_on_the_lan(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _rpc(rec, paths, None)
    argv = ["instance", "add-rpc-worker", "gpu1", "--port", "50052", "--host", "10.0.0.5",
            "--allow", "10.0.0.2, 10.0.0.3", "--gpus", "0,1", "--threads", "8", "--build", NEW_ID, "--start"]  # fmt: skip
    run = cli(*argv)
    assert run.code == 0
    rec.called("RpcWorkers", paths, FakeSystemd(Scope.USER))
    rec.called("RpcWorkers.add", RPC_SPEC, start=True)
    assert run.out == "RPC worker gpu1 added: llama-rpc@gpu1.service on 10.0.0.5:50052, listening\n"
    assert run.err == f"warning: {RPC_WARNING}\n"

    run = cli(*argv, "--json")
    res = rpc_outcome(paths)
    assert run.json() == envelope("instance add-rpc-worker", True, {
        "name": "gpu1", "message": res.message, "files": list(res.files), "started": True,
        "endpoint": "10.0.0.5:50052", "warnings": [RPC_WARNING],
    })  # fmt: skip
    assert run.err == f"warning: {RPC_WARNING}\n"  # also under --json, on stderr


@covers("instance add-rpc-worker")
def test_add_rpc_worker_defaults_to_loopback(cli: Cli, rec: Recorder, paths: Paths) -> None:
    spec = RpcWorkerSpec("gpu1", 50052)
    rec.cls(rpc_mod, "RpcWorkers", add=rpc_outcome(paths, spec))
    run = cli("instance", "add-rpc-worker", "gpu1", "--port", "50052", "--no-systemd", "--json")
    assert run.code == 0 and run.err == ""
    rec.called("RpcWorkers", paths, None)
    rec.called(
        "RpcWorkers.add", RpcWorkerSpec("gpu1", 50052, "127.0.0.1", None, (), None, "current"), start=False
    )
    assert run.json()["data"]["endpoint"] == "127.0.0.1:50052" and run.json()["data"]["warnings"] == []


@covers("instance rm-rpc-worker")
def test_rm_rpc_worker(cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths) -> None:
    _rpc(rec, paths, None)
    run = cli("instance", "rm-rpc-worker", "gpu1", "--system")
    assert run.code == 0 and run.out == "RPC worker gpu1 removed\n"
    rec.called("RpcWorkers", system_paths, FakeSystemd(Scope.SYSTEM))
    rec.called("RpcWorkers.remove", "gpu1")
    rec.calls.clear()
    run = cli("instance", "rm-rpc-worker", "gpu1", "--no-systemd", "--json")
    rec.called("RpcWorkers", paths, None)
    assert run.json() == envelope(
        "instance rm-rpc-worker", True, {"name": "gpu1", "files": list(rpc_outcome(paths).files)}
    )


# =============================================================================== success: bench, doctor
@covers("bench")
def test_bench_builds(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _bench(rec, paths, None)
    run = cli(
        "bench", "builds", OLD_ID, NEW_ID, "--model", "qwen2.5-0.5b", "-r", "2", "--pp", "128", "--tg", "32"
    )
    assert run.code == 0
    rec.called("bench_store_builds", paths, [OLD_ID, NEW_ID], "qwen2.5-0.5b", repetitions=2, n_prompt=128,
               n_gen=32, on_round=AnyCallable())  # fmt: skip
    assert run.err_lines == [f"  round 1/2: {OLD_ID}", f"  round 2/2: {NEW_ID}"]
    assert "crashed (SIGILL)" in run.out and "1.12x (1.12 / 1.12 / 1.12)" in run.out

    rec.calls.clear()
    run = cli("bench", "builds", "--json")
    rec.called(
        "bench_store_builds", paths, [], None, repetitions=3, n_prompt=256, n_gen=64, on_round=AnyCallable()
    )
    assert run.err == ""  # no round lines under --json
    assert run.json() == jsonable(builds_report().to_dict())
    assert run.json()["schema"] == "nativellm.bench-builds/1"


@covers("bench")
def test_bench_an_instance(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _bench(rec, paths, None)
    run = cli("bench", "q4", "--concurrency", "1, 2", "--prompt-tokens", "64", "--max-tokens", "32",
              "--requests", "4", "--duration", "30")  # fmt: skip
    assert run.code == 0 and run.err == ""
    rec.called("instance_endpoint", paths, "q4")
    rec.called("run_load", "http://127.0.0.1:8080", concurrency=[1, 2], prompt_tokens=64, max_tokens=32,
               requests=4, duration=30.0, api_key="sk-local-0123",
               target="instance 'q4' at http://127.0.0.1:8080")  # fmt: skip
    assert "cold first request: 2.10s (ttft 0.84s)" in run.out

    run = cli("bench", "q4", "--json")
    assert run.json() == {
        "schema": "nativellm.bench/1",
        **jsonable(load_report("http://127.0.0.1:8080").to_dict()),
    }


@covers("bench")
def test_bench_a_url_warns_when_it_is_not_loopback(cli: Cli, rec: Recorder, paths: Paths) -> None:
    _bench(rec, paths, None)
    run = cli("bench", "q4", "--url", "http://10.0.0.9:8080")
    assert run.code == 0
    assert "instance_endpoint" not in rec.labels
    rec.called("run_load", "http://10.0.0.9:8080", concurrency=[1, 4, 8], prompt_tokens=128, max_tokens=64,
               requests=16, duration=120, api_key=None, target="http://10.0.0.9:8080")  # fmt: skip
    assert run.err == "warning: http://10.0.0.9:8080 is not a loopback address; this sends real load to it\n"
    rec.calls.clear()
    assert_usage_error(cli("bench", "q4", "--url", "ftp://127.0.0.1/"),
                       "--url 'ftp://127.0.0.1/' is not an http:// or https:// URL",
                       "give llama-server's base URL, e.g. http://127.0.0.1:8080")  # fmt: skip
    assert "run_load" not in rec.labels  # refused before any warning or request
    assert_usage_error(cli("bench", "q4", "--concurrency", "1,x"), "--concurrency '1,x' is not a list of integers",
                       "pass e.g. 1,4,8")  # fmt: skip


@covers("doctor")
def test_doctor_all_ok(cli: Cli, rec: Recorder, paths: Paths, system_paths: Paths) -> None:
    _doctor(rec, paths, None)
    run = cli("doctor")
    assert run.code == 0 and run.err == ""
    rec.called("doctor_all", paths)
    assert run.out.splitlines()[0] == f"ok   store    3 builds; current {NEW_ID} passed its smoke test"
    rec.calls.clear()
    run = cli("doctor", "--system", "--json")
    rec.called("doctor_all", system_paths)
    assert run.json() == {
        "schema": "nativellm.doctor/1",
        "ok": True,
        "findings": [f.to_dict() for f in FINDINGS_OK],
    }


@covers("doctor")
def test_doctor_with_a_problem_exits_15_and_keeps_its_own_document(cli: Cli, rec: Recorder) -> None:
    findings = [*FINDINGS_OK, FINDING_BAD]
    rec.fn(doctor_mod, "doctor_all", findings)
    run = cli("doctor")
    assert run.code == 15
    assert run.out.splitlines()[-2:] == [
        "FAIL instance llama@coder.service failed (exit-code)",
        "              fix: read `nativellm logs coder`, then fix the spec",
    ]
    assert run.err_lines == ["error: 1 problem(s) found", "  hint: apply the fixes listed above"]

    run = cli("doctor", "--json")
    assert run.code == 15
    assert run.json() == {
        "schema": "nativellm.doctor/1",
        "ok": False,
        "findings": [f.to_dict() for f in findings],
    }
    assert run.err_lines == ["error: 1 problem(s) found", "  hint: apply the fixes listed above"]


# --------------------------------------------------------------------------- router lifecycle
ROUTER = InstanceSpec(name="multi", model="", port=8090, models=("q4", "q8", "chat"), models_max=2)


def _router_result(action: str) -> Any:
    from nativellm.client import ModelState
    from nativellm.serve.router import LifecycleResult

    states = (ModelState("q4", "unloaded"), ModelState("q8", "loaded"), ModelState("chat", "loaded"))
    return LifecycleResult("multi", action, states, 1.25, 0.5 if action != "unload" else None)


@covers("model load", "model unload", "model swap")
@pytest.mark.parametrize(
    ("argv", "method", "args", "kwargs", "said"),
    [
        (("model", "load", "q8", "--on", "multi"), "load", ("q8",),
         {"force": False, "warmup": None, "timeout": 300}, "loaded q8 on multi in 1.25 s, warm-up 0.50 s"),
        (("model", "load", "q8", "--on", "multi", "--force", "--no-warmup", "--timeout", "30"), "load", ("q8",),
         {"force": True, "warmup": False, "timeout": 30}, "loaded q8 on multi"),
        (("model", "unload", "q4", "--on", "multi"), "unload", ("q4",), {"timeout": 300},
         "unloaded q4 on multi in 1.25 s; now: q4 unloaded, q8 loaded, chat loaded"),
        (("model", "swap", "q4", "q8", "--on", "multi"), "swap", ("q4", "q8"),
         {"force": False, "warmup": None, "timeout": 300}, "swapped q4 for q8 on multi"),
    ],
)  # fmt: skip
def test_router_model_lifecycle(
    cli: Cli, rec: Recorder, paths: Paths, argv: tuple[str, ...], method: str, args: tuple[Any, ...],
    kwargs: dict[str, Any], said: str,
) -> None:  # fmt: skip
    from nativellm.serve import router as router_mod

    result = _router_result(method)
    rec.cls(instances_mod, "Instances", get=ROUTER)
    rec.cls(router_mod, "RouterOps", load=result, unload=result, swap=result)
    run = cli(*argv)
    assert run.code == 0, run.err
    assert said in run.out
    rec.called("Instances.get", "multi")
    rec.called(f"RouterOps.{method}", *args, **kwargs)
    assert rec.one("RouterOps").args == (ROUTER,)

    rec.calls.clear()
    run = cli(*argv, "--json")
    assert run.json() == envelope(f"model {method}", True, jsonable(result.to_dict()))


def test_router_lifecycle_errors_are_one_line(cli: Cli, rec: Recorder) -> None:
    from nativellm.serve import router as router_mod

    rec.cls(instances_mod, "Instances", get=ROUTER)
    rec.cls(
        router_mod, "RouterOps", load=NotFoundError("model 'x' is not one of router multi's models", "add it")
    )
    run = cli("model", "load", "x", "--on", "multi")
    assert run.code == 3 and run.err_lines == [
        "error: model 'x' is not one of router multi's models",
        "  hint: add it",
    ]


def _router(r: Recorder, p: Paths, fail: Fail) -> None:
    from nativellm.serve import router as router_mod

    r.cls(instances_mod, "Instances", get=ROUTER)
    r.cls(router_mod, "RouterOps", load=fail, unload=fail, swap=fail)


# =============================================================================== errors, per command
@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # after the command path
    install: Callable[[Recorder, Paths, Fail], None]
    error: NativeLLMError


NO_INSTANCE = NotFoundError("no instance named 'q4'", "see `nativellm instance list`")
CASES: dict[str, Case] = {
    "detect": Case((), _detect, ResourceError("cannot read /proc/cpuinfo: permission denied", "check /proc is mounted")),
    "plan": Case(("--backend", "cuda"), _plan, PlanError(
        "sm_120 needs CUDA 12.8 or newer; this host has CUDA 12.4", "install CUDA 12.8+, or plan --backend vulkan")),
    "build": Case(("--auto",), _build, BuildError(
        "compiling llama.cpp failed; the log is /srv/work/build.log", "read the log; the previous build stays current")),
    "builds list": Case((), _store, StoreError("the build store is locked by pid 4242", "wait for that build")),
    "builds use": Case(("cuda-8d41",), _use, NotFoundError(
        "no build 'cuda-8d41' in /srv/builds", "list builds with `nativellm builds list`")),
    "builds rollback": Case((), _rollback, StoreError(
        "there is no previous build to roll back to", "build or install another one first")),
    "builds rm": Case((NEW_ID,), _store, StoreError(
        f"{NEW_ID} is current; it cannot be removed", "make another build current first")),
    "builds gc": Case((), _store, ResourceError("the build store is locked by pid 4242", "wait for that build")),
    "model add": Case(("/srv/models/x.gguf",), _model_add, ModelError(
        "/srv/models/x.gguf is not a GGUF file (bad magic)", "pass a .gguf model file")),
    "model pull": Case(("hf:Qwen/missing:Q4_K_M",), _model_pull, DownloadError(
        "https://huggingface.co/api/models/Qwen/missing: HTTP 404", "check the repository name")),
    "model import-ollama": Case(("llama3.2:3b",), _import_ollama, NotFoundError(
        "no Ollama model 'llama3.2:3b'", "pull it first: `ollama pull llama3.2:3b`")),
    "model list": Case((), _model_list, ModelError(
        "the model index /srv/models/index.json is unreadable: Expecting value", "restore or remove it")),
    "model inspect": Case(("nope",), _model_inspect, NotFoundError(
        "no model named 'nope'", "see the registered models with `nativellm model list`")),
    "model verify": Case(("qwen2.5-0.5b",), _model_verify, ModelError(
        "model 'qwen2.5-0.5b': its file changed", "pull or add it again (`nativellm model rm qwen2.5-0.5b` first)")),
    "model rm": Case(("qwen2.5-0.5b",), _model_rm, ModelError(
        "model 'qwen2.5-0.5b' is used by instance(s) q4", "remove those instances first, or pass --force")),
    "model demo": Case((), _model_demo, NotFoundError(
        "no llama.cpp vocab file found for the demo model", "pass --vocab with a llama.cpp source tree")),
    "model fit": Case(("nope",), _model_fit, NotFoundError(
        "no model named 'nope'", "see the registered models with `nativellm model list`")),
    "instance add": Case(("q4", "--model", "demo"), _instances, InstanceError(
        "port 8080 is used by instance coder", "pick another --port")),
    "instance edit": Case(("q4", "--ctx", "4096"), _instances, NO_INSTANCE),
    "instance rm": Case(("q4",), _instances, NO_INSTANCE),
    "instance list": Case((), _instances, InstanceError(
        "/srv/config/instances/q4.toml is not valid TOML: line 3", "fix or remove that file")),
    "instance show": Case(("q4",), _instances, NO_INSTANCE),
    "start": Case(("q4",), _instances, InstanceError(
        "llama@q4.service failed: llama_model_load: error loading model", "see `nativellm logs q4`")),
    "stop": Case(("q4",), _instances, NO_INSTANCE),
    "restart": Case(("q4",), _instances, InstanceError(
        "no systemd user bus at /run/user/1000/bus: is systemd running here?",
        "run the instance in the foreground instead: `nativellm run NAME`")),
    "enable": Case(("q4",), _instances, NO_INSTANCE),
    "disable": Case(("q4",), _instances, NO_INSTANCE),
    "status": Case((), _instances, InstanceError(
        "no systemd user bus at /run/user/1000/bus: is systemd running here?",
        "run the instance in the foreground instead: `nativellm run NAME`")),
    "logs": Case(("q4",), _exec, ToolchainError("journalctl is not installed", "install journalctl and retry")),
    "run": Case(("q4",), _run, NO_INSTANCE),
    "pack": Case((), _pack, NotFoundError("there is no current build", "build one with `nativellm build --auto`")),
    "install-artifact": Case(("/srv/a.tar.gz",), _install_artifact, ArtifactError(
        "the artifact needs avx512f, which this host lacks", "build on this host instead: `nativellm build --auto`")),
    "fingerprint": Case(("--profile", str(SPR_FILE)), _fingerprint, UsageError(
        f"{SPR_FILE} is not a nativellm.host/1 profile", "write one with `nativellm detect --json`")),
    "artifacts index": Case(("/srv/nothing",), _index, NotFoundError(
        "/srv/nothing is not a directory", "pass the directory that holds the artifacts")),
    "artifacts keygen": Case(("/srv/k",), _keygen, UsageError(
        "/srv/k already exists", "choose another path; keygen never overwrites a key")),
    "upgrade": Case(("--ref", "b9999"), _upgrade, SourceError(
        "llama.cpp ref b9999 was not found in https://github.com/ggml-org/llama.cpp", "check --ref")),
    "instance add-rpc-worker": Case(("gpu1", "--port", "50052"), _rpc, InstanceError(
        f"build {NEW_ID} has no rpc-server", "build one with `nativellm build --rpc`")),
    "instance rm-rpc-worker": Case(("gpu1",), _rpc, NotFoundError(
        "no RPC worker named 'gpu1'", "see `nativellm instance list`")),
    "bench": Case(("q4",), _bench, NotFoundError(
        "no instance named 'q4'", "see `nativellm instance list`, or pass --url")),
    "doctor": Case((), _doctor, ResourceError("the store at /srv is unreadable", "run doctor as its owner")),
    "model load": Case(("q8", "--on", "multi"), _router, ModelError(
        "loading q8 on multi needs about 8.10 GiB of RAM, but 3.20 GiB is available now; nothing was sent to "
        "the router", "unload a model first (`nativellm model unload NAME --on multi`), lower its ctx-size, "
        "or pass --force")),
    "model unload": Case(("q4", "--on", "multi"), _router, InstanceError(
        "model q4 is not loaded on multi", "see `nativellm status multi` for what is loaded")),
    "model swap": Case(("q4", "q8", "--on", "multi"), _router, InstanceError(
        "model q8 is already loaded on multi", "nothing to swap")),
}  # fmt: skip


# The MLX engine's runtime (issue 17)
def _mlx_runtime() -> Any:
    from nativellm.mlx.runtime import RuntimeRecord

    return RuntimeRecord(id="mlx0.32.4-lm0.32.2-py311-0123456789", path=Path("/srv/rt/mlx0.32.4"),
                         created="2026-11-29T21:00:00+00:00", python_version="3.11",
                         requirements=("mlx[cpu]==0.32.4", "mlx-lm==0.32.2"), versions={"mlx": "0.32.4"},
                         smoke={"passed": True, "tokens": 8, "seconds": 1.1})  # fmt: skip


def _mlx(r: Recorder, p: Paths, fail: Fail) -> None:
    from nativellm.mlx import runtime as runtime_mod

    r.fn(runtime_mod, "install_runtime", fail or (_mlx_runtime(), True))
    r.cls(runtime_mod, "Runtimes", rollback=fail or _mlx_runtime(), installed=fail or [_mlx_runtime()],
          current_id=_mlx_runtime().id)  # fmt: skip


CASES.update({
    "mlx install": Case(("--offline-wheels", "/srv/none"), _mlx, NotFoundError(
        "--offline-wheels /srv/none is not a directory", "give a directory of wheels")),
    "mlx list": Case((), _mlx, StoreError("the runtimes dir is unreadable", "check its permissions")),
    "mlx rollback": Case((), _mlx, StoreError(
        "there is no earlier MLX runtime to roll back to", "see `nativellm mlx list`; nothing was changed")),
})  # fmt: skip

ERROR_RUNS = [
    pytest.param(command, json_out, id=f"{command}{' --json' if json_out else ''}")
    for command in sorted(CASES)
    for json_out in (False, True)
    if not json_out or command in JSON_COMMANDS
]


@pytest.mark.parametrize(("command", "json_out"), ERROR_RUNS)
def test_a_typed_error_gives_its_exit_code_one_error_line_and_a_hint(
    cli: Cli, rec: Recorder, paths: Paths, command: str, json_out: bool
) -> None:
    case = CASES[command]
    case.install(rec, paths, case.error)
    words = command.split()
    run = cli(*words, *(["--json"] if json_out else []), *case.argv)
    assert run.code == case.error.exit_code
    assert run.err_lines == [f"error: {case.error.message}", f"  hint: {case.error.hint}"]
    if json_out:
        assert run.json() == error_envelope(command, case.error)
    else:
        assert run.out == ""
    assert rec.calls, "the use case was never called"


# =============================================================================== the entry point
def test_every_command_has_in_process_tests() -> None:
    assert {"build", "builds use", "model fit", "instance add", "start", "artifacts index"} <= set(COMMANDS)
    assert sorted(set(COMMANDS) - SUCCESS) == [], "commands without a success test"
    assert sorted(set(COMMANDS) - set(CASES)) == [], "commands without an entry in CASES (typed-error test)"
    assert sorted(JSON_COMMANDS - JSON_CHECKED) == [], "--json commands whose document no test checks"
    assert sorted((SUCCESS | set(CASES)) - set(COMMANDS)) == [], "tests for commands that no longer exist"


def test_version(cli: Cli) -> None:
    run = cli("--version")
    assert run.code == 0 and run.out == f"nativellm {__version__}\n"


@pytest.mark.parametrize("json_out", [False, True])
def test_ctrl_c_in_a_use_case_exits_130(cli: Cli, rec: Recorder, json_out: bool) -> None:
    rec.fn(pipeline_mod, "build_llama", KeyboardInterrupt())
    run = cli("build", *(["--json"] if json_out else []))
    assert run.code == 130
    assert run.err_lines[-2:] == ["error: interrupted; nothing was changed", "  hint: run the command again"]
    if json_out:
        assert run.json()["error"] == {"kind": "interrupted", "message": "interrupted; nothing was changed",
                                       "hint": "run the command again", "exit_code": 130}  # fmt: skip


def test_an_unexpected_exception_is_one_line_without_a_traceback(cli: Cli, rec: Recorder) -> None:
    rec.fn(pipeline_mod, "build_llama", RuntimeError("boom [bold]"))
    run = cli("build")
    assert run.code == 1
    assert run.err_lines == [
        "error: internal error: RuntimeError: boom [bold]",
        "  hint: rerun with --debug and report the traceback",
    ]


def test_debug_shows_the_traceback(cli: Cli, rec: Recorder) -> None:
    rec.fn(pipeline_mod, "build_llama", BuildError("compile failed", "read the log"))
    run = cli("--debug", "build")
    assert run.code == 6
    assert "Traceback" in run.err and run.err_lines[-2:] == ["error: compile failed", "  hint: read the log"]

    rec.fn(pipeline_mod, "build_llama", RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        cli("--debug", "build")


# The parser's own usage errors (unknown command or option, missing argument, bad value, range) go
# through the same mapping as a typed UsageError: exit 2, one error: line, a hint naming the command's
# --help, and an error envelope under --json. typer >= 0.26 raises its vendored click's exceptions, which
# `main` once let fall through to "internal error", exit 1.
# The wording is click's (and changes between releases: check-latest.sh runs this module under the
# newest ones), so these check the shape and the words that name the mistake.
@pytest.mark.parametrize(
    ("argv", "command", "names"),
    [
        (["nosuch"], "", "'nosuch'"),
        (["builds", "use"], "builds use", "build_id"),
        (["build", "--jobs", "0"], "build", "--jobs"),
        (["model", "fit", "qwen", "--parallel", "0"], "model fit", "--parallel"),
        (["builds", "gc", "--keep", "x"], "builds gc", "--keep"),
        (["bench", "q4", "--duration", "0.5"], "bench", "--duration"),
        (["instance", "add-rpc-worker", "gpu1"], "instance add-rpc-worker", "--port"),
    ],
)
def test_parser_usage_errors_exit_2(
    cli: Cli, rec: Recorder, argv: list[str], command: str, names: str
) -> None:
    hint = f"see `{' '.join(['nativellm', *command.split()])} --help`"
    run = cli(*argv)
    assert run.code == 2
    assert len(run.err_lines) == 2 and run.err_lines[0].startswith("error: ") and names in run.err_lines[0]
    assert run.err_lines[1] == f"  hint: {hint}"
    assert rec.calls == []
    if command in JSON_COMMANDS:
        run = cli(*argv, "--json")
        assert run.code == 2
        message = run.err_lines[0].removeprefix("error: ")
        assert run.json() == error_envelope(command, UsageError(message, hint))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_option_is_a_usage_error_naming_the_command(cli: Cli, rec: Recorder, command: str) -> None:
    words = command.split()
    run = cli(*words, "--no-such-flag")
    assert run.code == 2
    assert len(run.err_lines) == 2 and run.err_lines[0].startswith("error: ")
    assert "--no-such-flag" in run.err_lines[0]
    assert run.err_lines[1] == f"  hint: see `nativellm {command} --help`"
    assert rec.calls == []
    if command in JSON_COMMANDS:
        run = cli(*words, "--json", "--no-such-flag")
        assert run.code == 2
        doc = run.json()
        assert doc["command"] == command and doc["ok"] is False and doc["error"]["kind"] == "usage"
        assert doc["error"]["exit_code"] == 2 and "--no-such-flag" in doc["error"]["message"]


@pytest.mark.parametrize("group", ["builds", "model", "instance", "artifacts"])
def test_a_group_without_a_subcommand_shows_its_help(cli: Cli, group: str) -> None:
    run = cli(group)
    assert "Commands" in run.out and "internal error" not in run.err
    assert run.code in (0, 2)  # click < 8.2 exits 0 here, later releases 2 (a usage error)
    if run.code == 2:
        assert run.err_lines[-1] == f"  hint: see `nativellm {group} --help`"


def test_a_parse_error_envelope_names_the_command_under_python_m(cli: Cli, rec: Recorder) -> None:
    cli.argv0, cli.main_package = str(Path(nativellm.__file__).parent / "__main__.py"), "nativellm"
    run = cli("builds", "use", "--json")
    assert run.code == 2
    assert run.err_lines[1] == "  hint: see `python -m nativellm builds use --help`"  # right for this start
    assert run.json()["command"] == "builds use"  # was "-m nativellm builds use"


def test_eof_on_input_is_an_interruption(cli: Cli, rec: Recorder) -> None:
    rec.fn(pipeline_mod, "build_llama", EOFError())  # click turns it into Abort
    run = cli("build")
    assert run.code == 130
    assert run.err_lines[-2:] == ["error: interrupted; nothing was changed", "  hint: run the command again"]


# =============================================================================== success: the MLX runtime (issue 17)
@covers("mlx install", "mlx list", "mlx rollback")
def test_mlx_runtime_commands(cli: Cli, rec: Recorder, paths: Paths) -> None:
    from nativellm.mlx.runtime import InstallOptions

    _mlx(rec, paths, None)
    rt = _mlx_runtime()
    run = cli("mlx", "install", "--offline-wheels", "/srv/wheels", "--mlx-lm", "0.32.1")
    assert run.code == 0
    call = rec.one("install_runtime")
    assert call.args[:2] == (
        paths,
        InstallOptions(offline_wheels=Path("/srv/wheels"), mlx_lm_version="0.32.1"),
    )
    assert run.out == f"MLX runtime {rt.id} is current (smoke test: 8 tokens in 1.1s)\n"
    run = cli("mlx", "install", "--json")
    assert run.json() == envelope("mlx install", True, {"runtime": jsonable(rt.to_dict(current=True))})
    run = cli("mlx", "list")
    assert run.code == 0 and run.out.startswith(f"* {rt.id}")
    run = cli("mlx", "list", "--json")
    assert run.json() == {"schema": "nativellm.mlx-runtimes/1", "current": rt.id,
                          "runtimes": [jsonable(rt.to_dict(current=True))]}  # fmt: skip
    run = cli("mlx", "rollback")
    assert run.code == 0 and f"current MLX runtime -> {rt.id}" in run.out
    run = cli("mlx", "rollback", "--json")
    assert run.json() == envelope("mlx rollback", True, {"runtime": jsonable(rt.to_dict(current=True))})
