"""`status` with GPU memory: which source answers for which instance, the JSON shape (old keys
unchanged), and the table column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nativellm import run
from nativellm.cli import output
from nativellm.cli.views import show_instance_status
from nativellm.hardware.vram import (
    AmdProcess,
    GpuMemory,
    GpuProcessProbe,
    NvmlDevice,
    NvmlProcess,
    NvmlSnapshot,
)
from nativellm.paths import Paths, resolve_paths
from nativellm.serve.instances import Instances, InstanceStatus
from nativellm.serve.server_flags import ServerFlags
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec, write_spec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama_server"
MiB = 1 << 20
GiB = 1 << 30
ME = os.getpid()  # a real process tree under /proc: this test's own

# What `status --json` gave per instance before GPU memory: other tools read these keys.
OLD_KEYS = {
    "name", "unit", "active_state", "sub_state", "result", "enabled", "pid", "uptime_s", "restarts",
    "start_limit_hit", "memory_bytes", "cpu_s", "host", "port", "url", "health", "healthy", "model",
    "build", "metrics", "error",
}  # fmt: skip

VULKAN_LOG = (
    "0.00.004.141 I srv    load_model: loading model '/srv/models/m.gguf'\n"
    "0.00.118.971 I load_tensors:      Vulkan0 model buffer size =   120.00 MiB\n"
    "0.00.118.972 I load_tensors:   CPU_Mapped model buffer size =     8.00 MiB\n"
    "0.00.119.857 I llama_kv_cache:    Vulkan0 KV buffer size =    16.00 MiB\n"
    "0.00.120.821 I sched_reserve:    Vulkan0 compute buffer size =    64.00 MiB\n"
)


class FakeSd:
    """The two things `status` asks of systemd."""

    def __init__(self, states: dict[str, tuple[str, int]]) -> None:
        self.states = states

    def available(self) -> bool:
        return True

    def state(self, unit: str) -> UnitState:
        active, pid = self.states.get(unit, ("inactive", 0))
        return UnitState(unit, "loaded", active, "running" if pid else "dead", "success", pid, 0,
                         100 * MiB if pid else None, 10**9, 0, False, "enabled")  # fmt: skip


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NATIVELLM_UNIT_DIR", str(tmp_path / "units"))
    p = resolve_paths()
    for build, backend in (("cpu-test", "cpu"), ("vulkan-test", "vulkan")):
        (p.builds / build / "bin").mkdir(parents=True)
        (p.builds / build / "bin" / "llama-server").write_text("#!/bin/sh\n")
        (p.builds / build / "manifest.json").write_text(
            json.dumps({"id": build, "plan": {"backend": backend}, "smoke_test": {"passed": True}})
        )
    p.current.symlink_to("builds/vulkan-test")
    return p


def spec(name: str, port: int, **kw: Any) -> InstanceSpec:
    return InstanceSpec(name=name, model="/srv/models/m.gguf", port=port, **kw)


def status_of(
    paths: Paths,
    monkeypatch: pytest.MonkeyPatch,
    specs: list[InstanceSpec],
    running: dict[str, int],
    probe: GpuProcessProbe,
    journal: str = "",
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    for s in specs:
        write_spec(paths.config, s)
    asked: list[list[str]] = []

    def fake_probe(argv: list[str], *, timeout: float = 10) -> run.Completed:
        asked.append(list(argv))
        return run.Completed(tuple(argv), 0, journal, "")

    monkeypatch.setattr(run, "probe", fake_probe)
    sd = FakeSd({f"llama@{n}.service": ("active", pid) for n, pid in running.items()})
    inst = Instances(paths, sd, server_flags=lambda b: ServerFlags(), gpu_probe=lambda: probe)  # type: ignore[arg-type]
    rows = {s.name: s.to_dict() for s in inst.status()}
    return rows, asked


def no_vendor() -> GpuProcessProbe:
    return GpuProcessProbe(nvml=lambda: None, amd=lambda: None)


def test_nvml_answers_for_a_running_gpu_instance(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = NvmlSnapshot("580.65.06", (NvmlDevice(0, "NVIDIA H200", "GPU-x", 140 * GiB, 100 * GiB, 40 * GiB,
                                                 (NvmlProcess(ME, 5 * GiB),)),))  # fmt: skip
    probe = GpuProcessProbe(nvml=lambda: snap, amd=lambda: None)
    specs = [spec("gpu", 18080, gpu_layers=99), spec("cpu", 18081, build="cpu-test"), spec("off", 18082)]
    rows, asked = status_of(paths, monkeypatch, specs, {"gpu": ME, "cpu": ME}, probe)
    assert rows["gpu"]["gpu_memory"] == [
        {
            "device": "CUDA0",
            "index": 0,
            "bytes": 5 * GiB,
            "source": "nvml",
            "name": "NVIDIA H200",
            "uuid": "GPU-x",
        }
    ]
    assert rows["cpu"]["gpu_memory"] == []  # a CPU build holds no GPU memory, whatever NVML lists
    assert rows["off"]["gpu_memory"] == []  # not running
    assert all(
        set(r) == OLD_KEYS | {"gpu_memory", "router", "models"} for r in rows.values()
    )  # additive only
    assert asked == [["journalctl", "--no-pager", "--user-unit", "llama@off.service", "-n", "200",
                      "--identifier", "llama@off", "-o", "cat"]]  # fmt: skip # only the error line of the stopped one


def test_vulkan_instance_falls_back_to_llama_servers_load_log(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = [spec("vk", 18080, gpu_layers=99, gpus=(1,))]
    rows, asked = status_of(paths, monkeypatch, specs, {"vk": ME}, no_vendor(), journal=VULKAN_LOG)
    assert rows["vk"]["gpu_memory"] == [
        {"device": "Vulkan0", "index": 1, "bytes": 200 * MiB, "source": "llama-server"}
    ]
    assert asked == [
        ["journalctl", "--no-pager", "-o", "cat", f"_PID={ME}", "--grep", "buffer size|loading model"]
    ]


def test_amd_answers_before_the_log(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = GpuProcessProbe(nvml=lambda: None, amd=lambda: [AmdProcess(ME, 0, 3 * GiB, "amd-smi")])
    rows, asked = status_of(paths, monkeypatch, [spec("hip", 18080)], {"hip": ME}, probe, journal=VULKAN_LOG)
    assert rows["hip"]["gpu_memory"] == [
        {"device": "ROCm0", "index": 0, "bytes": 3 * GiB, "source": "amd-smi"}
    ]
    assert asked == []


def test_cpu_fallback_and_unknown(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU build whose server loaded everything into host buffers (the silent CPU fallback) holds
    no GPU memory: []. With no source at all (no NVML, no amd-smi, no buffer lines: llama-server
    prints them only at -lv 4 in newer trees) the answer is unknown: None, "?" in the table."""
    cpu_log = (FIXTURES / "load_log_cpu_lv4.log").read_text()
    rows, _ = status_of(paths, monkeypatch, [spec("vk", 18080)], {"vk": ME}, no_vendor(), journal=cpu_log)
    assert rows["vk"]["gpu_memory"] == []
    rows, _ = status_of(paths, monkeypatch, [spec("vk", 18080)], {"vk": ME}, no_vendor(), journal="")
    assert rows["vk"]["gpu_memory"] is None


