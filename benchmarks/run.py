"""Reproducible benchmark: nativellm's --auto build against the usual alternatives, side by side.

Usage: benchmarks/run.sh [--source DIR] [--repetitions N] [--rounds N] [--only P,...] [--skip P,...] [--fresh]
                        [--render]

Phases, in order (each one's figures go to <work>/measurements.json as soon as it ends, and
RESULTS.md is rewritten from that file after every phase, so an interrupted run keeps what it
measured and `--only` re-measures a part; figures from another llama.cpp tree are dropped):

  builds     build (a) --auto, (b) the generic baseline, (c) --portable, (d) GGML_NATIVE=ON
             through nativellm, from one llama.cpp source (ccache warm when it is)
  cache_hit  `build --auto` again: the cache-hit path
  bench      pp/tg of every build with `nativellm bench builds` (interleaved rounds)
  membw      memory read bandwidth, and tg x model bytes / bandwidth for (a)
  serving    `nativellm bench` against a systemd instance vs the same argv by hand (A B B A,
             both up), start-to-ready and kill -9 recovery (benchmarks/serving.py)
  cold       (a) into an empty store with an empty ccache, then a ccache-warm rebuild with
             one flag changed (--rpc: GGML_RPC=ON)
  naive      what "clone and make" does: llama.cpp's default configure, every target, no ccache

The store is ~/.cache/nativellm-test/sessions/bench (NATIVELLM_BENCH_WORK overrides): the same
depth as the test sessions' stores, so ccache sees the same relative paths and reuses objects.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = Path(
    os.environ.get("NATIVELLM_BENCH_WORK", Path.home() / ".cache" / "nativellm-test" / "sessions" / "bench")
)
MEASUREMENTS = WORK / "measurements.json"
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import serving  # noqa: E402
from membw import read_bandwidth  # noqa: E402

PHASES = ("builds", "cache_hit", "bench", "membw", "serving", "cold", "naive")
VARIANTS = (  # (key, label, build flags); --auto last so it ends up current
    ("b", "baseline (GGML_NATIVE=OFF, AVX2 defaults)", ["--baseline"]),
    ("c", "portable (GGML_CPU_ALL_VARIANTS + GGML_BACKEND_DL)", ["--portable"]),
    ("d", "GGML_NATIVE=ON (-march=native)", ["--native"]),
    ("a", "nativellm --auto", ["--auto"]),
)
SERVING_LOAD = ("--concurrency", "1,4", "--requests", "6", "--prompt-tokens", "128", "--max-tokens", "64")


def cli(*args: str, home: Path = WORK, env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run nativellm with --json; returns its document (or {"ok": False, "error": ...}) and the wall time."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nativellm", *args, "--json"], capture_output=True, text=True,
                          env={**os.environ, "NATIVELLM_HOME": str(home), **(env or {})}, check=False)  # fmt: skip
    seconds = time.monotonic() - t0
    try:
        doc = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        doc = None
    if doc is None:
        lines = proc.stderr.strip().splitlines()
        doc = {"ok": False, "rc": proc.returncode, "error": lines[-1] if lines else f"exit {proc.returncode}"}
    return doc, seconds


def default_source() -> Path:
    sys.path.insert(0, str(HERE.parent))
    from tests.helpers import _fetch_sdist

    return _fetch_sdist()


def bench_model(source: Path, quantize: Path) -> Path:
    from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama

    q = WORK / "bench-0.4b-Q4_K_M.gguf"
    if not q.exists():
        f16 = write_synthetic_llama(WORK / "bench-0.4b-f16.gguf", find_vocab(source), SynthSize.SMALL, seed=1)
        subprocess.run([str(quantize), str(f16), str(q), "Q4_K_M"], check=True, capture_output=True)
        f16.unlink()
    return q


def build_id(m: dict[str, Any], key: str) -> str | None:
    entry: dict[str, Any] = m["phases"].get("builds", {}).get(key, {})
    return entry.get("build_id")


# -- phases ---------------------------------------------------------------------------------------
def phase_builds(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key, label, flags in VARIANTS:
        doc, seconds = cli("build", *flags, "--source", str(source))
        bid = doc["data"]["build_id"] if doc.get("ok") else None
        out[key] = {"label": label, "flags": flags, "build_id": bid, "seconds": seconds,
                    "cached": bool(doc.get("data", {}).get("cached")), "error": doc.get("error")}  # fmt: skip
        print(
            f"  ({key}) {label}: {bid or 'FAILED: ' + str(doc.get('error'))} in {seconds:.0f} s", flush=True
        )
    return out


def phase_cache_hit(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    doc, seconds = cli("build", "--auto", "--source", str(source))
    return {"seconds": seconds, "cached": bool(doc.get("data", {}).get("cached")), "error": doc.get("error")}


def phase_bench(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    ids = [bid for k in ("b", "a", "c", "d") if (bid := build_id(m, k))]  # (b) first: ratios are to it
    if not ids:
        raise RuntimeError("no build to measure: run the builds phase first")
    current = WORK / "data" / "current"
    model = bench_model(source, current / "bin" / "llama-quantize")
    doc, _ = cli("bench", "builds", *ids, "--model", str(model), "-r", str(args.repetitions))
    if "builds" not in doc:
        raise RuntimeError(f"bench builds failed: {doc.get('error')}")
    version = subprocess.run([str(current / "bin" / "llama-server"), "--version"], capture_output=True,
                             text=True, check=False)  # fmt: skip
    return {"model": str(model), "model_bytes": model.stat().st_size, "repetitions": args.repetitions,
            "results": doc["builds"], "llama_version": (version.stdout + version.stderr).strip()}  # fmt: skip


def phase_membw(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {"bytes_per_s": read_bandwidth()}


def phase_serving(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    bid = build_id(m, "a")
    if not bid:
        raise RuntimeError("serving needs build (a): run the builds phase first")
    model = bench_model(source, WORK / "data" / "current" / "bin" / "llama-quantize")
    doc = serving.measure(WORK, model, bid, args.rounds, SERVING_LOAD)
    return {**doc, "summary": serving.summarize(doc)}


def _ccache_stats(ccache_dir: Path) -> dict[str, int]:
    res = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True, check=False,
                         env={**os.environ, "CCACHE_DIR": str(ccache_dir)})  # fmt: skip
    stats = dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)
    hits = int(stats.get("direct_cache_hit", 0)) + int(stats.get("preprocessed_cache_hit", 0))
    return {"hits": hits, "misses": int(stats.get("cache_miss", 0))}


def phase_cold(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    home, ccache_dir = WORK / "cold", WORK / "cold-ccache"
    for d in (home, ccache_dir):
        shutil.rmtree(d, ignore_errors=True)
    env = {"CCACHE_DIR": str(ccache_dir)}
    try:
        cold, cold_s = cli("build", "--auto", "--source", str(source), home=home, env=env)
        if not cold.get("ok"):
            raise RuntimeError(f"cold build failed: {cold.get('error')}")
        cold_stats = _ccache_stats(ccache_dir)
        subprocess.run(
            ["ccache", "--zero-stats"], env={**os.environ, **env}, capture_output=True, check=False
        )
        warm, warm_s = cli("build", "--auto", "--rpc", "--source", str(source), home=home, env=env)
        if not warm.get("ok"):
            raise RuntimeError(f"one-flag rebuild failed: {warm.get('error')}")
        return {"cold_s": cold_s, "cold_ccache": cold_stats, "cold_build_id": cold["data"]["build_id"],
                "one_flag_s": warm_s, "one_flag": "--rpc (GGML_RPC=ON, adds rpc-server)",
                "one_flag_ccache": _ccache_stats(ccache_dir), "one_flag_build_id": warm["data"]["build_id"]}  # fmt: skip
    finally:
        for d in (home, ccache_dir):
            shutil.rmtree(d, ignore_errors=True)


def phase_naive(m: dict[str, Any], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    d = WORK / "naive"
    shutil.rmtree(d, ignore_errors=True)
    jobs = str(os.cpu_count() or 1)
    try:
        t0 = time.monotonic()
        # llama.cpp's own defaults (GGML_NATIVE=ON, tests, examples, tools); ccache off so it is cold.
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(d), "-DGGML_CCACHE=OFF"], check=True, capture_output=True
        )
        subprocess.run(["cmake", "--build", str(d), "-j", jobs], check=True, capture_output=True)
        seconds = time.monotonic() - t0
        executables = sorted(p.name for p in (d / "bin").iterdir() if p.is_file() and os.access(p, os.X_OK))
        return {"seconds": seconds, "jobs": int(jobs), "executables": len(executables)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


RUNNERS: dict[str, Callable[[dict[str, Any], Path, argparse.Namespace], dict[str, Any]]] = {
    "builds": phase_builds, "cache_hit": phase_cache_hit, "bench": phase_bench, "membw": phase_membw,
    "serving": phase_serving, "cold": phase_cold, "naive": phase_naive,
}  # fmt: skip


def _phase_list(text: str | None) -> list[str]:
    names = [p.strip() for p in (text or "").split(",") if p.strip()]
    unknown = [p for p in names if p not in PHASES]
    if unknown:
        sys.exit(f"unknown phase(s) {', '.join(unknown)}; phases: {', '.join(PHASES)}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="llama.cpp tree (default: the test tier's PyPI sdist)")
    ap.add_argument("--repetitions", type=int, default=30, help="interleaved llama-bench rounds")
    ap.add_argument("--rounds", type=int, default=12, help="A B B A serving rounds")
    ap.add_argument("--only", help="run only these phases (comma-separated)")
    ap.add_argument("--skip", help="skip these phases (comma-separated)")
    ap.add_argument("--fresh", action="store_true", help="forget earlier runs' figures")
    ap.add_argument(
        "--render", action="store_true", help="measure nothing: rewrite RESULTS.md from the figures"
    )
    args = ap.parse_args()
    only, skip = _phase_list(args.only), _phase_list(args.skip)
    todo = [p for p in PHASES if (not only or p in only) and p not in skip and not args.render]

    WORK.mkdir(parents=True, exist_ok=True)
    source = (args.source or default_source()).resolve()
    from nativellm.build.source import tree_hash

    tree = tree_hash(source)
    m: dict[str, Any] = {}
    if MEASUREMENTS.exists() and not args.fresh:
        m = json.loads(MEASUREMENTS.read_text())
        if m.get("source", {}).get("tree_sha256") != tree:
            print("earlier figures were for another llama.cpp tree: starting afresh")
            m = {}
    host, _ = cli("detect")
    m.update({"source": {"path": str(source), "tree_sha256": tree}, "host": host})
    m.setdefault("phases", {})

    for name in todo:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            data = RUNNERS[name](m, source, args)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            data = {"failed": str(exc)[-1500:]}
            print(f"  {name} failed: {data['failed']}", flush=True)
        m["phases"][name] = {"at": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
                             "phase_s": time.monotonic() - t0, **data}  # fmt: skip
        MEASUREMENTS.write_text(json.dumps(m, indent=1))
        (HERE / "RESULTS.md").write_text(report.render(m))
    (HERE / "RESULTS.md").write_text(report.render(m))
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
