"""scripts/gpu-validate.sh, the GPU validation for a lent GPU machine, in its dry run: on this GPU-less
machine it reads a real packed artifact, makes the model the real run would measure (same Q4_K_M
layout, tiny shape) and records every step in its results file. The model is then served by the
session's real llama-server, so the layout the GPU run relies on is one llama.cpp loads and runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest

from tests.helpers import CliResult, nativellm

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = ["host", "install", "model", "bandwidth", "bench", "scaling", "instance", "nvml"]


@pytest.fixture(scope="module")
def artifact(auto_build: CliResult, session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-validate-artifact")
    build_id = auto_build.json()["data"]["build_id"]
    res = nativellm("pack", build_id, "-o", str(out), "--json", home=session_home)
    assert res.returncode == 0, res.stderr
    return Path(res.json()["data"]["file"])


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "gpu-validate.sh"), *args], capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(Path.home())},
    )  # fmt: skip


def test_dry_run_records_every_step_and_makes_the_q4_k_m_model(artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _validate(str(artifact), "--dry-run", "--out", str(out), "--home", str(tmp_path / "home"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu-validate.json").read_text())
    assert results["dry_run"] is True and sorted(results["steps"]) == sorted(STEPS)
    steps: dict[str, Any] = results["steps"]
    assert "not a CUDA one" in results["note"]  # the session build is a CPU build: a real run refuses it
    for gpu_step in ("install", "bandwidth", "bench", "scaling", "instance", "nvml"):
        assert steps[gpu_step]["status"] == "skipped (dry run)", steps[gpu_step]
    assert "-ngl 99" in steps["bench"]["would_run"] and "llama-bench" in steps["bench"]["would_run"]
    assert steps["host"]["status"] == "ok" and (out / "detect.json").is_file()
    model = steps["model"]
    assert model["status"] == "ok" and model["tensor_types"] == ["F32", "Q4_K", "Q6_K"]
    reader = gguf.GGUFReader(model["file"])
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    # Q4_K_M's recipe: Q6_K for output and for attn_v/ffn_down of the layers use_more_bits picks.
    # In 2 layers (tiny), use_more_bits(i, 2) picks layer 1 (i >= 7n/8) and not layer 0.
    assert kinds["output.weight"] == "Q6_K" and kinds["blk.1.attn_v.weight"] == "Q6_K"
    assert kinds["blk.0.attn_v.weight"] == "Q4_K" and kinds["blk.1.ffn_down.weight"] == "Q6_K"
    assert kinds["blk.0.attn_q.weight"] == "Q4_K" and kinds["token_embd.weight"] == "Q4_K"
    assert model["bytes_read_per_token"] < model["bytes"]


def test_the_synthetic_q4_k_m_model_runs_in_real_llama_bench(
    auto_build: CliResult, session_home: Path, tmp_path: Path
) -> None:
    """The layout the GPU run measures is one llama.cpp loads and runs: the session's real llama-bench."""
    from nativellm.build.synth import VOCAB_FILE, SynthSize, write_synthetic_q4_k_m

    build_dir = session_home / "data" / "builds" / auto_build.json()["data"]["build_id"]
    model = write_synthetic_q4_k_m(
        tmp_path / "m.gguf", build_dir / "share" / "nativellm" / VOCAB_FILE, SynthSize.TINY.shape
    )
    done = subprocess.run(
        [str(build_dir / "bin" / "llama-bench"), "-m", str(model), "-p", "16", "-n", "16", "-r", "1", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert {r["n_gen"] for r in rows} == {0, 16} and all(r["avg_ts"] > 0 for r in rows)
    assert rows[0]["model_type"].startswith("llama") and "Q4_K" in rows[0]["model_type"]


def test_a_real_run_refuses_an_artifact_that_is_not_cuda(artifact: Path, tmp_path: Path) -> None:
    done = _validate(str(artifact), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "not a CUDA one" in done.stderr and "hint: " in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was started or written


def test_a_missing_artifact_is_a_usage_error(tmp_path: Path) -> None:
    done = _validate(str(tmp_path / "nope.tar.zst"), "--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "error: no artifact at" in done.stderr and "hint:" in done.stderr
