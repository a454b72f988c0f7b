"""An instance's GPU memory, as `status` shows it (moved out of serve/instances.py as it was)."""

from __future__ import annotations

from nativellm import run
from nativellm.build.store import Store
from nativellm.hardware.vram import GpuMemory, GpuProcessProbe, process_tree
from nativellm.paths import Paths
from nativellm.serve.observe import gpu_memory_from_log, parse_buffer_sizes
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec


def build_backend(paths: Paths, spec: InstanceSpec) -> str | None:
    """The backend of the build the instance runs; None when that build is gone."""
    store = Store(paths)
    rec = store.current() if spec.build == "current" else store.find(spec.build)
    return rec.backend if rec is not None else None


def instance_gpu_memory(
    paths: Paths, spec: InstanceSpec, st: UnitState | None, probe: GpuProcessProbe
) -> tuple[GpuMemory, ...] | None:
    """The instance's GPU memory: the vendor tools' per-process figures for its process tree,
    else the buffers llama-server reported in its load log. () for an instance that is not
    running, was asked for no GPU layers or runs a CPU build; None when no source tells."""
    if st is None or not st.running or not st.main_pid or spec.gpu_layers == 0:
        return ()
    if build_backend(paths, spec) == "cpu":
        return ()
    found = probe.memory_of(process_tree(st.main_pid))
    if found:
        return tuple(found)
    log_text = load_log(st.main_pid)
    if parse_buffer_sizes(log_text):  # it loaded; what it put on no GPU is on the CPU
        return tuple(gpu_memory_from_log(log_text, spec.gpus))
    return None


def load_log(pid: int) -> str:
    """The buffer lines of the running server's load log: its journal entries by PID (only this
    run of the unit), filtered by journalctl so a long-running server's log is not all read.

    Newer llama.cpp prints these lines only at --log-verbosity 4 or more (it maps llama's INFO
    to its TRACE level); without them this finds nothing and says so by returning ""."""
    argv = ["journalctl", "--no-pager", "-o", "cat", f"_PID={pid}", "--grep", "buffer size|loading model"]
    res = run.probe(argv, timeout=10)
    return res.stdout if res is not None else ""
