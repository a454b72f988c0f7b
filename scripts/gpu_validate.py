#!/usr/bin/env python3
"""Validate a packed CUDA build on a real GPU machine, in one short run; write everything to one file.

    scripts/gpu-validate.sh ARTIFACT [--trusted-key PUB] [--out DIR] [--dry-run] [--shape 7b|tiny]

Steps (each timed, each recorded in DIR/gpu-validate.json as it finishes, so a run cut short still
reports what it did):

1. host       nvidia-smi's view of the GPU, and `nativellm detect --json` (kept as detect.json)
2. install    `nativellm install-artifact`: signature, requirements, unpack, the CUDA runtime
              libraries linked from this host's wheels or toolkit, the smoke test on the GPU
3. model      a synthetic Llama-7B-shape model laid out as Q4_K_M (build.synth), made on the spot
4. bandwidth  device-to-device copy probe (PyTorch, CUDA events): bytes read + written per second
5. bench      llama-bench on the GPU (-ngl 99): pp512 and tg128; tg x bytes read per token, as a
              fraction of the measured bandwidth
6. instance   the instance path: under systemd when this machine runs it (DeviceAllow= hardening,
              readiness, offload), else the unit's own argv in the foreground (`nativellm run`'s
              argv); checks that every layer was offloaded and that a chat completion answers
7. nvml       per-process GPU memory of that llama-server through NVML (scripts/capture-nvml.py),
              saved as nvml_h200.json, the name the NVML tests read a real capture from

--dry-run runs the same script on a machine without a GPU: it reads the artifact's metadata
instead of installing it, makes a tiny model of the same layout, and marks each GPU step
"skipped (dry run)" with what it would have run. Exit status: 0 when every step that ran passed,
1 when one failed, 2 for bad arguments (an artifact that is not a CUDA build, a missing file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess  # noqa: TID251 (a standalone script run on the GPU machine)
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


class Validation:
    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out = out
        self.dry_run = dry_run
        self.results: dict[str, Any] = {
            "schema": "nativellm.gpu-validate/1",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dry_run": dry_run,
            "steps": {},
        }
        self.failed = False

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".gpu-validate.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.out / "gpu-validate.json")

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            data = fn()
            status = data.pop("status", "ok")
        except Exception as exc:  # one step failing must not lose the others' results
            data, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
        if status == "failed":
            self.failed = True
        data["status"] = status
        data["seconds"] = round(time.monotonic() - t0, 2)
        self.results["steps"][name] = data
        self.save()
        print(f"   {status} ({data['seconds']} s): {_brief(data)}", flush=True)
        return data


def _brief(data: dict[str, Any]) -> str:
    keep = {
        k: v for k, v in data.items() if not isinstance(v, (dict, list)) and k not in ("status", "seconds")
    }
    return json.dumps(keep)[:400]


def _run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def _nativellm(args: list[str], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    """Run the CLI from this checkout (python -m nativellm) and return its --json document."""
    done = _run([sys.executable, "-m", "nativellm", *args, "--json"], timeout, env)
    try:
        doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        doc = {"ok": False, "stdout": done.stdout[-2000:]}
    doc["exit"] = done.returncode
    if done.returncode != 0:
        doc["stderr"] = done.stderr[-2000:]
    return doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_health(url: str, proc: subprocess.Popen[str], timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def offload_from_log(text: str) -> dict[str, Any]:
    """What llama.cpp's load log says about offload: layers offloaded and the GPU buffers."""
    m = re.search(r"offloaded (\d+)/(\d+) layers to GPU", text)
    buffers = {
        f"{dev} {kind}": float(mib)
        for dev, kind, mib in re.findall(
            r"(CUDA\d+|Vulkan\d+|ROCm\d+)\s+(model|KV|compute) buffer size\s*=\s*([\d.]+) MiB", text
        )
    }
    devices = re.findall(r"using device (\S+) \(([^)]*)\)", text)
    return {
        "offloaded": int(m.group(1)) if m else None,
        "layers": int(m.group(2)) if m else None,
        "buffers_mib": buffers,
        "devices": [f"{a} ({b})" for a, b in devices],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument(
        "--trusted-key", type=Path, help="public key (artifacts keygen) the artifact is signed with"
    )
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-validate-out")))
    ap.add_argument("--home", type=Path, default=Path("/tmp/nativellm-gpu-validate"))
    ap.add_argument(
        "--shape",
        choices=("tiny", "7b", "13b", "34b"),
        default=None,
        help="model shape (default: 7b; tiny in --dry-run)",
    )
    ap.add_argument(
        "--also", default="", help="more shapes for tg only, e.g. 13b,34b (bandwidth vs overhead)"
    )
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)

    from nativellm.build.artifacts import read_meta
    from nativellm.errors import NativeLLMError

    if not args.artifact.is_file():
        print(
            f"error: no artifact at {args.artifact}\nhint: pass the .tar.zst that `nativellm pack` wrote",
            file=sys.stderr,
        )
        return 2
    try:
        meta = read_meta(args.artifact)
    except NativeLLMError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    req = meta.get("requirements") or {}
    not_cuda = f"{args.artifact.name} is a {req.get('backend')} build, not a CUDA one"
    if req.get("backend") != "cuda" and not args.dry_run:
        print(
            f"error: {not_cuda}\nhint: pack the CUDA cross-build (scripts/cuda-cross-build.sh) and pass that",
            file=sys.stderr,
        )
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    v = Validation(args.out, args.dry_run)
    if req.get("backend") != "cuda":
        v.results["note"] = f"{not_cuda}: a real run refuses it"
    v.results["artifact"] = {
        "file": args.artifact.name,
        "bytes": args.artifact.stat().st_size,
        "build_id": meta.get("build_id"),
        "requirements": req,
    }
    home = args.home
    shutil.rmtree(home, ignore_errors=True)
    env = {
        **os.environ,
        "NATIVELLM_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    state: dict[str, Any] = {}

    def host() -> dict[str, Any]:
        out: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release()}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = _run(
                [smi, "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"], 30
            )
            out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            from nativellm.hardware.nvidia import QUERY_FIELDS

            # The exact query detect runs, kept raw: a captured fixture for the parser's tests.
            raw = _run([smi, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"], 30)
            (args.out / "nvidia_smi_query.csv").write_text(raw.stdout)
        else:
            out["nvidia_smi"] = None
        detect = _nativellm(["detect"], env, 120)
        (args.out / "detect.json").write_text(json.dumps(detect, indent=2) + "\n")
        gpus = detect.get("gpus") or []  # detect --json prints the HostProfile document itself
        out["gpus"] = [f"{g.get('name')} {g.get('arch')}" for g in gpus]
        out["systemd_pid1"] = Path("/run/systemd/system").is_dir()
        if not args.dry_run and not gpus:
            out["status"] = "failed"
            out["error"] = "nativellm detect found no GPU"
        return out

    def install() -> dict[str, Any]:
        if args.trusted_key:
            (home / "config").mkdir(parents=True, exist_ok=True)
            shutil.copy(args.trusted_key, home / "config" / "trusted-keys")
        if args.dry_run:
            return {"status": "skipped (dry run)", "would_run": f"nativellm install-artifact {args.artifact}"}
        got = _nativellm(["install-artifact", str(args.artifact)], env, 400)
        confinement = "default"
        if got["exit"] != 0 and re.search(r"unshare|setpriv|namespaces|confine", got.get("stderr", ""), re.I):
            # This machine can't confine the smoke test (no user namespaces in its sandbox, say): the
            # artifact is our own, so run it unconfined and record that.
            first = got.get("stderr", "")[-600:]
            got = _nativellm(
                ["install-artifact", str(args.artifact)], {**env, "NATIVELLM_SMOKE_CONFINE": "none"}, 400
            )
            confinement = (
                f"none (confined attempt failed: {first.strip().splitlines()[-1] if first.strip() else '?'})"
            )
        data = got.get("data") or {}
        state["build_id"] = data.get("build_id")
        builds = _nativellm(["builds", "list"], env, 60)
        listed = builds.get("builds") or (builds.get("data") or {}).get("builds") or []
        rec = next((b for b in listed if b.get("id") == state["build_id"]), None)
        state["build_dir"] = home / "data" / "builds" / str(state["build_id"])
        manifest = (
            json.loads((state["build_dir"] / "manifest.json").read_text())
            if state["build_dir"].is_dir()
            else {}
        )
        smoke_log = state["build_dir"] / "smoke.log"
        if smoke_log.is_file():
            shutil.copy(smoke_log, args.out / "smoke-on-gpu.log")
        out = {
            "exit": got["exit"],
            "build_id": state["build_id"],
            "activated": data.get("activated"),
            "smoke_test": data.get("smoke_test"),
            "runtime_libs": manifest.get("runtime_libs"),
            "smoke_confinement": confinement,
            "record": rec,
        }
        if got["exit"] != 0:
            out["status"], out["error"] = "failed", got.get("stderr", "")[-1500:]
            out["fallback"] = _unpack_for_measuring(args.artifact, home / "unpacked", state)
        return out

    def model() -> dict[str, Any]:
        from nativellm.build.synth import BENCH_SHAPES, VOCAB_FILE, write_synthetic_q4_k_m

        name = args.shape or ("tiny" if args.dry_run else "7b")
        shape = BENCH_SHAPES[name]
        installed = state.get("build_dir", Path("/nonexistent")) / "share" / "nativellm" / VOCAB_FILE
        vocab = installed if installed.is_file() else _artifact_vocab(args.artifact, home)
        path = Path("/tmp") / f"nativellm-{name}-q4_k_m.gguf"
        write_synthetic_q4_k_m(path, vocab, shape)
        state["vocab"] = vocab
        import gguf

        reader = gguf.GGUFReader(str(path))
        per_token = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
        types = sorted({t.tensor_type.name for t in reader.tensors})
        state["model"], state["bytes_per_token"] = path, per_token
        return {
            "file": str(path),
            "bytes": path.stat().st_size,
            "bytes_read_per_token": per_token,
            "tensor_types": types,
            "n_tensors": len(reader.tensors),
        }

    def bandwidth() -> dict[str, Any]:
        if args.dry_run:
            return {"status": "skipped (dry run)", "would_run": "torch device-to-device copy, 2 GiB x 50"}
        import torch

        n = 2 << 30
        a = torch.empty(n, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        for _ in range(10):
            b.copy_(a)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        iters = 50
        start.record()
        for _ in range(iters):
            b.copy_(a)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
        gbs = 2 * n * iters / seconds / 1e9
        state["bandwidth_gbs"] = gbs
        return {
            "copy_gb_per_s_read_plus_write": round(gbs, 1),
            "bytes": n,
            "iters": iters,
            "device": torch.cuda.get_device_name(0),
        }

    def bench() -> dict[str, Any]:
        exe = state.get("build_dir", Path("/nonexistent")) / "bin" / "llama-bench"
        argv = [
            str(exe),
            "-m",
            str(state.get("model")),
            "-ngl",
            "99",
            "-fa",
            "1",
            "-p",
            "512",
            "-n",
            "128",
            "-r",
            "3",
            "-o",
            "json",
        ]
        if args.dry_run:
            return {"status": "skipped (dry run)", "would_run": " ".join(argv)}
        done = _run(argv, 300)
        if done.returncode != 0:
            return {"status": "failed", "error": done.stderr[-2000:]}
        rows = json.loads(done.stdout)
        out: dict[str, Any] = {"rows": rows}
        for row in rows:
            key = "pp512" if row.get("n_prompt") else "tg128"
            out[f"{key}_tokens_per_s"] = round(float(row["avg_ts"]), 2)
            out["backend"] = row.get("backends") or row.get("backend")
            out["gpu_info"] = row.get("gpu_info")
        tg = out.get("tg128_tokens_per_s")
        if tg and state.get("bandwidth_gbs"):
            achieved = tg * state["bytes_per_token"] / 1e9
            out["tg_bytes_gb_per_s"] = round(achieved, 1)
            out["tg_fraction_of_copy_bandwidth"] = round(achieved / state["bandwidth_gbs"], 3)
        return out

    def scaling() -> dict[str, Any]:
        """tg at more shapes, and the main shape without CUDA graphs: where the time per token goes."""
        from nativellm.build.synth import BENCH_SHAPES, write_synthetic_q4_k_m

        shapes = [x for x in args.also.split(",") if x]
        if args.dry_run or not shapes:
            return {
                "status": "skipped (dry run)" if args.dry_run else "skipped (no --also)",
                "shapes": shapes,
            }
        exe = state.get("build_dir", Path("/nonexistent")) / "bin" / "llama-bench"
        vocab = state["vocab"]
        out: dict[str, Any] = {}

        def tg(model: Path, env: dict[str, str] | None = None) -> float:
            argv = [
                str(exe),
                "-m",
                str(model),
                "-ngl",
                "99",
                "-fa",
                "1",
                "-p",
                "0",
                "-n",
                "128",
                "-r",
                "2",
                "-o",
                "json",
            ]
            done = _run(argv, 300, env)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-1000:])
            return float(json.loads(done.stdout)[0]["avg_ts"])

        no_graphs = tg(state["model"], {**os.environ, "GGML_CUDA_DISABLE_GRAPHS": "1"})
        out["main_shape_tg_without_cuda_graphs"] = round(no_graphs, 2)
        for name in shapes:
            import gguf

            path = Path("/tmp") / f"nativellm-scaling-{name}-q4_k_m.gguf"
            write_synthetic_q4_k_m(path, vocab, BENCH_SHAPES[name])
            reader = gguf.GGUFReader(str(path))
            per_token = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
            del reader
            rate = tg(path)
            path.unlink()
            row: dict[str, Any] = {"bytes_read_per_token": per_token, "tg128_tokens_per_s": round(rate, 2)}
            if state.get("bandwidth_gbs"):
                row["tg_bytes_gb_per_s"] = round(rate * per_token / 1e9, 1)
                row["tg_fraction_of_copy_bandwidth"] = round(
                    rate * per_token / 1e9 / state["bandwidth_gbs"], 3
                )
            out[name] = row
        return out

    def instance() -> dict[str, Any]:
        exe = state.get("build_dir", Path("/nonexistent")) / "bin" / "llama-server"
        port = _free_port()
        argv = [
            str(exe),
            "-m",
            str(state.get("model")),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-ngl",
            "99",
            "-c",
            "4096",
            "-lv",
            "4",  # llama.cpp's load log (offload, buffer sizes) is at INFO, hidden below verbosity 4
        ]
        if args.dry_run:
            return {"status": "skipped (dry run)", "would_run": " ".join(argv)}
        log = args.out / "llama-server-cuda.log"
        with log.open("w") as f:
            proc = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        state["server_pid"] = proc.pid
        out: dict[str, Any] = {
            "mode": "foreground (no systemd as PID 1 here)"
            if not Path("/run/systemd/system").is_dir()
            else "foreground"
        }
        try:
            ready = _wait_health(f"http://127.0.0.1:{port}/health", proc, 180)
            out["ready"] = ready
            out.update(offload_from_log(log.read_text(errors="replace")))
            if ready:
                import urllib.request

                body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=60) as r:
                    answer = json.loads(r.read())
                out["completion_tokens"] = answer.get("usage", {}).get("completion_tokens")
                state["nvml"] = nvml_capture(proc.pid)
            ok = ready and out.get("offloaded") is not None and out["offloaded"] == out["layers"]
            if not ok:
                out["status"] = "failed"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited already (its log says why)
        return out

    def nvml_capture(pid: int) -> dict[str, Any]:
        """scripts/capture-nvml.py while the server holds its memory: the real NVML fixture."""
        target = args.out / "nvml_h200.json"
        capture = REPO / "scripts" / "capture-nvml.py"
        done = _run([sys.executable, str(capture), "--pid", str(pid), "-o", str(target)], 60)
        out: dict[str, Any] = {"exit": done.returncode, "file": target.name, "stderr": done.stderr[-500:]}
        if done.returncode != 0:
            out["status"] = "failed"
            return out
        doc = json.loads(target.read_text())
        mine = [p for d in doc.get("devices", []) for p in d.get("processes", []) if p.get("pid") == pid]
        out["server_pid_bytes"] = sum(int(p.get("usedGpuMemory") or 0) for p in mine)
        return out

    def nvml() -> dict[str, Any]:
        if args.dry_run:
            return {"status": "skipped (dry run)"}
        return state.get("nvml") or {"status": "failed", "error": "no running server to capture"}

    v.step("host", host)
    v.step("install", install)
    v.step("model", model)
    v.step("bandwidth", bandwidth)
    v.step("bench", bench)
    v.step("scaling", scaling)
    v.step("instance", instance)
    v.step("nvml", nvml)
    v.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    v.save()
    return 1 if v.failed else 0


