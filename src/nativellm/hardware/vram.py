"""GPU memory: per process (what `status` shows for each instance) and per device (the inventory
that `model fit` compares against).

Sources, best first:

- NVIDIA: NVML through `nvidia-ml-py` (imported as `pynvml`). It is pure Python and loads
  libnvidia-ml.so.1 only when asked, so a host without the driver just has no NVML snapshot.
- AMD: `amd-smi process --json`, or `rocm-smi --showpids --json` on older ROCm.
- Any backend (and the only one for Vulkan): llama-server's own buffer lines in its journal
  (parsed in `nativellm.serve.observe`).

Every probe here is total: a missing library, tool or device gives None and a log line, never
an exception. The NVML snapshot is plain data (`NvmlSnapshot`), serialised in the format
`scripts/capture-nvml.py` writes, so that parsing is tested on captured dumps.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.hardware.amd import probe_rocm_vram_usage
from nativellm.hardware.profile import HostProfile

log = logging.getLogger(__name__)

NVML_SCHEMA = "nativellm.nvml/1"
_UNITS = {"B": 1, "KB": 1 << 10, "KIB": 1 << 10, "MB": 1 << 20, "MIB": 1 << 20,
          "GB": 1 << 30, "GIB": 1 << 30, "TB": 1 << 40, "TIB": 1 << 40}  # fmt: skip


@dataclass(frozen=True)
class GpuMemory:
    """GPU memory one instance holds on one device.

    `index` is the host's device index (nvidia-smi / amd-smi / `detect` order, the one `--gpus`
    takes), or None where the source cannot tell the device (rocm-smi --showpids). `device` is
    the backend's name for it: `CUDA<index>`/`ROCm<index>` from the vendor tools, and exactly what
    llama-server printed (`Vulkan0`, `CUDA0`: its own, process-local numbering) from the journal.
    """

    device: str
    index: int | None
    bytes: int
    source: str  # nvml | amd-smi | rocm-smi | llama-server
    name: str | None = None
    uuid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "device": self.device,
            "index": self.index,
            "bytes": self.bytes,
            "source": self.source,
        }
        if self.name is not None:
            d["name"] = self.name
        if self.uuid is not None:
            d["uuid"] = self.uuid
        return d


# --------------------------------------------------------------------------- NVML
@dataclass(frozen=True)
class NvmlProcess:
    pid: int
    used_bytes: int | None  # None: NVML_VALUE_NOT_AVAILABLE (some vGPU/MIG setups)


@dataclass(frozen=True)
class NvmlDevice:
    index: int
    name: str
    uuid: str | None
    total_bytes: int
    free_bytes: int | None
    used_bytes: int | None
    processes: tuple[NvmlProcess, ...] = ()
    compute_capability: str | None = None  # "9.0"


@dataclass(frozen=True)
class NvmlSnapshot:
    """What NVML says about every device and the processes on it, at one moment."""

    driver: str | None
    devices: tuple[NvmlDevice, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": NVML_SCHEMA,
            "driver": self.driver,
            "devices": [
                {
                    "index": d.index,
                    "name": d.name,
                    "uuid": d.uuid,
                    "compute_capability": d.compute_capability,
                    "memory": {"total": d.total_bytes, "free": d.free_bytes, "used": d.used_bytes},
                    "processes": [{"pid": p.pid, "usedGpuMemory": p.used_bytes} for p in d.processes],
                }
                for d in self.devices
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NvmlSnapshot:
        """Read the `nativellm.nvml/1` format (`scripts/capture-nvml.py`). Raises ValueError when malformed."""
        if data.get("schema") != NVML_SCHEMA:
            raise ValueError(f"not a {NVML_SCHEMA} document (schema {data.get('schema')!r})")
        devices = []
        for d in data.get("devices") or []:
            mem = d.get("memory") or {}
            procs = tuple(
                NvmlProcess(int(p["pid"]), _opt_int(p.get("usedGpuMemory"))) for p in d.get("processes") or []
            )
            devices.append(
                NvmlDevice(
                    int(d["index"]),
                    str(d["name"]),
                    d.get("uuid"),
                    int(mem.get("total") or 0),
                    _opt_int(mem.get("free")),
                    _opt_int(mem.get("used")),
                    procs,
                    d.get("compute_capability"),
                )
            )
        return cls(data.get("driver"), tuple(devices))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _running(nv: Any, handle: Any, kind: str) -> list[Any]:
    """nvmlDeviceGet<kind>RunningProcesses: pynvml's unversioned call wants the v3 symbol (drivers
    from about R510); an older driver still answers the v2 one."""
    for getter in (f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"):
        fn = getattr(nv, getter, None)
        if fn is None:
            continue
        try:
            return list(fn(handle))
        except Exception as exc:  # NotSupported on some boards/MIG, or no such symbol in the driver
            log.info("nvml: %s failed: %s", getter, exc)
    return []


def _nvml_processes(nv: Any, handle: Any) -> tuple[NvmlProcess, ...]:
    """Compute and graphics processes (a Vulkan llama-server on an NVIDIA card is listed as
    graphics), one entry per PID; the larger figure wins when a PID is in both lists."""
    found: dict[int, int | None] = {}
    for kind in ("Compute", "Graphics"):
        procs = _running(nv, handle, kind)
        for p in procs:
            pid, used = int(p.pid), _opt_int(getattr(p, "usedGpuMemory", None))
            old = found.get(pid)
            found[pid] = used if old is None else max(old, used or 0)
    return tuple(NvmlProcess(pid, used) for pid, used in sorted(found.items()))


def read_nvml(nv: Any) -> NvmlSnapshot:
    """Query an initialised NVML (`pynvml` or anything shaped like it). NVML errors propagate."""
    try:
        driver: str | None = _text(nv.nvmlSystemGetDriverVersion())
    except Exception:
        driver = None
    devices = []
    for i in range(int(nv.nvmlDeviceGetCount())):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        try:
            uuid: str | None = _text(nv.nvmlDeviceGetUUID(h))
        except Exception:
            uuid = None
        try:
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
            cap: str | None = f"{int(major)}.{int(minor)}"
        except Exception:
            cap = None
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        devices.append(
            NvmlDevice(
                i,
                _text(nv.nvmlDeviceGetName(h)),
                uuid,
                int(mem.total),
                _opt_int(mem.free),
                _opt_int(mem.used),
                _nvml_processes(nv, h),
                cap,
            )
        )
    return NvmlSnapshot(driver, tuple(devices))


def probe_nvml(module: str = "pynvml") -> NvmlSnapshot | None:
    """An NVML snapshot, or None (logged) when nvidia-ml-py or the driver's libnvidia-ml is missing."""
    try:
        nv: Any = importlib.import_module(module)
    except ImportError:
        log.info("nvml: %s is not installed", module)
        return None
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        log.info("nvml: not usable: %s", exc)
        return None
    try:
        return read_nvml(nv)
    except Exception as exc:
        log.info("nvml: query failed: %s", exc)
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def nvml_gpu_memory(snapshot: NvmlSnapshot, pids: Iterable[int]) -> list[GpuMemory]:
    """What these PIDs (an instance's process tree) hold on each NVIDIA device, by NVML."""
    wanted = set(pids)
    out = []
    for d in snapshot.devices:
        used = [p.used_bytes for p in d.processes if p.pid in wanted]
        if not used:
            continue
        if all(u is None for u in used):
            log.info("nvml: GPU %d lists the process but not its memory", d.index)
            continue
        out.append(GpuMemory(f"CUDA{d.index}", d.index, sum(u or 0 for u in used), "nvml", d.name, d.uuid))
    return out


