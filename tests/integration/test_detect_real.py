"""Real detection on this machine: child processes run, instructions really execute."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from nativellm import run
from nativellm.hardware import HostProfile, detect_host, isa_exec
from nativellm.hardware.cpu import (
    EXEC_FAMILIES,
    XCR0_AMX,
    ChildRunner,
    is_x86,
    read_cpuinfo,
    verify_flags,
)

SRC = Path(__file__).resolve().parents[2] / "src"
x86_only = pytest.mark.skipif(not is_x86(), reason="instruction probes exist for x86_64 only")


@pytest.fixture(scope="module")
def profile() -> HostProfile:
    return detect_host(timeout=30)


def test_profile_schema(profile: HostProfile) -> None:
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["schema"] == "nativellm.host/1"
    assert data["os"] in ("linux", "darwin")
    assert data["arch"] in ("x86_64", "aarch64", "arm64")
    c = data["cpu"]
    assert c["vendor"] and c["model"]
    assert c["logical_cores"] >= c["physical_cores"] >= 1
    assert c["numa_nodes"] >= 1
    assert all(f == f.lower() for f in c["flags"])
    assert data["memory_bytes"] > 0
    for gpu in data["gpus"]:
        assert gpu["vendor"] in ("nvidia", "amd", "apple", "intel")
    for key in ("cuda", "rocm", "vulkan"):
        value = data["toolkits"][key]
        assert value is None or value.count(".") == 1
    assert HostProfile.from_dict(data) == profile


@x86_only
def test_flags_are_a_verified_subset(profile: HostProfile) -> None:
    cpu = profile.cpu
    assert cpu.reported_flags is not None, "verification did not run"
    assert set(cpu.flags) <= set(cpu.reported_flags)
    dropped = cpu.dropped_flags or {}
    assert set(cpu.flags) | set(dropped) == set(cpu.reported_flags)
    assert all(reason for reason in dropped.values())
    if "avx2" not in cpu.reported_flags:
        pytest.skip("this CPU does not report avx2")
    assert "avx2" in cpu.flags


@x86_only
def test_kept_families_really_execute(profile: HostProfile) -> None:
    families = sorted(f for f in profile.cpu.flags if f in EXEC_FAMILIES)
    results = ChildRunner(timeout=30).execute(families)
    assert results == dict.fromkeys(families)


@x86_only
def test_ud2_kills_the_child_not_us() -> None:
    script = str(Path(isa_exec.__file__).resolve())
    done = run.probe([sys.executable, "-I", "-S", script, "base", "ud2", "avx"], timeout=30)
    assert done is not None
    assert done.returncode == -signal.SIGILL
    assert done.stdout.splitlines() == ["start base", "ok base", "start ud2"]

    results = ChildRunner(timeout=30).execute(["ud2", "base"])
    assert results["base"] is None  # restarted after the crash and went on
    assert results["ud2"] is not None and "SIGILL" in results["ud2"]


@x86_only
def test_module_form_runs_too() -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    done = run.run([sys.executable, "-m", "nativellm.hardware.isa_exec", "--info"], env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "ok base" in done.stdout and any(ln.startswith("xcr0 0x") for ln in done.stdout.splitlines())


class Ud2Runner(ChildRunner):
    """Pretends avx2's test instruction is ud2, to see a real crash become a drop."""

    def execute(self, families: Sequence[str]) -> dict[str, str | None]:
        real = [("ud2" if f == "avx2" else f) for f in families]
        results = super().execute(real)
        return {f: results[r] for f, r in zip(families, real, strict=True)}


@x86_only
def test_a_crashing_probe_is_a_drop() -> None:
    flags = read_cpuinfo().flags
    if "avx2" not in flags:
        pytest.skip("this CPU does not report avx2")
    kept, dropped = verify_flags(flags, runner=Ud2Runner(timeout=30))
    assert "avx2" not in kept
    assert "SIGILL" in dropped["avx2"]
    assert "avx" in kept
    for dependent in ("avx_vnni", "avx512f", "avx512bw"):
        if dependent in flags:
            assert dependent in dropped


@x86_only
def test_amx_probes_where_the_os_allows_them() -> None:
    flags = read_cpuinfo().flags
    if "amx_tile" not in flags:
        pytest.skip("this CPU does not report AMX")
    info = ChildRunner(timeout=30).info()
    assert info.xcr0 is not None
    if info.amx_permission is not None or info.xcr0 & XCR0_AMX != XCR0_AMX:
        pytest.skip(f"the OS does not enable AMX here: {info.amx_permission or hex(info.xcr0)}")
    families = [f for f in ("amx_tile", "amx_int8", "amx_bf16") if f in flags]
    # DESIGN.md section 6: the small probes pass on these VMs; llama.cpp's kernels are caught later.
    assert ChildRunner(timeout=30).execute(families) == dict.fromkeys(families)