def _unpack_for_measuring(artifact: Path, into: Path, state: dict[str, Any]) -> dict[str, Any]:
    """When the install failed, the measurements still run on the artifact unpacked by the same safe
    extractor, with this host's CUDA runtime linked (recorded; the install step stays failed)."""
    from nativellm.build import cudalibs
    from nativellm.build.artifacts import _extract
    from nativellm.hardware.nvidia import find_nvcc

    try:
        top = _extract(artifact, into)
        manifest = json.loads((top / "manifest.json").read_text())
        major = int((manifest.get("cuda_math") or {}).get("cuda_major", 13))
        linked = cudalibs.link_runtime(top, cudalibs.runtime_lib_dirs(find_nvcc(), major))
    except Exception as exc:
        return {"unpacked": False, "error": f"{type(exc).__name__}: {exc}"}
    state["build_dir"] = top
    return {"unpacked": str(top), "runtime_libs": linked}


def _artifact_vocab(artifact: Path, home: Path) -> Path:
    """The smoke-test vocab GGUF packed in the artifact (share/nativellm/), for a dry run that
    does not install it."""
    import tarfile

    from nativellm.build.artifacts import _stream
    from nativellm.build.synth import VOCAB_FILE

    home.mkdir(parents=True, exist_ok=True)
    with _stream(artifact) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("/share/nativellm/" + VOCAB_FILE):
                f = tar.extractfile(member)
                if f is not None:
                    out = home / VOCAB_FILE
                    out.write_bytes(f.read())
                    return out
    raise tarfile.ReadError(f"{artifact.name} has no {VOCAB_FILE}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
