"""`nativellm doctor`: checks what breaks deployments in practice, each finding with its fix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nativellm import client, run
from nativellm.build.plan import BuildPlan
from nativellm.build.store import Store
from nativellm.errors import NativeLLMError
from nativellm.fsutil import sha256_file
from nativellm.hardware import HostProfile, detect_host
from nativellm.hardware.nvidia import parse_nvcc_version
from nativellm.models.registry import ModelRegistry, verify_model
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import template_files, unit_name
from nativellm.serve.healthcheck import OFFLOAD_FAILED
from nativellm.serve.instances import Instances, linger_enabled
from nativellm.serve.systemd import Systemd, reachable
from nativellm.versions import version_tuple

MIN_FREE_BYTES = 5 << 30  # room for one more build and a model download


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DoctorFoundProblems(NativeLLMError):
    """doctor found at least one problem (each finding names its fix)."""

    exit_code = 15
    kind = "doctor"


def check_store(store: Store) -> list[Finding]:
    out: list[Finding] = []
    current = store.current_id()
    if store.paths.current.is_symlink() and store.current() is None:
        out.append(Finding("store", False, f"`current` points at a missing build ({current})",
                           "run `nativellm builds rollback` or `nativellm builds use ID`"))  # fmt: skip
    for build_id, why in store.broken():
        out.append(Finding("store", False, f"build {build_id} is broken: {why}",
                           f"rebuild, or remove {store.paths.builds / build_id} by hand"))  # fmt: skip
    for rec in store.list_builds():
        binaries = rec.manifest.get("binaries", {})
        for rel, digest in sorted(binaries.items() if isinstance(binaries, dict) else []):
            path = rec.path / str(rel)
            if not path.is_file():
                out.append(Finding("store", False, f"build {rec.id}: {rel} is missing",
                                   f"rebuild, or `nativellm builds rm {rec.id}`"))  # fmt: skip
            elif sha256_file(path) != digest:
                out.append(Finding("store", False, f"build {rec.id}: {rel} does not match its manifest sha256",
                                   f"the file was modified; rebuild, or `nativellm builds rm {rec.id}`"))  # fmt: skip
    if not out:
        n = len(store.list_builds())
        out.append(Finding("store", True, f"{n} build(s) intact; current is {current or 'not set'}"))
    return out


def missing_libraries(ldd_output: str) -> list[str]:
    """Shared libraries that `ldd` could not find ("libcudart.so.13 => not found")."""
    return [line.split("=>")[0].strip() for line in ldd_output.splitlines() if "=> not found" in line]


def check_libraries(store: Store) -> list[Finding]:
    """The current build's executables load: every shared library they need resolves
    (a CUDA runtime removed with its toolkit, a libgomp missing on a minimal host)."""

    rec = store.current()
    if rec is None:
        return []
    missing: dict[str, list[str]] = {}
    for exe in sorted((rec.path / "bin").glob("llama-*")):
        res = run.probe(["ldd", str(exe)])
        if res is None:  # no ldd (musl, macOS): nothing to say
            return []
        for lib in missing_libraries(res.stdout + res.stderr):
            missing.setdefault(lib, []).append(exe.name)
    if not missing:
        return [Finding("libs", True, f"every shared library of build {rec.id} resolves")]
    cuda = any(lib.startswith(("libcuda", "libcublas", "libnvrtc")) for lib in missing)
    return [Finding("libs", False, f"{', '.join(sorted(set(bins)))} cannot load {lib} (not found)",
                    "install the CUDA runtime this build was made with, or rebuild: `nativellm build --auto`"
                    if cuda else "install the package that provides it, or rebuild: `nativellm build --auto`")
            for lib, bins in sorted(missing.items())]  # fmt: skip


def check_flags(store: Store, host: HostProfile) -> list[Finding]:
    """A build planned for flags this CPU no longer has (moved disk, VM migration) will SIGILL."""
    rec = store.current()
    if rec is None:
        return []
    try:
        plan = BuildPlan.from_dict(rec.manifest["plan"])
    except (KeyError, NativeLLMError):
        return [
            Finding(
                "cpu", False, f"build {rec.id} has no readable plan", "rebuild with `nativellm build --auto`"
            )
        ]
    flag_of = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi2": "bmi2", "avx512": "avx512f",
               "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16", "avx512_vbmi": "avx512vbmi",
               "avx_vnni": "avx_vnni", "amx": "amx_int8"}  # fmt: skip
    missing = sorted(flag_of[f] for f in plan.features() if f in flag_of and flag_of[f] not in host.cpu.flags)
    if missing:
        return [Finding("cpu", False, f"current build {rec.id} needs {', '.join(missing)}, which this CPU lacks",
                        "rebuild for this machine: `nativellm build --auto`")]  # fmt: skip
    return [Finding("cpu", True, f"this CPU has every ISA extension build {rec.id} uses")]


# Oldest Linux driver that runs binaries from each CUDA major release (NVIDIA's minor version
# compatibility table: CUDA 11.x needs >= 450.80.02, 12.x >= 525.60.13, 13.x >= 580).
CUDA_MIN_DRIVER: dict[int, tuple[int, ...]] = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580,)}


def check_gpu(store: Store, host: HostProfile, dev: Path = Path("/dev")) -> list[Finding]:
    """A CUDA build: driver loaded, every GPU's device node present, driver new enough, archs built."""
    rec = store.current()
    if rec is None or rec.backend != "cuda":
        return []
    out: list[Finding] = []
    present = host.gpus_of("nvidia")
    if not (dev / "nvidiactl").exists():
        out.append(Finding("gpu", False, "the current build uses CUDA but /dev/nvidiactl is missing",
                           "load the NVIDIA driver (modprobe nvidia) or rebuild with --backend cpu"))  # fmt: skip
    else:
        missing = [f"/dev/nvidia{g.index}" for g in present if not (dev / f"nvidia{g.index}").exists()]
        if missing:
            out.append(Finding("gpu", False, f"device node(s) {', '.join(missing)} missing",
                               "run nvidia-modprobe (or reboot after a driver upgrade)"))  # fmt: skip
    built_gpus = rec.manifest.get("built_for", {}).get("gpus", [])
    built = {g["arch"] for g in built_gpus if g.get("vendor", "nvidia") == "nvidia"}
    archs = {g.arch for g in present}
    if archs and built and not archs <= built:
        out.append(Finding("gpu", False, f"GPUs {sorted(archs)} are not all in the build's archs {sorted(built)}",
                           "rebuild with `nativellm build --auto`"))  # fmt: skip
    n_built = sum(1 for g in built_gpus if g.get("vendor", "nvidia") == "nvidia")
    if n_built and len(present) < n_built:
        out.append(Finding("gpu", False, f"the build was made for {n_built} NVIDIA GPU(s), {len(present)} present",
                           "check `nvidia-smi`; a GPU fell off the bus or was passed to a VM"))  # fmt: skip
    cuda = parse_nvcc_version(str(rec.manifest.get("toolchain", {}).get("nvcc") or ""))
    driver = next((g.driver for g in present if g.driver), None)
    need = CUDA_MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    if need and driver and version_tuple(driver, 3) < need:
        wanted = ".".join(map(str, need))
        out.append(Finding("gpu", False, f"driver {driver} is too old for this CUDA {cuda} build (needs >= {wanted})",
                           f"upgrade the NVIDIA driver to {wanted} or newer, or rebuild with an older CUDA toolkit"))  # fmt: skip
    return out or [Finding("gpu", True, f"NVIDIA devices present for build {rec.id}"
                           + (f" (CUDA {cuda}, driver {driver})" if cuda and driver else ""))]  # fmt: skip


