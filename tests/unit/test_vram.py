"""GPU memory per instance and the device inventory: NVML dumps, amd-smi/rocm-smi JSON and
llama-server's load log, each parsed from captured (or, where marked, constructed) text in
tests/fixtures (sources in tests/fixtures/hw/README.md)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nativellm.hardware import nvidia
from nativellm.hardware.profile import CpuInfo, GpuInfo, HostProfile
from nativellm.hardware.vram import (
    AmdProcess,
    GpuDevice,
    GpuMemory,
    GpuProcessProbe,
    NvmlDevice,
    NvmlProcess,
    NvmlSnapshot,
    amd_gpu_memory,
    device_inventory,
    nvml_gpu_memory,
    parse_amd_smi_process,
    parse_rocm_smi_pids,
    probe_nvml,
    process_tree,
    read_nvml,
)
from nativellm.models.fit import estimate_fit
from nativellm.serve.observe import gpu_memory_from_log, parse_buffer_sizes

ROOT = Path(__file__).parent.parent.parent
HW = ROOT / "tests" / "fixtures" / "hw"
# The real capture from an H200 (scripts/capture-nvml.py) replaces the constructed one when it lands.
NVML_FIXTURE = HW / "nvml_h200.json"  # real: captured on an H200 by scripts/gpu_validate.py
CPU_LOG = ROOT / "tests" / "fixtures" / "llama_server" / "load_log_cpu_lv4.log"
MiB = 1 << 20
GiB = 1 << 30


# --------------------------------------------------------------------------- a pynvml-shaped fake
class FakeNvml:
    """The part of pynvml that nativellm calls, answering from a `nativellm.nvml/1` document."""

    def __init__(self, doc: dict[str, Any], *, processes_error: Exception | None = None) -> None:
        self.doc = doc
        self.processes_error = processes_error
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.doc["driver"])

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialised
        return len(self.doc["devices"])

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return dict(self.doc["devices"][i])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> bytes:
        return str(h["name"]).encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        major, minor = str(h["compute_capability"]).split(".")
        return int(major), int(minor)

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(**h["memory"])

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[SimpleNamespace]:
        if self.processes_error is not None:
            raise self.processes_error
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["usedGpuMemory"], gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF) for p in h["processes"]]  # fmt: skip

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: dict[str, Any]) -> list[SimpleNamespace]:
        return []


def inited(doc: dict[str, Any], **kw: Any) -> FakeNvml:
    nv = FakeNvml(doc, **kw)
    nv.nvmlInit()
    return nv


def nvml_doc() -> dict[str, Any]:
    return dict(json.loads(NVML_FIXTURE.read_text()))


def server_pid(doc: dict[str, Any]) -> int:
    """The llama-server PID the capture names (scripts/capture-nvml.py --pid), else the first
    process on a GPU."""
    named = (doc.get("captured") or {}).get("llama_server_pids") or []
    if named:
        return int(named[0])
    return int(next(p["pid"] for d in doc["devices"] for p in d["processes"]))


def capture_script() -> Any:
    spec = importlib.util.spec_from_file_location("capture_nvml", ROOT / "scripts" / "capture-nvml.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_nvml_fixture_reads_back_through_the_recorder() -> None:
    doc = nvml_doc()
    snap = read_nvml(inited(doc))
    assert snap == NvmlSnapshot.from_dict(doc)
    assert {k: v for k, v in doc.items() if k != "captured"} == snap.to_dict()
    d = snap.devices[0]
    assert d.total_bytes == doc["devices"][0]["memory"]["total"] and d.compute_capability
    assert d.free_bytes is not None and d.free_bytes < d.total_bytes


def test_probe_inits_reads_and_shuts_nvml_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(nvml_doc())
    monkeypatch.setitem(sys.modules, "fake_pynvml", fake)
    assert probe_nvml("fake_pynvml") == NvmlSnapshot.from_dict(nvml_doc())
    assert not fake.initialised  # nvmlShutdown was called


def test_capture_script_writes_what_the_reader_reads() -> None:
    """scripts/capture-nvml.py (stdlib + pynvml, for a GPU machine without nativellm) and
    read_nvml must agree, or a capture would not be what nativellm sees."""
    script = capture_script()
    doc = nvml_doc()
    assert script.capture(inited(doc)) == read_nvml(inited(doc)).to_dict()


@pytest.fixture
def no_libnvidia_ml() -> None:
    """The real nvidia-ml-py on a machine without the NVIDIA driver (this one); elsewhere, skipped."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return
    pynvml.nvmlShutdown()
    pytest.skip("libnvidia-ml is installed here")


