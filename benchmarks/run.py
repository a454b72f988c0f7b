"""Reproducible benchmark: nativellm's --auto build against the usual alternatives, side by side.

Usage: benchmarks/run.sh [--source DIR] [--repetitions N] [--naive]

It builds, through nativellm, from one llama.cpp source: (a) --auto, (b) the generic
baseline (what a distro or Docker build gives), (c) --portable (all CPU variants,
loaded at run time: what official images ship), (d) GGML_NATIVE=ON; measures pp/tg of
each with `nativellm bench builds` (interleaved), measures memory bandwidth, and writes
benchmarks/RESULTS.md. Its store is ~/.cache/nativellm-test/sessions/bench (NATIVELLM_BENCH_WORK overrides).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The store sits at the same depth as the test sessions' stores (~/.cache/nativellm-test/sessions/X),
# so ccache sees the same relative paths and reuses their objects.
WORK = Path(
    os.environ.get("NATIVELLM_BENCH_WORK", Path.home() / ".cache" / "nativellm-test" / "sessions" / "bench")
)
sys.path.insert(0, str(HERE))

from membw import read_bandwidth  # noqa: E402

VARIANTS = (  # (key, label, build flags); --auto last so it ends up current
    ("b", "baseline (GGML_NATIVE=OFF, AVX2 defaults)", ["--baseline"]),
    ("c", "portable (GGML_CPU_ALL_VARIANTS + GGML_BACKEND_DL)", ["--portable"]),
    ("d", "GGML_NATIVE=ON (-march=native)", ["--native"]),
    ("a", "nativellm --auto", ["--auto"]),
)


def cli(*args: str, check: bool = True) -> dict[str, Any]:
    env = {**os.environ, "NATIVELLM_HOME": str(WORK)}
    proc = subprocess.run(
        [sys.executable, "-m", "nativellm", *args, "--json"], capture_output=True, text=True, env=env
    )
    if check and proc.returncode != 0:
        sys.exit(f"nativellm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    try:
        return (
            json.loads(proc.stdout) if proc.stdout.strip() else {"ok": False, "stderr": proc.stderr[-2000:]}
        )
    except json.JSONDecodeError:
        return {"ok": False, "stderr": proc.stderr[-2000:]}


def default_source() -> Path:
    sys.path.insert(0, str(HERE.parent))
    from tests.helpers import _fetch_sdist

    return _fetch_sdist()


def bench_model(source: Path, quantize: Path) -> Path:
    from nativellm.synth import SynthSize, find_vocab, write_synthetic_llama

    q = WORK / "bench-0.4b-Q4_K_M.gguf"
    if not q.exists():
        f16 = write_synthetic_llama(WORK / "bench-0.4b-f16.gguf", find_vocab(source), SynthSize.SMALL, seed=1)
        subprocess.run([str(quantize), str(f16), str(q), "Q4_K_M"], check=True, capture_output=True)
        f16.unlink()
    return q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument(
        "--naive", action="store_true", help="also time a default build of every llama.cpp target"
    )
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    source = (args.source or default_source()).resolve()

    builds: dict[str, dict[str, Any]] = {}
    for key, label, flags in VARIANTS:
        t0 = time.monotonic()
        doc = cli("build", *flags, "--source", str(source), check=False)
        builds[key] = {"label": label, "seconds": time.monotonic() - t0, "doc": doc}
        print(f"{key}: {label}: {'ok ' + doc['data']['build_id'] if doc.get('ok') else 'FAILED'}", flush=True)

    t0 = time.monotonic()
    again = cli("build", "--auto", "--source", str(source))
    cache_hit_s = time.monotonic() - t0
    host = json.loads(subprocess.run([sys.executable, "-m", "nativellm", "detect", "--json"],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    current = WORK / "data" / "current"
    model = bench_model(source, current / "bin" / "llama-quantize")
    ok_ids = [
        builds[k]["doc"]["data"]["build_id"] for k in ("b", "a", "c", "d") if builds[k]["doc"].get("ok")
    ]
    bench = cli("bench", "builds", *ok_ids, "--model", str(model), "-r", str(args.repetitions))
    by_id = {b["build_id"]: b for b in bench["builds"]}
    bw = read_bandwidth()

    naive_s = None
    if args.naive:
        d = WORK / "naive"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.monotonic()
        subprocess.run(["cmake", "-S", str(source), "-B", str(d), "-G", "Ninja", "-DLLAMA_USE_PREBUILT_UI=OFF",
                        "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF"], check=True, capture_output=True)  # fmt: skip
        subprocess.run(["cmake", "--build", str(d)], check=True, capture_output=True)
        naive_s = time.monotonic() - t0

    write_results(host, source, builds, by_id, model, bw, cache_hit_s, again, naive_s, args.repetitions)


def write_results(host, source, builds, by_id, model, bw, cache_hit_s, again, naive_s, reps):  # type: ignore[no-untyped-def]
    lines = [
        "# nativellm benchmark results",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}. Produced by `benchmarks/run.sh`.",
        f"Machine: {host['cpu']['model']}, {host['cpu']['physical_cores']} cores, "
        f"{host['memory_bytes'] / 2**30:.1f} GiB; verified flags: {' '.join(f for f in host['cpu']['flags'] if f.startswith(('avx', 'amx', 'fma', 'f16c')))}.",
        f"llama.cpp source: `{source}`. Model: synthetic 0.4B llama, Q4_K_M ({model.stat().st_size / 2**20:.0f} MiB), "
        f"{reps} interleaved repetitions of llama-bench pp256/tg64 per build.",
        "",
        "| build | id | pp256 t/s (min / median / max) | tg64 t/s (min / median / max) | pp vs (b) | tg vs (b) |",
        "|---|---|---|---|---|---|",
    ]
    base = by_id.get(builds["b"]["doc"].get("data", {}).get("build_id", ""), None)
    for key in ("a", "b", "c", "d"):
        entry = builds[key]
        bid = entry["doc"].get("data", {}).get("build_id")
        r = by_id.get(bid) if bid else None
        if r is None or r.get("crashed"):
            why = r["crashed"] if r else "build or smoke test failed"
            lines.append(f"| ({key}) {entry['label']} | {bid or '-'} | crashed: {why} | | | |")
            continue

        def ratio(k: str, r: dict[str, Any] = r) -> str:
            return f"{r[k]['median'] / base[k]['median']:.2f}x" if base else "-"

        lines.append(
            f"| ({key}) {entry['label']} | {bid} | {r['pp']['min']:.1f} / {r['pp']['median']:.1f} / {r['pp']['max']:.1f} "
            f"| {r['tg']['min']:.1f} / {r['tg']['median']:.1f} / {r['tg']['max']:.1f} | {ratio('pp')} | {ratio('tg')} |"
        )
    a = by_id.get(builds["a"]["doc"].get("data", {}).get("build_id", ""))
    lines += ["", f"Memory read bandwidth (multithreaded read loop): {bw / 1e9:.2f} GB/s."]
    if a:
        frac = a["tg"]["median"] * model.stat().st_size / bw
        lines.append(f"tg * model bytes / bandwidth for (a): {frac:.2f} of the physical limit.")
    lines += [
        "",
        "Build times (this run; ccache warm unless the store and ccache were empty):",
        "",
        *(f"- ({k}) {builds[k]['label']}: {builds[k]['seconds']:.0f} s" for k in ("a", "b", "c", "d")),
        f"- cache-hit rebuild of (a): {cache_hit_s:.1f} s ({'cached' if again['data']['cached'] else 'NOT cached'})",
    ]
    if naive_s is not None:
        lines.append(f"- naive default build of every llama.cpp target (no ccache): {naive_s:.0f} s")
    lines += [
        "",
        "Not yet measured by this script: serving overhead (bench against the systemd instance vs the same",
        "argv started by hand) and build-vs-build under systemd. Start-to-ready and recovery after kill -9 are",
        "measured by tests/e2e/test_instances.py against a real systemd; see docs/instances.md.",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
