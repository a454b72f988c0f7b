"""`bench builds` (interleaved llama-bench) and `bench --url` (the load generator), for real."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nativellm.build.store import BuildRecord
from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from nativellm.client import free_port, wait_ready
from nativellm.ops.bench import bench_builds
from tests.helpers import CliResult, nativellm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_q4(
    auto_build: CliResult, session_home: Path, llama_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    d = tmp_path_factory.mktemp("bench")
    f16 = write_synthetic_llama(d / "f16.gguf", find_vocab(llama_source), SynthSize.TINY, seed=3)
    q4 = d / "q4.gguf"
    quantize = session_home / "data" / "current" / "bin" / "llama-quantize"
    subprocess.run([str(quantize), str(f16), str(q4), "Q4_0"], check=True, capture_output=True)
    return q4


def test_bench_builds_interleaves_and_reports_ratios(
    auto_build: CliResult, session_home: Path, tiny_q4: Path, llama_source: Path
) -> None:
    # A second build to compare with (ccache makes it cheap; the rollback test may have made it already).
    base = nativellm("build", "--baseline", "--source", str(llama_source), "--json", home=session_home)
    assert base.returncode == 0, base.stderr[-2000:]
    first = auto_build.json()["data"]["build_id"]
    second = base.json()["data"]["build_id"]
    res = nativellm("bench", "builds", first, second, "--model", str(tiny_q4), "-r", "2", "--pp", "32", "--tg", "8",
                    "--json", home=session_home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [b["build_id"] for b in doc["builds"]] == [first, second]
    for b in doc["builds"]:
        assert b["crashed"] is None
        for kind in ("pp", "tg"):
            s = b[kind]
            assert len(s["samples"]) == 2 and all(x > 0 for x in s["samples"])
            assert s["min"] <= s["median"] <= s["max"]
    assert doc["builds"][0]["pp_ratio"] == pytest.approx(1.0)
    for kind in ("pp", "tg"):
        # The ratio is the median of the same round's ratios, and the spread is theirs.
        ours, base = doc["builds"][1][kind]["samples"], doc["builds"][0][kind]["samples"]
        rounds = [x / y for x, y in zip(ours, base, strict=True)]
        spread = doc["builds"][1][f"{kind}_ratio_spread"]
        assert doc["builds"][1][f"{kind}_ratio"] == pytest.approx(sum(rounds) / 2) == spread["median"]
        assert spread["min"] == pytest.approx(min(rounds)) and spread["max"] == pytest.approx(max(rounds))
    # The baseline build above became current; leave the session's auto build current for later tests.
    assert nativellm("builds", "use", first, home=session_home).returncode == 0


def test_a_crashing_build_is_reported_as_a_crash(tmp_path: Path, tiny_q4: Path, trap_binary: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-bench").symlink_to(trap_binary)
    broken = BuildRecord("cpu-broken", tmp_path, "cpu", "", {}, True, {})
    (result,) = bench_builds([broken], tiny_q4, repetitions=2, n_prompt=8, n_gen=2)
    assert result.crashed == "SIGILL" and result.pp.samples == () and result.pp_ratio is None


def test_load_generator_against_a_real_server(session_home: Path, tiny_q4: Path) -> None:
    port = free_port()
    server = session_home / "data" / "current" / "bin" / "llama-server"
    proc = subprocess.Popen([str(server), "-m", str(tiny_q4), "--port", str(port), "-c", "1024", "-np", "2",
                             "-t", "2", "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(url, 60, alive=lambda: proc.poll() is None).status == "ok"
        res = nativellm("bench", "x", "--url", url, "--concurrency", "1,2", "--requests", "4", "--max-tokens", "8",
                        "--prompt-tokens", "32", "--json", home=session_home)  # fmt: skip
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["warmup"]["ok"] and doc["warmup"]["completion_tokens"] == 8
        for level in doc["levels"]:
            assert level["requests"] == 4 and level["errors"] == 0
            assert level["completion_tokens"] == 4 * 8  # ignore_eos: every stream runs to max_tokens
            assert 0 < level["ttft_p50_s"] <= level["ttft_p95_s"]
            assert level["decode_tps_per_stream"] > 0 and level["prompt_tps"] > 0
            assert level["aggregate_tps"] == pytest.approx(level["completion_tokens"] / level["wall_s"])
            # Aggregate can't beat every stream running flat out at once.
            assert level["aggregate_tps"] <= level["decode_tps_per_stream"] * level["concurrency"] * 1.5
        missing = nativellm("bench", "nope", home=session_home)
        assert missing.returncode == 3 and "no instance named 'nope'" in missing.stderr
        # Many short requests on one kept-alive connection: llama-server's HTTP library closes it
        # now and then as the next request goes out (every 6-9 requests here); none may be lost.
        res = nativellm("bench", "x", "--url", url, "--concurrency", "1", "--requests", "30", "--max-tokens", "4",
                        "--prompt-tokens", "16", "--json", home=session_home)  # fmt: skip
        (level,) = json.loads(res.stdout)["levels"]
        assert (level["requests"], level["errors"], level["completion_tokens"]) == (30, 0, 30 * 4), level
    finally:
        proc.terminate()
        proc.wait(30)