# --------------------------------------------------------------------------- AMD
@dataclass(frozen=True)
class AmdProcess:
    pid: int
    gpu: int | None  # None: rocm-smi --showpids sums over the GPUs a process uses
    vram_bytes: int
    source: str  # amd-smi | rocm-smi


def _amd_bytes(value: Any) -> int | None:
    """amd-smi writes sizes as {"value": N, "unit": "MB"}, a bare number (bytes) or "N MB".
    Its KB/MB/GB are binary: it reports an MI300X's 192 GiB as 196592 MB."""
    unit = "B"
    if isinstance(value, Mapping):
        value, unit = value.get("value"), str(value.get("unit") or "B")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
        if not m:
            return None
        value, unit = m.group(1), m.group(2) or unit
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    scale = _UNITS.get(unit.upper())
    return int(number * scale) if scale is not None else None


def parse_amd_smi_process(text: str) -> list[AmdProcess]:
    """`amd-smi process --json`: a list of {"gpu": N, "process_list": [{"process_info": {...}}]}
    (newer releases wrap it in {"gpu_data": [...]}); an idle GPU lists the string
    "No running processes detected" instead of an object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    if isinstance(data, Mapping):
        data = data.get("gpu_data", [])
    out: list[AmdProcess] = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("gpu"), int):
            continue
        plist = entry.get("process_list", entry.get("processes"))
        for item in plist if isinstance(plist, list) else []:
            info = item.get("process_info", item) if isinstance(item, Mapping) else None
            if not isinstance(info, Mapping):
                continue
            try:
                pid = int(info["pid"])
            except (KeyError, TypeError, ValueError):
                continue
            usage = info.get("memory_usage")
            vram = _amd_bytes(usage.get("vram_mem")) if isinstance(usage, Mapping) else None
            if vram is None:
                vram = _amd_bytes(info.get("vram_mem", info.get("mem_usage")))
            if vram is not None:
                out.append(AmdProcess(pid, entry["gpu"], vram, "amd-smi"))
    return out


def parse_rocm_smi_pids(text: str) -> list[AmdProcess]:
    """`rocm-smi --showpids --json`: {"system": {"PID1234": "name, n_gpus, vram_bytes, sdma, cu"}}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    system = data.get("system") if isinstance(data, Mapping) else None
    out = []
    for key, value in system.items() if isinstance(system, Mapping) else []:
        m = re.fullmatch(r"PID\s*(\d+)", str(key))
        fields = [f.strip() for f in str(value).split(",")]
        if m and len(fields) >= 3 and fields[2].isdigit():
            out.append(AmdProcess(int(m.group(1)), None, int(fields[2]), "rocm-smi"))
    return out


