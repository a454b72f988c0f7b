#!/usr/bin/env python3
"""Capture what NVML says about this machine's GPUs and the processes on them, as the
`nativellm.nvml/1` JSON that nativellm's NVML reader produces (hardware/vram.py) and that
tests/fixtures/hw/nvml_*.json hold.

Needs only the standard library and nvidia-ml-py (`import pynvml`), so it runs on a GPU machine
without nativellm installed. Run it while a llama-server holds memory on the GPU, and name its
PID so the fixture says which process is the server:

    python3 scripts/capture-nvml.py --pid "$(pgrep -f llama-server)" -o tests/fixtures/hw/nvml_h200.json

Exit codes: 0 written; 2 NVML is not usable here (no nvidia-ml-py, no driver).
Keep `capture` in step with `read_nvml` in src/nativellm/hardware/vram.py: a unit test runs both on
the same fake NVML and compares.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from typing import Any

SCHEMA = "nativellm.nvml/1"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


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
            print(f"capture-nvml: {getter} failed: {exc}", file=sys.stderr)
    return []


def _processes(nv: Any, handle: Any) -> list[dict[str, Any]]:
    found: dict[int, int | None] = {}
    for kind in ("Compute", "Graphics"):
        procs = _running(nv, handle, kind)
        for p in procs:
            pid, used = int(p.pid), _opt_int(getattr(p, "usedGpuMemory", None))
            old = found.get(pid)
            found[pid] = used if old is None else max(old, used or 0)
    return [{"pid": pid, "usedGpuMemory": used} for pid, used in sorted(found.items())]


def capture(nv: Any) -> dict[str, Any]:
    """The snapshot of an initialised NVML (pynvml, or anything shaped like it)."""
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
            {
                "index": i,
                "name": _text(nv.nvmlDeviceGetName(h)),
                "uuid": uuid,
                "compute_capability": cap,
                "memory": {"total": int(mem.total), "free": _opt_int(mem.free), "used": _opt_int(mem.used)},
                "processes": _processes(nv, h),
            }
        )
    return {"schema": SCHEMA, "driver": driver, "devices": devices}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", help="write here (default: stdout)")
    ap.add_argument("--pid", type=int, action="append", default=[], help="a llama-server PID to name")
    args = ap.parse_args(argv)
    try:
        import pynvml as nv
    except ImportError:
        print("capture-nvml: nvidia-ml-py is not installed (pip install nvidia-ml-py)", file=sys.stderr)
        return 2
    try:
        nv.nvmlInit()
    except Exception as exc:
        print(f"capture-nvml: NVML is not usable here: {exc}", file=sys.stderr)
        return 2
    try:
        doc = capture(nv)
        try:
            nvml_version: str | None = _text(nv.nvmlSystemGetNVMLVersion())
        except Exception:
            nvml_version = None
    finally:
        nv.nvmlShutdown()
    doc["captured"] = {
        "by": "scripts/capture-nvml.py",
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "nvml_version": nvml_version,
        "llama_server_pids": args.pid,
    }
    text = json.dumps(doc, indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