@pytest.mark.usefixtures("no_libnvidia_ml")
def test_capture_script_without_nvml_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """On this machine (no NVIDIA driver) the script exits 2 with one line, and writes nothing."""
    script = capture_script()
    assert script.main(["-o", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "capture-nvml: NVML is not usable here: NVML Shared Library Not Found"
    assert not (tmp_path / "out.json").exists()


def test_nvml_gives_the_servers_memory_by_pid() -> None:
    doc = nvml_doc()
    snap = NvmlSnapshot.from_dict(doc)
    pid = server_pid(doc)
    expected = [
        GpuMemory(f"CUDA{d['index']}", d["index"], p["usedGpuMemory"], "nvml", d["name"], d["uuid"])
        for d in doc["devices"]
        for p in d["processes"]
        if p["pid"] == pid
    ]
    assert expected and nvml_gpu_memory(snap, {pid}) == expected
    assert nvml_gpu_memory(snap, {1, 2, 3}) == []  # not on any GPU
    # A child process on the GPU counts with its parent (the instance's process tree).
    two = NvmlSnapshot(None, (NvmlDevice(0, "X", None, 80 * GiB, None, None,
                                         (NvmlProcess(10, GiB), NvmlProcess(11, 2 * GiB))),))  # fmt: skip
    assert nvml_gpu_memory(two, {10, 11})[0].bytes == 3 * GiB


def test_nvml_across_gpus_and_unavailable_figures() -> None:
    snap = NvmlSnapshot(
        "580.65.06",
        (
            NvmlDevice(
                0, "NVIDIA H100 80GB HBM3", "GPU-a", 80 * GiB, 10 * GiB, 70 * GiB, (NvmlProcess(7, 30 * GiB),)
            ),
            NvmlDevice(
                1, "NVIDIA H100 80GB HBM3", "GPU-b", 80 * GiB, 50 * GiB, 30 * GiB, (NvmlProcess(7, 29 * GiB),)
            ),
            NvmlDevice(2, "NVIDIA H100 80GB HBM3", "GPU-c", 80 * GiB, 80 * GiB, 0, (NvmlProcess(7, None),)),
        ),
    )
    got = nvml_gpu_memory(snap, {7})
    # GPU 2 lists the process but NVML_VALUE_NOT_AVAILABLE for its memory: left out, not 0.
    assert [(g.device, g.index, g.bytes, g.uuid) for g in got] == [
        ("CUDA0", 0, 30 * GiB, "GPU-a"),
        ("CUDA1", 1, 29 * GiB, "GPU-b"),
    ]


def test_graphics_and_compute_lists_merge_by_pid() -> None:
    """A Vulkan llama-server on an NVIDIA card is a graphics process in NVML."""
    doc = nvml_doc()
    pid = server_pid(doc)
    fake = inited(doc)
    fake.nvmlDeviceGetGraphicsRunningProcesses = lambda h: [  # type: ignore[method-assign]
        SimpleNamespace(pid=pid, usedGpuMemory=None),
        SimpleNamespace(pid=31337, usedGpuMemory=64 * MiB),
    ]
    procs = {p.pid: p.used_bytes for p in read_nvml(fake).devices[0].processes}
    assert procs[31337] == 64 * MiB
    assert procs[pid] == next(p["usedGpuMemory"] for p in doc["devices"][0]["processes"] if p["pid"] == pid)


def test_a_process_list_nvml_refuses_leaves_the_device_listed() -> None:
    class NotSupported(Exception):
        pass

    snap = read_nvml(inited(nvml_doc(), processes_error=NotSupported("Not Supported")))
    assert snap.devices[0].processes == () and snap.devices[0].total_bytes > 0


def test_an_older_driver_answers_the_v2_process_list() -> None:
    """pynvml's unversioned call needs the driver's v3 symbol; without it (drivers before ~R510)
    it raises, and the v2 call answers."""

    class MismatchError(Exception):
        pass

    doc = nvml_doc()
    fake = inited(
        doc,
        processes_error=MismatchError("Unversioned function called and the pyNVML version does not match"),
    )
    fake.nvmlDeviceGetComputeRunningProcesses_v2 = lambda h: [  # type: ignore[attr-defined]
        SimpleNamespace(pid=p["pid"], usedGpuMemory=p["usedGpuMemory"]) for p in h["processes"]
    ]
    assert read_nvml(fake) == NvmlSnapshot.from_dict(doc)


@pytest.mark.usefixtures("no_libnvidia_ml")
def test_no_libnvidia_ml_is_none_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The real nvidia-ml-py on this machine, which has no NVIDIA driver: NVMLError_LibraryNotFound
    becomes None and a log line. (A machine with the driver answers instead; that is checked there.)"""
    with caplog.at_level(logging.INFO, logger="nativellm.hardware.vram"):
        assert probe_nvml() is None
    assert "NVML Shared Library Not Found" in caplog.text
    assert probe_nvml("no_such_nvml_module") is None
    # detect falls through to nvidia-smi (absent in the unit tier: run.probe says so) and finds none.
    assert nvidia._from_nvml() is None


def test_detect_reads_gpus_through_the_one_nvml_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = nvml_doc()
    monkeypatch.setattr(nvidia, "probe_nvml", lambda: NvmlSnapshot.from_dict(doc))
    gpus = nvidia.detect_nvidia_gpus()
    assert gpus == [
        GpuInfo("nvidia", d["index"], d["name"], "sm_" + d["compute_capability"].replace(".", ""),
                d["memory"]["total"], doc["driver"])
        for d in doc["devices"]
    ]  # fmt: skip
    assert gpus[0].arch == "sm_90"  # an H200


# --------------------------------------------------------------------------- AMD
def test_amd_smi_process_json() -> None:
    procs = parse_amd_smi_process((HW / "amd_smi_process_constructed.json").read_text())
    assert procs == [
        AmdProcess(5150, 0, 6 * GiB, "amd-smi"),
        AmdProcess(6001, 0, GiB, "amd-smi"),
        AmdProcess(5150, 1, 5 * GiB, "amd-smi"),
    ]
    assert amd_gpu_memory(procs, {5150}) == [
        GpuMemory("ROCm0", 0, 6 * GiB, "amd-smi"),
        GpuMemory("ROCm1", 1, 5 * GiB, "amd-smi"),
    ]
    assert amd_gpu_memory(procs, {1}) == []


def test_amd_smi_shapes_across_releases() -> None:
    """Newer amd-smi wraps the list in {"gpu_data": ...}; sizes come as {"value", "unit"} with binary
    KB/MB/GB, bare byte counts or "N MB" strings; odd entries are skipped, not fatal."""
    doc = {"gpu_data": [{"gpu": 3, "process_list": [
        {"process_info": {"pid": 1, "memory_usage": {"vram_mem": {"value": 2, "unit": "MB"}}}},
        {"process_info": {"pid": 2, "memory_usage": {"vram_mem": 4096}}},
        {"process_info": {"pid": "3", "memory_usage": {"vram_mem": "1.5 GB"}}},
        {"process_info": {"pid": 4, "memory_usage": "N/A"}},
        {"process_info": "No running processes detected"},
        "garbage",
    ]}, "not a gpu"]}  # fmt: skip
    got = [(p.pid, p.gpu, p.vram_bytes) for p in parse_amd_smi_process(json.dumps(doc))]
    assert got == [(1, 3, 2 * MiB), (2, 3, 4096), (3, 3, int(1.5 * GiB))]
    assert parse_amd_smi_process("not json") == []
    assert parse_amd_smi_process('{"error": "no GPUs"}') == []


def test_rocm_smi_showpids_json() -> None:
    procs = parse_rocm_smi_pids((HW / "rocm_smi_showpids_constructed.json").read_text())
    assert procs == [AmdProcess(5150, None, 11811160064, "rocm-smi"), AmdProcess(6001, None, GiB, "rocm-smi")]
    # rocm-smi sums over the GPUs a process uses: no device index.
    assert amd_gpu_memory(procs, {5150}) == [GpuMemory("ROCm", None, 11811160064, "rocm-smi")]
    assert parse_rocm_smi_pids('{"system": {"PID 7": "x, 1, 1024, 0, 0", "PIDx": "bad"}}') == [
        AmdProcess(7, None, 1024, "rocm-smi")
    ]
    assert parse_rocm_smi_pids("[]") == []


def test_the_probe_asks_each_tool_once_and_only_when_needed() -> None:
    calls: list[str] = []

    def nvml() -> NvmlSnapshot:
        calls.append("nvml")
        return NvmlSnapshot.from_dict(nvml_doc())

    def amd() -> list[AmdProcess]:
        calls.append("amd")
        return [AmdProcess(5150, 0, GiB, "amd-smi")]

    probe = GpuProcessProbe(nvml=nvml, amd=amd)
    assert calls == []
    assert [g.source for g in probe.memory_of({server_pid(nvml_doc()), 5150})] == ["nvml", "amd-smi"]
    assert probe.memory_of({99}) == []
    assert calls == ["nvml", "amd"]
    assert GpuProcessProbe(nvml=lambda: None, amd=lambda: None).memory_of({1}) == []


def test_process_tree_follows_children(tmp_path: Path) -> None:
    def stat(pid: int, ppid: int, comm: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560\n")

    stat(1, 0, "systemd")
    stat(100, 1, "llama-server")
    stat(101, 100, "a (tricky) name")  # comm may hold spaces and parentheses
    stat(102, 101, "grandchild")
    stat(200, 1, "other")
    (tmp_path / "self").mkdir()
    assert process_tree(100, tmp_path) == {100, 101, 102}
    assert process_tree(555, tmp_path) == {555}


# --------------------------------------------------------------------------- llama-server's load log
# Format strings from the llama.cpp tree (llama-cpp-python 0.3.36 sdist), rendered as printf does:
# src/llama-model.cpp:1930, src/llama-kv-cache.cpp:291, src/llama-context.cpp:381 and :740.
MODEL_FMT = "%s: %12s model buffer size = %8.2f MiB"
KV_FMT = "%s: %10s KV buffer size = %8.2f MiB"
OUTPUT_FMT = "%s: %10s  output buffer size = %8.2f MiB"
COMPUTE_FMT = "%s: %10s compute buffer size = %8.2f MiB"
MISMATCH_FMT = "%s: %10s compute buffer size of %8.4f MiB, does not match expectation of %8.4f MiB"


def vulkan_load(model: float, kv: float, compute: float, *, prefix: str = "0.00.118.971 I ") -> str:
    lines = [
        "srv    load_model: loading model '/srv/models/m.gguf'",
        "load_tensors: loading model tensors, this can take a while... (load_mode = mmap)",
        MODEL_FMT % ("load_tensors", "Vulkan0", model),
        MODEL_FMT % ("load_tensors", "CPU_Mapped", 8.0),
        OUTPUT_FMT % ("llama_context", "Vulkan_Host", 0.49),
        KV_FMT % ("llama_kv_cache", "Vulkan0", kv),
        COMPUTE_FMT % ("sched_reserve", "Vulkan0", compute),
        COMPUTE_FMT % ("sched_reserve", "Vulkan_Host", 1.02),
        MISMATCH_FMT % ("sched_reserve", "Vulkan0", 99.0, 1.0),
    ]
    return "\n".join(prefix + ln for ln in lines) + "\n"


def test_buffers_of_a_real_cpu_server_log() -> None:
    """The real load log of a CPU llama-server (-lv 4, tests/integration/test_status_gpu.py made it)."""
    buffers = parse_buffer_sizes(CPU_LOG.read_text())
    assert [(b.buffer, b.kind, b.bytes) for b in buffers] == [
        ("CPU_Mapped", "model", round(33.50 * MiB)),
        ("CPU", "output", round(0.49 * MiB)),
        ("CPU", "KV", round(0.50 * MiB)),
        ("CPU", "compute", round(4.51 * MiB)),
    ]
    assert not any(b.on_gpu for b in buffers)
    assert gpu_memory_from_log(CPU_LOG.read_text()) == []


def test_vulkan_buffers_sum_per_device() -> None:
    got = gpu_memory_from_log(vulkan_load(120.5, 16.0, 66.25))
    assert got == [
        GpuMemory("Vulkan0", 0, round(120.5 * MiB) + 16 * MiB + round(66.25 * MiB), "llama-server")
    ]


def test_only_the_last_load_counts() -> None:
    """The journal holds every start of the unit (and a failed one's partial load): only the last
    `loading model` counts."""
    journal = vulkan_load(999.0, 999.0, 999.0) + CPU_LOG.read_text() + vulkan_load(100.0, 10.0, 5.0)
    (g,) = gpu_memory_from_log(journal)
    assert g.bytes == 115 * MiB
    # The last start fell back to the CPU: no GPU memory, though an earlier run had some.
    assert gpu_memory_from_log(vulkan_load(100.0, 10.0, 5.0) + CPU_LOG.read_text()) == []


def test_a_second_pass_over_the_model_replaces_the_first() -> None:
    """A trial load (an older fit step, or -lv 5 showing it) prints the same buffers again."""
    one = "".join(ln + "\n" for ln in vulkan_load(100.0, 10.0, 5.0).splitlines()[2:])
    (g,) = gpu_memory_from_log("srv load_model: loading model 'm'\n" + one + one)
    assert g.bytes == 115 * MiB


def test_older_tree_formats_and_other_backends() -> None:
    """Trees from 2024 printed "llm_load_tensors: %10s buffer size" (no "model"); CUDA/ROCm devices
    and --gpus remapping (CUDA_VISIBLE_DEVICES=2,3 makes host GPUs 2 and 3 the server's 0 and 1)."""
    text = "\n".join([
        "llm_load_tensors:      CUDA0 buffer size =  1000.00 MiB",
        "llm_load_tensors:      CUDA1 buffer size =   500.00 MiB",
        "llm_load_tensors:  CUDA_Host buffer size =    70.31 MiB",
        "llama_kv_cache_init:      CUDA0 KV buffer size =   256.00 MiB",
        "llama_new_context_with_model:      CUDA1 compute buffer size =   100.00 MiB",
        "llama_new_context_with_model:  CUDA_Host compute buffer size =    12.01 MiB",
    ])  # fmt: skip
    assert gpu_memory_from_log(text, gpus=(2, 3)) == [
        GpuMemory("CUDA0", 2, 1256 * MiB, "llama-server"),
        GpuMemory("CUDA1", 3, 600 * MiB, "llama-server"),
    ]
    rocm = "load_tensors:        ROCm0 model buffer size =  2048.00 MiB\n"
    assert gpu_memory_from_log(rocm) == [GpuMemory("ROCm0", 0, 2 * GiB, "llama-server")]
    assert parse_buffer_sizes("") == [] and gpu_memory_from_log("no buffers here") == []


# --------------------------------------------------------------------------- the inventory
def profile(*gpus: GpuInfo) -> HostProfile:
    return HostProfile("linux", "x86_64", CpuInfo("GenuineIntel", "Xeon", ("avx2",), 8, 16), 64 * GiB, gpus)


def test_inventory_takes_free_memory_from_nvml_when_live() -> None:
    doc = nvml_doc()
    d = doc["devices"][0]
    host = profile(GpuInfo("nvidia", 0, d["name"], "sm_90", 140 * GiB))
    snap = NvmlSnapshot.from_dict(doc)
    (dev,) = device_inventory(host, nvml=lambda: snap, amd=None)
    assert dev == GpuDevice(
        "nvidia", 0, d["name"], d["memory"]["total"], d["memory"]["free"], d["uuid"], "nvml"
    )
    assert dev.capacity == d["memory"]["free"]
    # Another machine's profile (--profile FILE): nothing live, totals only.
    (plain,) = device_inventory(host, nvml=None, amd=None)
    assert plain == GpuDevice("nvidia", 0, d["name"], 140 * GiB) and plain.capacity == 140 * GiB


ROCM_SMI_VRAM = (  # rocm-smi --showmeminfo vram --json: byte counts as strings, cards in any order
    '{"card1": {"VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10960896"},'
    ' "card0": {"VRAM Total Memory (B)": "206141652992", "VRAM Total Used Memory (B)": "6442450944"}}'
)


def test_inventory_takes_amd_free_memory_from_rocm_smi() -> None:
    from nativellm.hardware.amd import parse_rocm_smi_vram_usage

    usage = parse_rocm_smi_vram_usage(ROCM_SMI_VRAM)
    assert usage == [(206141652992, 6442450944), (68702699520, 10960896)]
    host = profile(GpuInfo("amd", 0, "AMD Instinct MI300X", "gfx942", 206141652992),
                   GpuInfo("amd", 1, "AMD Instinct MI210", "gfx90a", 68702699520))  # fmt: skip
    devs = device_inventory(host, nvml=None, amd=lambda: usage)
    assert [(d.index, d.free_bytes, d.source) for d in devs] == [
        (0, 206141652992 - 6442450944, "rocm-smi"),
        (1, 68702699520 - 10960896, "rocm-smi"),
    ]
    # A count that does not match the profile's AMD GPUs pairs nothing.
    assert all(d.source == "profile" for d in device_inventory(host, nvml=None, amd=lambda: usage[:1]))
    assert parse_rocm_smi_vram_usage('{"card0": {"VRAM Total Memory (B)": "1024"}}') == [(1024, None)]
    assert parse_rocm_smi_vram_usage("garbage") == []


def test_inventory_does_not_mix_a_different_device() -> None:
    snap = NvmlSnapshot.from_dict(nvml_doc())
    host = profile(GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 5090", "sm_120", 32 * GiB),
                   GpuInfo("intel", 1, "Intel Arc", "intel", 0))  # fmt: skip
    devs = device_inventory(host, nvml=lambda: snap, amd=None)
    assert [(d.source, d.free_bytes) for d in devs] == [("profile", None), ("profile", None)]
    asked: list[int] = []
    device_inventory(profile(), nvml=lambda: asked.append(1), amd=lambda: asked.append(2))
    assert asked == []  # no GPU in the profile: no live source is asked


# --------------------------------------------------------------------------- model fit on the inventory
LLAMA8B: dict[str, Any] = {
    "architecture": "llama", "block_count": 32, "head_count": 32, "head_count_kv": 8, "embedding_length": 4096,
    "key_length": 128, "value_length": 128, "feed_forward_length": 14336, "vocab_size": 128256,
    "context_length": 8192, "layer_bytes": [140 * MiB] * 32, "other_bytes": 1000 * MiB, "output_bytes": 500 * MiB,
}  # fmt: skip
FIT_KEYS = {
    "verdict", "weights_host_bytes", "weights_gpu_bytes", "kv_cache_bytes", "compute_bytes", "total_bytes",
    "host_bytes", "repack_bytes", "gpu_bytes", "available_ram_bytes", "available_vram_bytes", "message",
    "output_bytes",  # the logits buffer, now apart from compute_bytes (issue 16)
}  # fmt: skip


@dataclass(frozen=True)
class Rec:
    name: str = "llama8b"
    facts: dict[str, Any] = field(default_factory=lambda: dict(LLAMA8B))


def test_fit_compares_the_offload_with_free_memory() -> None:
    """A 24 GiB card with 3 GiB free: the totals say it fits, the live inventory says it does not."""
    host = profile(GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 4090", "sm_89", 24 * GiB))
    by_total = estimate_fit(Rec(), host, ctx=8192, gpu_layers=99)
    assert by_total.verdict == "fits" and "of 24.00 GiB on GPU 0" in by_total.message
    busy = (GpuDevice("nvidia", 0, "NVIDIA GeForce RTX 4090", 24 * GiB, 3 * GiB, "GPU-z", "nvml"),)
    live = estimate_fit(Rec(), host, ctx=8192, gpu_layers=99, devices=busy)
    assert live.verdict == "does_not_fit"
    assert "of 3.00 GiB free on GPU 0" in live.message
    assert live.gpu_bytes == by_total.gpu_bytes  # the same need, less room
    d = live.to_dict()
    assert d["available_vram_bytes"] == [3 * GiB]
    assert d["gpus"] == [{"vendor": "nvidia", "index": 0, "name": "NVIDIA GeForce RTX 4090", "total_bytes": 24 * GiB,
                          "free_bytes": 3 * GiB, "source": "nvml", "uuid": "GPU-z"}]  # fmt: skip
    assert set(d) == FIT_KEYS | {"gpus"}


def test_fit_splits_layers_by_free_memory_like_llama_cpp() -> None:
    host = profile(GpuInfo("nvidia", 0, "A", "sm_90", 80 * GiB), GpuInfo("nvidia", 1, "A", "sm_90", 80 * GiB))
    devs = (GpuDevice("nvidia", 0, "A", 80 * GiB, 60 * GiB), GpuDevice("nvidia", 1, "A", 80 * GiB, 20 * GiB))
    r = estimate_fit(Rec(), host, ctx=8192, gpu_layers=99, devices=devs)
    assert r.gpu_bytes[0] == pytest.approx(3 * r.gpu_bytes[1], rel=0.01)


def test_fit_on_a_cpu_only_host_keeps_its_shape() -> None:
    r = estimate_fit(Rec(), profile(), ctx=4096, gpu_layers=99)
    assert set(r.to_dict()) == FIT_KEYS and r.devices == ()
    assert "GPU" not in r.message
