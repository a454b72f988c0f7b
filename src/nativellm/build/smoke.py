"""Smoke test: real inference with freshly built binaries before a build may become current.

Each weight type that takes its own CPU kernel path gets its own run: on some
VMs an F16 model works while Q4_0/Q8_0 die at once in the AMX kernels.

A GPU build on a host with its device also runs one case fully offloaded (`-ngl 99`) and
confirms from llama-server's own load log, with the same helper the unit's readiness check
runs, that the layers landed on the device: a build whose backend finds no device would
otherwise pass on the CPU.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nativellm
from nativellm import run
from nativellm.build.synth import SynthSize, write_synthetic_llama
from nativellm.client import RequestFailed, complete, free_port, wait_ready
from nativellm.hardware.profile import HostProfile

SMOKE_QUANTS = ("Q4_0", "Q8_0", "Q4_K_M")
OFFLOAD_QUANT = "Q4_0"  # the case that runs on the device in a GPU build
READY_TIMEOUT = 120.0
# A software Vulkan device compiles every compute pipeline on the CPU while loading: minutes.
OFFLOAD_READY_TIMEOUT = 600.0
# The readiness helper (stdlib only) owns the offload verdict; the smoke test runs it as the unit
# does, on the saved log, so both judge llama-server's log by one rule.
HEALTHCHECK = Path(nativellm.__file__).parent / "serve" / "healthcheck.py"


@dataclass(frozen=True)
class SmokeCase:
    quant: str
    passed: bool
    detail: str
    tokens: int = 0
    signal: str | None = None
    offload: str | None = None  # "offloaded 9/9 layers to Vulkan0 (...)" for the device case


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    cases: tuple[SmokeCase, ...]
    # How the binaries ran: "local" (built here), or for an artifact "systemd" (a transient
    # DynamicUser unit), "namespaces" (uid 65534 in its own namespaces) or "none" (unconfined).
    confinement: str = "local"
    uid: int | None = None  # the uid the binaries ran as, where confined

    @property
    def crashed(self) -> bool:
        return any(c.signal for c in self.cases)

    def summary(self) -> str:
        failed = [c for c in self.cases if not c.passed]
        if not failed:
            return "passed: " + ", ".join(
                f"{c.quant} ({c.tokens} tokens{'; ' + c.offload if c.offload else ''})" for c in self.cases
            )
        return "; ".join(f"{c.quant}: {c.detail}" for c in failed)

    def to_dict(self) -> dict[str, Any]:
        cases = [{k: v for k, v in asdict(c).items() if v is not None or k != "offload"} for c in self.cases]
        doc: dict[str, Any] = {"passed": self.passed, "cases": cases}
        if self.confinement != "local":
            doc["confinement"] = self.confinement
            doc["uid"] = self.uid
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SmokeResult:
        cases = tuple(SmokeCase(**c) for c in doc.get("cases", []))
        uid = doc.get("uid")
        return cls(
            bool(doc.get("passed")) and bool(cases),
            cases,
            str(doc.get("confinement", "local")),
            int(uid) if isinstance(uid, int) else None,
        )


@dataclass(frozen=True)
class Runner:
    """How the build's own binaries are started: an argv prefix (setpriv to an unprivileged user
    inside the confinement), their environment and working directory. Empty for local builds."""

    wrap: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.wrap, *argv]


LOCAL = Runner()


@dataclass(frozen=True)
class SmokeOffload:
    """How the device case asks llama-server to use the GPU backend."""

    gpu_layers: int = 99
    env: Mapping[str, str] | None = None  # e.g. GGML_VK_VISIBLE_DEVICES for a software device
    device: str = ""
    backend: str = ""  # the build's backend: which device nodes a confined run must be let open


def plan_smoke_offload(backend: str, host: HostProfile) -> SmokeOffload | None:
    """The device case for a build of `backend` smoke-tested on `host`, or None (a CPU build, or
    no device of that backend here: then only the CPU cases run). Pure."""
    if backend == "vulkan":
        gpus = [g for g in host.gpus if g.vendor in ("nvidia", "amd", "intel")]
        if gpus:
            return SmokeOffload(device=f"GPU {gpus[0].index} {gpus[0].name}", backend=backend)
        if host.software_gpus:
            # ggml-vulkan skips CPU-type devices unless this names them.
            dev = host.software_gpus[0]
            return SmokeOffload(
                env={"GGML_VK_VISIBLE_DEVICES": str(dev.index)}, device=dev.name, backend=backend
            )
        return None
    vendor = {"cuda": "nvidia", "hip": "amd"}.get(backend)
    gpus = list(host.gpus_of(vendor)) if vendor else []
    return SmokeOffload(device=f"GPU {gpus[0].index} {gpus[0].name}", backend=backend) if gpus else None


def _describe_exit(rc: int) -> tuple[str, str | None]:
    return run.describe_exit(rc, "llama-server"), run.signal_name(rc)


def base_model(cache: Path, vocab: Path) -> Path:
    """The F16 tiny model the quantized smoke models derive from; cached per vocab file."""
    path = cache / "smoke-tiny-f16.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        write_synthetic_llama(path, vocab, SynthSize.TINY, name="nativellm-smoke")
    return path


def quantize(
    bin_dir: Path, src: Path, dest: Path, quant: str, log: Path, runner: Runner = LOCAL
) -> SmokeCase | None:
    """Quantize with the freshly built llama-quantize; a failure is a smoke-test failure."""
    argv = runner.argv([str(bin_dir / "llama-quantize"), str(src), str(dest), quant])
    res = run.run(argv, timeout=300, env=runner.env, cwd=runner.cwd)
    with log.open("a") as f:
        f.write(
            f"$ llama-quantize {src.name} {dest.name} {quant} -> {res.returncode}\n{res.stdout[-2000:]}{res.stderr[-4000:]}\n"
        )
    if res.ok and dest.is_file():
        return None
    detail, sig = _describe_exit(res.returncode)
    return SmokeCase(quant, False, detail.replace("llama-server", "llama-quantize"), signal=sig)


def server_knows(help_text: str, flag: str) -> bool:
    """Does `llama-server --help` list this flag? Pure. Older servers lack some (--no-webui: 2025)."""
    return any(flag in line.replace(",", " ").split() for line in help_text.splitlines())


def _optional_flags(bin_dir: Path, runner: Runner = LOCAL, *, verbose_load: bool = False) -> list[str]:
    """--no-webui where this server has it: the smoke test needs no UI, and an older server refuses
    flags it does not know (llama.cpp of late 2024 exits on --no-webui). With `verbose_load`,
    --log-verbosity 4: trees from 2026 log where the layers went ("using device", "offloaded N/M
    layers to GPU") only at that level; older ones log it by default and may lack the flag."""
    res = run.probe(runner.argv([str(bin_dir / "llama-server"), "--help"]), timeout=30)
    text = (res.stdout + res.stderr) if res is not None else ""
    flags = ["--no-webui"] if server_knows(text, "--no-webui") or not text else []
    if verbose_load and server_knows(text, "--log-verbosity"):
        flags += ["--log-verbosity", "4"]
    return flags


def check_offload(server_log: Path, gpu_layers: int) -> tuple[bool, str]:
    """(passed, detail) of the readiness helper's offload verdict on a saved llama-server log."""
    argv = [sys.executable, "-I", str(HEALTHCHECK), "offload", "--gpu-layers", str(gpu_layers),
            "--log", str(server_log)]  # fmt: skip
    res = run.run(argv, timeout=60)
    detail = (res.stderr.strip().splitlines() or [f"offload check exited {res.returncode}"])[-1]
    return res.ok, detail.removeprefix("offload check failed: ")


def serve_once(
    bin_dir: Path,
    model: Path,
    quant: str,
    log: Path,
    threads: int,
    runner: Runner = LOCAL,
    offload: SmokeOffload | None = None,
    gpu_layers: int | None = None,
) -> SmokeCase:
    """One server, one completion. With `offload`, the layers go to the device and the load log
    must say so; `gpu_layers` alone pins the offload (0: CPU only, in a GPU build)."""
    port = free_port()
    layers = offload.gpu_layers if offload is not None else gpu_layers
    ngl = ["--n-gpu-layers", str(layers)] if layers is not None else []
    env = {**(runner.env or {}), **((offload.env or {}) if offload is not None else {})} or None
    ready_timeout = OFFLOAD_READY_TIMEOUT if offload is not None else READY_TIMEOUT
    argv = runner.argv([
        str(bin_dir / "llama-server"),
        "-m", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-c", "256",
        "-t", str(threads),
        "-np", "1",
        *ngl,
        *_optional_flags(bin_dir, runner, verbose_load=offload is not None),
    ])  # fmt: skip
    server_log = log.with_name(f"smoke-{quant}.log")
    proc = run.Process(argv, log_file=server_log, env=env)
    base = f"http://127.0.0.1:{port}"
    offloaded: str | None = None
    try:
        h = wait_ready(base, ready_timeout, alive=lambda: proc.poll() is None)
        if h.status != "ok":
            rc = proc.poll()
            if rc is not None:
                detail, sig = _describe_exit(rc)
                return SmokeCase(quant, False, f"{detail} while loading", signal=sig)
            return SmokeCase(quant, False, f"not ready within {ready_timeout:.0f}s ({h.status})")
        if offload is not None:
            proc.output()  # flushes
            ok, offloaded = check_offload(server_log, offload.gpu_layers)
            if not ok:
                where = f"on {offload.device}: " if offload.device else ""
                return SmokeCase(quant, False, f"{where}{offloaded}")
        try:
            data = complete(base, "The quick brown fox", n_predict=8)
        except RequestFailed as exc:
            rc = proc.poll()
            if rc is not None:
                detail, sig = _describe_exit(rc)
                return SmokeCase(quant, False, f"{detail} during inference", signal=sig)
            return SmokeCase(quant, False, f"completion failed: {exc}")
        n = int(data.get("tokens_predicted", 0))
        if n < 1:
            return SmokeCase(quant, False, "completion returned no tokens")
        return SmokeCase(quant, True, "ok", tokens=n, offload=offloaded)
    finally:
        proc.stop()
        with log.open("a") as f:
            f.write(f"--- llama-server {quant} ---\n{proc.output()[-6000:]}\n")


def smoke_test(
    bin_dir: Path,
    base: Path,
    workdir: Path,
    threads: int = 2,
    *,
    runner: Runner = LOCAL,
    logdir: Path | None = None,
    offload: SmokeOffload | None = None,
) -> SmokeResult:
    """Quantize `base` to each smoke type with the new build and serve a completion from each.

    The quantized models go to `workdir` (the binaries write there); the logs to `logdir` (default:
    workdir), which a confined run keeps out of the binaries' reach. Artifacts not built here go
    through build.confine, which calls this inside the confinement. With `offload` (a GPU build
    on a host with its device), the OFFLOAD_QUANT case runs on the device and the others pin
    `-ngl 0`, so the CPU kernels are still exercised."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = (logdir or workdir) / "smoke.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cases: list[SmokeCase] = []
    for quant in SMOKE_QUANTS:
        model = workdir / f"smoke-{quant}.gguf"
        failed = quantize(bin_dir, base, model, quant, log, runner)
        on_device = offload if quant == OFFLOAD_QUANT else None
        cpu_only = 0 if offload is not None and on_device is None else None
        cases.append(failed or serve_once(bin_dir, model, quant, log, threads, runner, on_device, cpu_only))
        model.unlink(missing_ok=True)
    return SmokeResult(all(c.passed for c in cases), tuple(cases))
