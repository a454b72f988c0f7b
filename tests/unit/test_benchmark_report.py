"""benchmarks/report.py and serving.summarize: ratios, spreads and the target checks of RESULTS.md."""

from __future__ import annotations

from typing import Any

import pytest
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
    assert r["vs_b"]["a"]["pp"]["spread"] == {"min": 1.5, "median": 1.6, "max": 1.7, "ci": [1.5, 1.7]}
    assert r["checks"]["(a) pp vs best other"]["value"] == pytest.approx(160 / 155)
    assert r["checks"]["(a) tg vs best other"]["value"] == pytest.approx(30 / 30)


def test_a_crashed_build_is_reported_as_a_crash_and_left_out_of_the_best_other() -> None:
    m = _measurements(d_crashed=True)
    r = report.bench_ratios(m)
    assert "d" not in r["vs_b"]
    assert r["checks"]["(a) pp vs best other"]["value"] == pytest.approx(160 / 140)
    text = report.render(m)
    assert "| (d) label d | cpu-d | crashed or failed: SIGILL |" in text


def test_render_flags_a_missed_target_and_reports_bandwidth_fraction() -> None:
    m = _measurements()
    m["phases"]["bench"]["results"][1] = _result("cpu-a", [110, 120, 130], [31, 30, 29])  # 1.2x: below 1.4x
    text = report.render(m)
    assert "| (a) pp vs (b) | 1.200 | 1.100 - 1.300 | >= 1.4 | MISSED |" in text
    assert "| (a) tg vs (b) | 1.000 | 0.967 - 1.033 | >= 1.0 | met |" in text
    assert "| cache-hit rebuild | 1.2 s | - | < 5 s | met |" in text
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
    assert "| serving overhead, concurrency 1 | 1.017 | 1.000 - 1.033 | >= 0.99 | met |" in text


def test_phases_not_run_say_so() -> None:
    m = _measurements()
    del m["phases"]["serving"], m["phases"]["bench"]
    text = report.render(m)
    assert "Not measured: the bench phase has not run." in text
    assert "Not measured: the serving phase has not run." in text


def test_bench_builds_alternates_the_order_of_builds_every_round() -> None:
    from nativellm.ops.bench import round_order

    rounds = [round_order(["a", "b", "c", "d"], r) for r in range(4)]
    assert rounds == [list("abcd"), list("dcba"), list("abcd"), list("dcba")]
    positions = {x: sum(r.index(x) for r in rounds) for x in "abcd"}
    assert len(set(positions.values())) == 1  # every build at every position equally often


def test_ratios_pair_figures_of_the_same_round_so_drift_cancels() -> None:
    """A slow spell that hits (a) in one round must not decide the comparison."""
    from nativellm.ops.bench import paired_ratios

    m = _measurements()
    # Rounds 2 and 3 ran twice as fast as round 1 for every build, except that (a) was caught in a slow
    # spell in round 2. Otherwise (a) is 10% ahead of (d) in each round.
    m["phases"]["bench"]["results"][1] = _result("cpu-a", [110, 110, 220], [33, 33, 66])
    m["phases"]["bench"]["results"][3] = _result("cpu-d", [100, 200, 200], [30, 30, 60])
    m["phases"]["bench"]["results"][2] = _result("cpu-c", [50, 100, 100], [15, 15, 30])
    m["phases"]["bench"]["results"][0] = _result("cpu-b", [50, 100, 100], [15, 15, 30])
    r = report.bench_ratios(m)
    assert r["a_vs"]["d"]["pp"]["ratio"] == pytest.approx(1.1)
    assert r["checks"]["(a) pp vs best other"]["value"] == pytest.approx(1.1)
    assert r["checks"]["(a) tg vs best other"]["value"] == pytest.approx(1.1)
    # The ratio of medians pairs (a)'s slow round with (d)'s fast one; it is kept only for reference.
    assert r["a_vs"]["d"]["pp"]["of_medians"] == pytest.approx(0.55)
    s = paired_ratios([110, 220, 66], [100, 200, 60])
    assert s is not None and s.median == pytest.approx(1.1) and s.min == pytest.approx(1.1)
    assert paired_ratios([1.0], [0.0]) is None
    text = report.render(m)
    assert "| (d) | **1.10x** (0.55 - 1.10; 0.55) | **1.10x** (1.10 - 1.10; 1.10) |" in text
    # One slow round in three: the interval of the median reaches down to it.
    assert r["checks"]["(a) pp vs best other"]["ci"] == [pytest.approx(0.55), pytest.approx(1.1)]


def test_a_figure_below_its_threshold_is_within_noise_only_if_its_interval_reaches_it() -> None:
    assert report.status(1.0, [0.9, 1.1], 1.0) == "met"
    assert report.status(0.997, [0.96, 1.03], 1.0) == "within noise"
    assert report.status(0.95, [0.93, 0.98], 0.99) == "MISSED"
    assert report.status(0.95, None, 0.99) == "MISSED"
    from stats import median_ci

    lo, hi = median_ci([1.0] * 20 + [0.5, 1.5])
    assert lo == hi == 1.0  # 20 of 22 rounds agree: the median cannot move
    lo, hi = median_ci([0.9, 1.0, 1.1, 0.95, 1.05])
    assert 0.9 <= lo < 1.0 < hi <= 1.1
    m = _measurements()
    m["phases"]["bench"]["results"][1] = _result("cpu-a", [160, 150, 170], [29, 31, 30])  # tg: 0.97 1.03 1.0
    assert "| (a) tg vs (b) | 1.000 |" in report.render(m)
    m["phases"]["bench"]["results"][1] = _result("cpu-a", [160, 150, 170], [29, 31, 29.9])
    assert "| (a) tg vs (b) | 0.997 | 0.967 - 1.033 | >= 1.0 | within noise |" in report.render(m)


def test_serving_ratio_is_the_median_of_adjacent_legs() -> None:
    sv = _measurements()["phases"]["serving"]
    # One leg of each way ran in a slow spell, in different rounds: two of the three pairs are even, and
    # their median is 1.0; the medians of the two ways (15 and 30) are not.
    sv["systemd"] = [_leg([30, 60]), _leg([15, 30]), _leg([15, 30])]
    sv["hand"] = [_leg([30, 60]), _leg([30, 60]), _leg([15, 30])]
    c1 = serving.summarize(sv)["levels"]["1"]["aggregate_tps"]
    assert c1["ratio_spread"]["median"] == c1["ratio"] == pytest.approx(1.0)
    assert c1["ratio_of_medians"] == pytest.approx(0.5)