def check_disk(paths: Paths, minimum: int = MIN_FREE_BYTES) -> list[Finding]:
    probe = paths.home if paths.home.exists() else paths.home.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < minimum:
        return [Finding("disk", False, f"only {free >> 20} MiB free under {paths.home}",
                        "free space, or run `nativellm builds gc`")]  # fmt: skip
    return [Finding("disk", True, f"{free >> 30} GiB free under {paths.home}")]


def check_models(paths: Paths) -> list[Finding]:
    out: list[Finding] = []
    try:
        records = ModelRegistry(paths).list()
    except NativeLLMError as exc:  # a damaged index is a finding, not the end of the checks
        return [Finding("models", False, exc.message, exc.hint)]
    for rec in records:
        try:
            verify_model(paths, rec.name)
        except NativeLLMError as exc:
            out.append(Finding("models", False, f"model {rec.name}: {exc.message}", exc.hint))
    return out or [Finding("models", True, "every registered model verifies")]


def check_instances(
    inst: Instances,
    *,
    linger: Callable[[], bool | None] | None = None,
    port_in_use: Callable[[int, str], bool] | None = None,
) -> list[Finding]:
    """Rendered units match their specs, lingering is on for user instances, ports are ours."""
    specs, unreadable = inst.specs_and_errors()
    if not specs and not unreadable:
        return []
    # A spec that does not read is a finding; the others are still checked.
    out = [Finding("instances", False, exc.message, exc.hint) for exc in unreadable]
    units: Path = inst.paths.units
    for rel, text in template_files().items():
        if (units / rel).is_file() and (units / rel).read_text() != text:
            out.append(Finding("units", False, f"{units / rel} differs from the shipped template",
                               "re-render it with `nativellm instance edit NAME` for any instance"))  # fmt: skip
    sd = reachable(inst.systemd)
    busy = port_in_use or client.port_in_use
    for spec in specs:
        try:
            files = inst.rendered(spec.name)
        except NativeLLMError as exc:
            out.append(Finding("units", False, f"instance {spec.name}: {exc.message}", exc.hint))
            continue
        for rel, text in files.items():
            path = units / rel
            if not path.is_file():
                out.append(Finding("units", False, f"instance {spec.name}: {path} is missing",
                                   f"re-render with `nativellm instance edit {spec.name}`"))  # fmt: skip
            elif path.read_text() != text:
                out.append(Finding("units", False, f"instance {spec.name}: {path} was edited by hand",
                                   f"put changes in the spec and re-render: `nativellm instance edit {spec.name}`"))  # fmt: skip
        unit = sd.state(unit_name(spec.name)) if sd is not None else None
        active = unit is not None and unit.running
        # Failed, or retrying after a failure (systemd resets Result at each new try); not stopped.
        down = unit is not None and unit.active_state in ("failed", "activating")
        why = inst.error_line(spec.name) if down else None
        if why and why.startswith(OFFLOAD_FAILED):
            # It asked for GPU layers and would have served from the CPU: refused, and says why.
            out.append(Finding("offload", False, f"instance {spec.name} did not start: {why}",
                               "check the GPU and its driver (`nativellm detect`), the instance's --gpus and "
                               f"its build's backend; `nativellm logs {spec.name}` has the whole log"))  # fmt: skip
        if not active and busy(spec.port, spec.host):
            out.append(Finding("ports", False, f"instance {spec.name}'s port {spec.port} is taken by another process",
                               f"free it, or move the instance: `nativellm instance edit {spec.name} --port N`"))  # fmt: skip
    if inst.paths.scope is Scope.USER:
        state = (linger or _linger)()
        if state is False:
            out.append(Finding("linger", False, "lingering is off: user instances stop at logout and don't start at boot",
                               "run `loginctl enable-linger $USER` (or `instance add --linger`)"))  # fmt: skip
    return out or [Finding("instances", True, f"{len(specs)} instance(s): units match their specs")]


def _linger() -> bool | None:
    return linger_enabled()


def run_doctor(
    paths: Paths, host: HostProfile, extra: list[Callable[[], list[Finding]]] | None = None
) -> list[Finding]:
    store = Store(paths)
    findings = [*check_store(store), *check_libraries(store), *check_flags(store, host), *check_gpu(store, host), *check_disk(paths),
                *check_models(paths)]  # fmt: skip
    for check in extra or []:
        findings += check()
    return findings


def doctor_all(paths: Paths) -> list[Finding]:
    """The use case behind `nativellm doctor`: every check, instances included."""
    instances = Instances(paths, Systemd(paths.scope))
    return run_doctor(paths, detect_host(), extra=[lambda: check_instances(instances)])
