"""benchmarks/report.py and serving.summarize: ratios, spreads and the target checks of RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import report
import serving


def _result(bid: str, pp: list[float], tg: list[float], crashed: str | None = None) -> dict[str, Any]:
    def s(xs: list[float]) -> dict[str, Any]:
        return {"min": min(xs), "median": sorted(xs)[len(xs) // 2], "max": max(xs), "samples": xs}

    return {"build_id": bid, "crashed": crashed, "pp": s(pp), "tg": s(tg)}


def _leg(agg: list[float]) -> dict[str, Any]:
    levels = [{"concurrency": c, "aggregate_tps": a, "decode_tps_per_stream": a / c, "ttft_p50_s": 0.1 * c}
              for c, a in zip((1, 4), agg, strict=True)]  # fmt: skip
    return {"bench": {"levels": levels}}


def _measurements(d_crashed: bool = False) -> dict[str, Any]:
    builds = {k: {"label": f"label {k}", "build_id": f"cpu-{k}", "seconds": 10.0, "cached": False}
              for k in "abcd"}  # fmt: skip
    results = [
        _result("cpu-b", [100, 100, 100], [30, 30, 30]),
        _result("cpu-a", [150, 160, 170], [31, 30, 29]),
        _result("cpu-c", [140, 140, 140], [29, 29, 29]),
        _result("cpu-d", [0], [0], crashed="SIGILL")
        if d_crashed
        else _result("cpu-d", [155, 155, 155], [30, 30, 30]),
    ]
    sv = {"where": "sandbox", "argv": ["llama-server", "-m", "x.gguf"], "load": ["--concurrency", "1,4"],
          "rounds": 2, "at": "now",
          "systemd": [_leg([30, 60]), _leg([31, 62])], "hand": [_leg([30, 60]), _leg([30, 61])],
          "lifecycle": {"systemd": [{"start_to_ready_s": 1.0, "kill9_to_healthy_s": 2.0},
                                    {"start_to_ready_s": 1.2, "kill9_to_healthy_s": 2.5}],
                        "hand": [{"start_to_ready_s": 0.9}, {"start_to_ready_s": 1.1}]}}  # fmt: skip
    sv["summary"] = serving.summarize(sv)
    return {
        "source": {"path": "/src", "tree_sha256": "ab" * 32},
        "host": {"cpu": {"model": "Test CPU", "physical_cores": 2, "logical_cores": 2, "flags": ["avx2", "sse4_2"]},
                 "memory_bytes": 2**34, "gpus": []},
        "phases": {
            "builds": builds,
            "cache_hit": {"seconds": 1.2, "cached": True},
            "bench": {"at": "now", "repetitions": 3, "model_bytes": 2**28, "results": results,
                      "llama_version": "version: 1 (abc)\nbuilt with cc"},
            "membw": {"bytes_per_s": 10e9},
            "serving": sv,
        },
    }  # fmt: skip


def test_ratios_are_medians_to_the_baseline_with_per_round_spread() -> None:
    r = report.bench_ratios(_measurements())
    assert r["vs_b"]["a"]["pp"]["ratio"] == pytest.approx(1.6)
    assert r["vs_b"]["a"]["pp"]["spread"] == {"min": 1.5, "median": 1.6, "max": 1.7}
    assert r["checks"]["(a) pp vs best other"] == pytest.approx(160 / 155)
    assert r["checks"]["(a) tg vs best other"] == pytest.approx(30 / 30)


def test_a_crashed_build_is_reported_as_a_crash_and_left_out_of_the_best_other() -> None:
    m = _measurements(d_crashed=True)
    r = report.bench_ratios(m)
    assert "d" not in r["vs_b"]
    assert r["checks"]["(a) pp vs best other"] == pytest.approx(160 / 140)
    text = report.render(m)
    assert "| (d) label d | cpu-d | crashed or failed: SIGILL |" in text


def test_render_flags_a_missed_target_and_reports_bandwidth_fraction() -> None:
    m = _measurements()
    m["phases"]["bench"]["results"][1] = _result("cpu-a", [110, 120, 130], [31, 30, 29])  # 1.2x: below 1.4x
    text = report.render(m)
    assert "| (a) pp vs (b) | 1.200 | >= 1.4 | MISSED |" in text
    assert "| (a) tg vs (b) | 1.000 | >= 1.0 | met |" in text
    assert "| cache-hit rebuild | 1.2 s | < 5 s | met |" in text
    # tg 30 t/s x 256 MiB / 10 GB/s
    assert f"**{30 * 2**28 / 10e9:.2f}** of the memory-bandwidth limit" in text


def test_serving_summary_ratios_and_timings() -> None:
    summ = serving.summarize(_measurements()["phases"]["serving"])
    c1 = summ["levels"]["1"]["aggregate_tps"]
    assert c1["ratio"] == pytest.approx(30.5 / 30)
    assert c1["ratio_spread"]["min"] == pytest.approx(1.0) and c1["ratio_spread"]["max"] == pytest.approx(
        31 / 30
    )
    assert summ["timing"]["systemd.kill9_to_healthy_s"]["median"] == pytest.approx(2.25)
    assert "hand.kill9_to_healthy_s" not in summ["timing"]
    text = report.render(_measurements())
    assert "| serving overhead, concurrency 1 | 1.017 | >= 0.99 | met |" in text


def test_phases_not_run_say_so() -> None:
    m = _measurements()
    del m["phases"]["serving"], m["phases"]["bench"]
    text = report.render(m)
    assert "Not measured: the bench phase has not run." in text
    assert "Not measured: the serving phase has not run." in text


def test_bench_builds_alternates_the_order_of_builds_every_round() -> None:
    from nativellm.bench import round_order

    rounds = [round_order(["a", "b", "c", "d"], r) for r in range(4)]
    assert rounds == [list("abcd"), list("dcba"), list("abcd"), list("dcba")]
    positions = {x: sum(r.index(x) for r in rounds) for x in "abcd"}
    assert len(set(positions.values())) == 1  # every build at every position equally often