def test_gpu_layers_zero_asks_nothing(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    probe = GpuProcessProbe(nvml=lambda: asked.append("nvml"), amd=lambda: asked.append("amd"))
    rows, journal = status_of(paths, monkeypatch, [spec("z", 18080, gpu_layers=0)], {"z": ME}, probe)
    assert rows["z"]["gpu_memory"] == [] and asked == [] and journal == []


def test_the_table_shows_vram(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.out, "_width", 200)  # a wide terminal: cells are not wrapped
    s = spec("q4", 8080)

    def row(name: str, gpu: tuple[GpuMemory, ...] | None) -> dict[str, Any]:
        d = InstanceStatus(name, s, None, "down", {}, None, gpu).to_dict()
        return d

    one = (GpuMemory("Vulkan0", 0, 200 * MiB, "llama-server"),)
    two = (GpuMemory("CUDA0", 0, GiB, "nvml"), GpuMemory("CUDA1", 1, GiB, "nvml"))
    show_instance_status([row("one", one), row("two", two), row("none", ()), row("unknown", None)])
    out = capsys.readouterr().out
    assert "VRAM" in out.splitlines()[0]
    cells = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert "200 MiB" in cells["one"] and "2048 MiB (CUDA0+CUDA1)" in cells["two"]
    assert " ? " in cells["unknown"]
    assert InstanceStatus("x", s, None, "down", {}, None).to_dict()["gpu_memory"] == []


def test_fit_text_lists_the_inventory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nativellm.cli.views import show_fit
    from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile
    from nativellm.hardware.vram import GpuDevice
    from nativellm.models.fit import estimate_fit

    monkeypatch.setattr(output.out, "_width", 200)
    facts = {"block_count": 2, "head_count": 4, "head_count_kv": 4, "embedding_length": 256,
             "layer_bytes": [MiB, MiB], "context_length": 512}  # fmt: skip
    rec = SimpleNamespace(name="m", facts=facts)
    cpu = CpuInfo("GenuineIntel", "Xeon", ("avx2",), 8, 16)
    bare = HostProfile("linux", "x86_64", cpu, 64 * GiB)
    show_fit(estimate_fit(rec, bare, ctx=512))
    assert len(capsys.readouterr().out.splitlines()) == 2  # CPU only: as before
    gpu = HostProfile(
        "linux", "x86_64", cpu, 64 * GiB, (GpuInfo("nvidia", 0, "NVIDIA H200", "sm_90", 140 * GiB),)
    )
    dev = GpuDevice("nvidia", 0, "NVIDIA H200", 140 * GiB, 100 * GiB, None, "nvml")
    show_fit(estimate_fit(rec, gpu, ctx=512, gpu_layers=99, devices=(dev,)))
    lines = capsys.readouterr().out.splitlines()
    assert "free on GPU 0" in lines[0]
    assert lines[2] == "  GPU 0 NVIDIA H200: 140.0 GiB, 100.0 GiB free (nvml)"
