"""benchmarks/RESULTS.md from the measurements document that benchmarks/run.py keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import serving
from stats import median_ci

from nativellm.ops.bench import paired_ratios

KEYS = ("a", "b", "c", "d")
TARGETS = (  # (what, threshold): the acceptance figures, checked on every render
    ("(a) pp vs (b)", 1.4),
    ("(a) tg vs (b)", 1.0),
    ("(a) pp vs best other", 0.97),
    ("(a) tg vs best other", 0.97),
)


def _spread(s: dict[str, Any], fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(s[k]) for k in ("min", "median", "max")) if s else "-"


def _ratio(v: dict[str, Any] | None) -> str:
    """'1.74x (0.94 - 2.35; 1.68)': the same-round median, their min - max, and the ratio of medians."""
    if not v or not v["spread"]:
        return "-"
    sp = v["spread"]
    return f"**{v['ratio']:.2f}x** ({sp['min']:.2f} - {sp['max']:.2f}; {v['of_medians']:.2f})"


def _per_round(a: list[float], b: list[float]) -> dict[str, Any]:
    """min / median / max of the same round's ratios a/b, and the 95% interval of their median."""
    sp = paired_ratios(a, b)
    if sp is None:
        return {}
    return {"min": sp.min, "median": sp.median, "max": sp.max, "ci": median_ci(sp.samples)}