def probe_amd_processes(timeout: float = 10.0) -> list[AmdProcess] | None:
    """Per-process VRAM from amd-smi, else rocm-smi; None when neither tool answers."""
    exe = run.which("amd-smi") or _file("/opt/rocm/bin/amd-smi")
    if exe is not None:
        done = run.probe([exe, "process", "--json"], timeout=timeout)
        if done is not None and done.ok:
            return parse_amd_smi_process(done.stdout)
        log.info("amd: amd-smi process failed%s", f": {done.stderr.strip()}" if done else "")
    exe = run.which("rocm-smi") or _file("/opt/rocm/bin/rocm-smi")
    if exe is not None:
        done = run.probe([exe, "--showpids", "--json"], timeout=timeout)
        if done is not None and done.ok:
            return parse_rocm_smi_pids(done.stdout)
    return None


def _file(path: str) -> str | None:
    return path if Path(path).is_file() else None


def amd_gpu_memory(procs: Sequence[AmdProcess], pids: Iterable[int]) -> list[GpuMemory]:
    wanted = set(pids)
    by_gpu: dict[int | None, tuple[int, str]] = {}
    for p in procs:
        if p.pid in wanted:
            total, _ = by_gpu.get(p.gpu, (0, p.source))
            by_gpu[p.gpu] = (total + p.vram_bytes, p.source)
    return [
        GpuMemory("ROCm" if gpu is None else f"ROCm{gpu}", gpu, total, source)
        for gpu, (total, source) in sorted(by_gpu.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    ]


# --------------------------------------------------------------------------- processes
def process_tree(pid: int, proc: Path = Path("/proc")) -> frozenset[int]:
    """`pid` and all its descendants, from /proc/*/stat (the parent PID is field 4, after the
    parenthesised command name, which may itself hold spaces or parentheses)."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    seen = {pid}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return frozenset(seen)


# --------------------------------------------------------------------------- the device inventory
@dataclass(frozen=True)
class GpuDevice:
    """One GPU of the inventory that `model fit` and `status` share: the profile's device, with
    its free memory where a live source knows it."""

    vendor: str
    index: int
    name: str
    total_bytes: int
    free_bytes: int | None = None
    uuid: str | None = None
    source: str = "profile"  # profile | nvml | rocm-smi

    @property
    def capacity(self) -> int:
        """What a new instance can use: free memory when known, else the total."""
        return self.free_bytes if self.free_bytes is not None else self.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "source": self.source,
        } | ({"uuid": self.uuid} if self.uuid else {})


def profile_devices(profile: HostProfile) -> tuple[GpuDevice, ...]:
    """The profile's GPUs as an inventory with nothing live: total memory only."""
    return tuple(GpuDevice(g.vendor, g.index, g.name, g.memory_bytes) for g in profile.gpus)


def device_inventory(
    profile: HostProfile,
    *,
    nvml: Callable[[], NvmlSnapshot | None] | None = probe_nvml,
    amd: Callable[[], list[tuple[int, int | None]] | None] | None = probe_rocm_vram_usage,
) -> tuple[GpuDevice, ...]:
    """The profile's GPUs, with their free memory where a live source knows it: NVML for the
    NVIDIA ones (matched by index and name), rocm-smi's used VRAM for the AMD ones (by card order,
    the order `detect` already pairs its VRAM sizes with; only when the counts agree).

    Pass `nvml=None, amd=None` for a profile of another machine (`--profile FILE`): its devices
    are not this host's, so nothing live may be mixed in. Each source is asked only when the
    profile has GPUs of its vendor.
    """
    snap = nvml() if nvml is not None and profile.gpus_of("nvidia") else None
    live = {d.index: d for d in snap.devices} if snap is not None else {}
    amd_gpus = profile.gpus_of("amd")
    usage = (amd() or []) if amd is not None and amd_gpus else []
    amd_live = (
        dict(zip((g.index for g in amd_gpus), usage, strict=True)) if len(usage) == len(amd_gpus) else {}
    )
    out = []
    for g in profile.gpus:
        d = live.get(g.index) if g.vendor == "nvidia" else None
        a = amd_live.get(g.index) if g.vendor == "amd" else None
        if d is not None and d.name == g.name:
            out.append(GpuDevice(g.vendor, g.index, g.name, d.total_bytes, d.free_bytes, d.uuid, "nvml"))
        elif a is not None and a[1] is not None:
            total, used = a[0] or g.memory_bytes, a[1]
            out.append(GpuDevice(g.vendor, g.index, g.name, total, max(total - used, 0), None, "rocm-smi"))
        else:
            out.append(GpuDevice(g.vendor, g.index, g.name, g.memory_bytes))
    return tuple(out)


class GpuProcessProbe:
    """Per-process GPU memory for one `status` call: NVML and amd-smi are asked at most once,
    and only when an instance needs them."""

    def __init__(
        self,
        *,
        nvml: Callable[[], NvmlSnapshot | None] = probe_nvml,
        amd: Callable[[], list[AmdProcess] | None] = probe_amd_processes,
    ) -> None:
        self._nvml_fn, self._amd_fn = nvml, amd
        self._nvml: NvmlSnapshot | None = None
        self._amd: list[AmdProcess] | None = None
        self._asked = False

    def _ask(self) -> None:
        if not self._asked:
            self._asked = True
            self._nvml = self._nvml_fn()
            self._amd = self._amd_fn()

    def memory_of(self, pids: Iterable[int]) -> list[GpuMemory]:
        """What the vendor tools say these PIDs hold; [] when they list none of them (or are absent)."""
        self._ask()
        wanted = frozenset(pids)
        found = nvml_gpu_memory(self._nvml, wanted) if self._nvml is not None else []
        return found + (amd_gpu_memory(self._amd, wanted) if self._amd else [])