def bench_ratios(m: dict[str, Any]) -> dict[str, Any]:
    """Per build: its ratios to (b), and (a)'s to each other build. A ratio is the median of the same round's
    ratios (the builds of a round run back to back, so drift between rounds cancels), with their spread;
    the ratio of the two medians is kept as `of_medians` for reference."""
    builds, bench = m["phases"].get("builds", {}), m["phases"].get("bench", {})
    by_id = {r["build_id"]: r for r in bench.get("results", [])}
    rows = {k: by_id.get(builds.get(k, {}).get("build_id") or "") for k in KEYS}
    ok = {k: r for k, r in rows.items() if r and not r.get("crashed")}
    out: dict[str, Any] = {"rows": rows, "vs_b": {}, "a_vs": {}, "checks": {}}

    def vs(r: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        return {t: {"ratio": (sp := _per_round(r[t]["samples"], base[t]["samples"])).get("median", 0.0),
                    "spread": sp, "of_medians": r[t]["median"] / base[t]["median"]}
                for t in ("pp", "tg")}  # fmt: skip

    base, a = ok.get("b"), ok.get("a")
    if base:
        out["vs_b"] = {k: vs(r, base) for k, r in ok.items()}
    if a:
        out["a_vs"] = {k: vs(a, r) for k, r in ok.items() if k != "a"}
    if a and base:
        for t in ("pp", "tg"):
            out["checks"][f"(a) {t} vs (b)"] = _check(out["vs_b"]["a"][t])
    if out["a_vs"]:
        for t in ("pp", "tg"):  # the best other build is the one (a) does worst against
            out["checks"][f"(a) {t} vs best other"] = _check(min((v[t] for v in out["a_vs"].values()),
                                                                 key=lambda x: x["ratio"]))  # fmt: skip
    return out


def _check(v: dict[str, Any]) -> dict[str, Any]:
    return {"value": v["ratio"], "ci": v["spread"].get("ci")}


def status(value: float, ci: Sequence[float] | None, threshold: float) -> str:
    """met; 'within noise' when the figure is below the threshold but its 95% interval reaches it, so
    this run cannot tell; MISSED when the whole interval is below."""
    if value >= threshold:
        return "met"
    return "within noise" if ci and ci[1] >= threshold else "MISSED"


def render(m: dict[str, Any]) -> str:
    ph = m["phases"]
    host = m.get("host", {})
    cpu = host.get("cpu", {})
    flags = " ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx", "fma", "f16c")))
    bench = ph.get("bench", {})
    lines = [
        "# nativellm benchmark results",
        "",
        "Produced by `benchmarks/run.sh` (phases and their dates below); the raw figures are in the",
        "measurements.json it keeps next to its store. Figures are medians with min / max. Runs are",
        "interleaved, and a ratio is the median of the per-round ratios: the two sides of each one ran",
        "back to back, so the drift of this shared machine between rounds cancels. The per-round min / max",
        "follow it, and the ratio of the two medians, which pairs figures from different rounds, is given",
        "for reference.",
        "",
        "## Machine and source",
        "",
        f"- CPU: {cpu.get('model', '?')}, {cpu.get('physical_cores', '?')} cores ({cpu.get('logical_cores', '?')} threads), "
        f"{host.get('memory_bytes', 0) / 2**30:.1f} GiB RAM",
        f"- verified ISA flags: {flags or '?'}",
        f"- GPUs: {', '.join(g.get('name', '?') for g in host.get('gpus', [])) or 'none'}",
        f"- llama.cpp: `{bench.get('llama_version', '?').splitlines()[0] if bench.get('llama_version') else '?'}`, "
        f"tree sha256 {m['source']['tree_sha256'][:16]}",
        f"- source: `{m['source']['path']}`",
        "",
        "<details><summary>HostProfile (nativellm detect --json)</summary>",
        "",
        "```json",
        _json(host),
        "```",
        "",
        "</details>",
        "",
    ]
    builds = ph.get("builds", {})
    r = bench_ratios(m)
    lines += ["## Builds: prompt processing and generation", ""]
    if bench.get("failed") or not bench:
        lines += [f"Not measured: {bench.get('failed', 'the bench phase has not run')}.", ""]
    else:
        lines += [
            f"{bench['repetitions']} interleaved rounds of llama-bench pp256 / tg64 per build, 2 threads "
            f"(phase run {bench['at']}). Model: synthetic 0.4B llama, Q4_K_M ({bench['model_bytes'] / 2**20:.0f} MiB).",
            "",
            "| build | id | pp256 t/s (min / median / max) | tg64 t/s (min / median / max) | pp vs (b) | tg vs (b) |",
            "|---|---|---|---|---|---|",
        ]
        for k in KEYS:
            entry, row = builds.get(k, {}), r["rows"].get(k)
            label = f"({k}) {entry.get('label', '?')}"
            if row is None or row.get("crashed"):
                why = row["crashed"] if row else (entry.get("error") or "not built")
                lines.append(f"| {label} | {entry.get('build_id') or '-'} | crashed or failed: {why} | | | |")
                continue
            vs = r["vs_b"].get(k, {})

            lines.append(
                f"| {label} | {row['build_id']} | {_spread(row['pp'])} | {_spread(row['tg'])} "
                f"| {_ratio(vs.get('pp'))} | {_ratio(vs.get('tg'))} |"
            )
        lines.append("")
        if r["a_vs"]:
            lines += [
                "(a) against each other build, same-round ratios:",
                "",
                "| (a) vs | pp (per-round min / max; of medians) | tg (per-round min / max; of medians) |",
                "|---|---|---|",
            ]
            lines += [f"| ({k}) | {_ratio(v['pp'])} | {_ratio(v['tg'])} |" for k, v in r["a_vs"].items()]
            lines.append("")
    spreads = [(row[t]["max"] - row[t]["min"]) / row[t]["median"] for row in r["rows"].values()
               if row and not row.get("crashed") for t in ("pp", "tg")]  # fmt: skip
    if spreads:
        lines += [
            f"Run-to-run spread on this machine: (max - min) / median of one build's samples is up to "
            f"{max(spreads):.0%} (median {sorted(spreads)[len(spreads) // 2]:.0%}). Ratios closer to 1 than a "
            "fraction of that are within noise: read the per-round ratio spread before calling a target met or missed.",
            "",
        ]
    membw = ph.get("membw", {})
    if membw.get("bytes_per_s"):
        bw = membw["bytes_per_s"]
        lines.append(f"Memory read bandwidth (multithreaded read loop, best of 5): {bw / 1e9:.2f} GB/s.")
        a = r["rows"].get("a")
        if a and not a.get("crashed") and bench.get("model_bytes"):
            frac = a["tg"]["median"] * bench["model_bytes"] / bw
            lines.append(
                f"tg of (a) x model bytes / bandwidth: **{frac:.2f}** of the memory-bandwidth limit."
            )
        lines.append("")

    lines += ["## Serving overhead: systemd instance vs the same argv by hand", ""]
    sv = ph.get("serving", {})
    if not sv or sv.get("failed"):
        lines += [f"Not measured: {sv.get('failed', 'the serving phase has not run')}.", ""]
    else:
        summ = serving.summarize(sv)  # from the raw legs: the summary stored with them may be older code's
        lines += [
            f"{sv['rounds']} rounds, A B B A, both servers up on two ports, one under load at a time (phase run {sv['at']}); "
            f"systemd: {sv['where']}. Load: `nativellm bench {' '.join(sv['load'])}`, on loopback, from outside.",
            "",
            f"argv (by hand the same, but `--port {sv.get('hand_port', '?')}`): `{' '.join(sv['argv'])}`",
            "",
            "| concurrency | aggregate t/s systemd | aggregate t/s by hand | ratio (per-round min / max; of medians) "
            "| decode t/s/stream ratio | TTFT p50 systemd / by hand (ms) |",
            "|---|---|---|---|---|---|",
        ]
        for conc, e in summ["levels"].items():
            ag, de, tt = e["aggregate_tps"], e["decode_tps_per_stream"], e["ttft_p50_s"]
            lines.append(
                f"| {conc} | {_spread(ag['systemd'])} | {_spread(ag['hand'])} | **{ag['ratio']:.3f}** "
                f"({ag['ratio_spread']['min']:.3f} - {ag['ratio_spread']['max']:.3f}; "
                f"{ag.get('ratio_of_medians') or 0:.3f}) | {de['ratio']:.3f} | "
                f"{tt['systemd']['median'] * 1000:.0f} / {tt['hand']['median'] * 1000:.0f} |"
            )
        t = summ["timing"]

        def sec(key: str) -> str:
            return f"{_spread(t[key], '{:.2f}')} s" if key in t else "-"

        lines += [
            "",
            "Start and recovery (min / median / max):",
            "",
            f"- `nativellm start` until it returns (healthy): {sec('systemd.start_to_ready_s')}; by hand, "
            f"spawn until /health is 200: {sec('hand.start_to_ready_s')}",
            f"- `nativellm start` to the first chat completion: {sec('systemd.start_to_first_completion_s')}; "
            f"by hand: {sec('hand.start_to_first_completion_s')}",
            f"- `kill -9` of llama-server until systemd has it healthy again: {sec('systemd.kill9_to_healthy_s')}; "
            f"to the first completion: {sec('systemd.kill9_to_first_completion_s')}",
            "",
        ]

    lines += ["## Build times", ""]
    cold, naive, hit = ph.get("cold", {}), ph.get("naive", {}), ph.get("cache_hit", {})
    for k in KEYS:
        e = builds.get(k)
        if e:
            state = (
                "already built: a cache hit"
                if e.get("cached")
                else "compiled into the store, smoke test included"
            )
            lines.append(f"- ({k}) {e['label']}: {e['seconds']:.0f} s ({state}; ccache as found)")
    if hit:
        lines.append(f"- cache-hit rebuild of (a) (`build --auto` again): **{hit['seconds']:.1f} s** "
                     f"({'cache hit' if hit.get('cached') else 'NOT a cache hit: ' + str(hit.get('error'))})")  # fmt: skip
    if cold and not cold.get("failed"):
        cc, oc = cold["cold_ccache"], cold["one_flag_ccache"]
        lines += [
            f"- cold build of (a), empty store and empty ccache: **{cold['cold_s']:.0f} s** "
            f"({cc['misses']} compiles) (phase run {cold['at']})",
            f"- ccache-warm rebuild with one flag changed, {cold['one_flag']}: **{cold['one_flag_s']:.0f} s** "
            f"({oc['hits']} objects from ccache, {oc['misses']} compiled)",
        ]
    elif cold:
        lines.append(f"- cold build: failed: {cold['failed']}")
    if naive and not naive.get("failed"):
        ratio = (
            f"; {naive['seconds'] / cold['cold_s']:.1f}x the cold nativellm build"
            if cold.get("cold_s")
            else ""
        )
        lines.append(
            f'- naive "clone and make" (llama.cpp defaults, every target: {naive["executables"]} executables, '
            f"-j{naive['jobs']}, no ccache): **{naive['seconds']:.0f} s**{ratio} (phase run {naive['at']})"
        )
    elif naive:
        lines.append(f"- naive build: failed: {naive['failed']}")
    lines.append("")

    checks = dict(r["checks"])
    if sv.get("systemd"):
        for conc, e in summ["levels"].items():
            ag = e["aggregate_tps"]
            checks[f"serving overhead, concurrency {conc}"] = {"value": ag["ratio"], "ci": ag.get("ratio_ci")}
    lines += [
        "## Targets (issue 6)",
        "",
        "Measured: the same-round median ratio, with the 95% bootstrap interval of that median. A figure below",
        "its threshold whose interval still reaches it is marked within noise: this run cannot tell it from met.",
        "",
        "| target | measured | 95% interval | threshold | |",
        "|---|---|---|---|---|",
    ]
    for what, c in checks.items():
        threshold = dict(TARGETS).get(what, 0.99)
        ci = f"{c['ci'][0]:.3f} - {c['ci'][1]:.3f}" if c.get("ci") else "-"
        lines.append(
            f"| {what} | {c['value']:.3f} | {ci} | >= {threshold} | {status(c['value'], c.get('ci'), threshold)} |"
        )
    if hit:
        lines.append(
            f"| cache-hit rebuild | {hit['seconds']:.1f} s | - | < 5 s | {'met' if hit['seconds'] < 5 and hit.get('cached') else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def _json(host: dict[str, Any]) -> str:
    """The HostProfile, its flag lists on one line each."""
    import json

    cpu = dict(host.get("cpu", {}))
    for key in ("flags", "reported_flags"):
        if isinstance(cpu.get(key), list):
            cpu[key] = " ".join(cpu[key])
    return json.dumps({**host, "cpu": cpu}, indent=1, sort_keys=True)
