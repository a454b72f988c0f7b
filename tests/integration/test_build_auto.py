"""Acceptance of the build issue: auto build from the PyPI sdist, cache hit, rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import build_llama
from nativellm.build.plan import PlanOptions
from nativellm.build.source import SourceRequest
from nativellm.build.store import Store
from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from nativellm.client import free_port, wait_ready
from nativellm.errors import SmokeTestError
from nativellm.fsutil import sha256_file
from nativellm.paths import resolve_paths
from tests.helpers import CACHE, CliResult, borrow_build, break_llama_server, nativellm

pytestmark = pytest.mark.slow


def _current(home: Path) -> Path:
    return (home / "data" / "current").resolve()


def _serve_completion(build: Path, model: Path) -> dict[str, object]:
    port = free_port()
    proc = subprocess.Popen(
        [str(build / "bin" / "llama-server"), "-m", str(model), "--port", str(port), "-c", "256", "-t", "2",
         "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        h = wait_ready(base, 120, alive=lambda: proc.poll() is None)
        assert h.status == "ok", f"llama-server not ready: {h}; rc={proc.poll()}"
        r = httpx.post(f"{base}/completion", json={"prompt": "Hello", "n_predict": 6}, timeout=120)
        r.raise_for_status()
        data: dict[str, object] = r.json()
        return data
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_auto_build_is_current_and_serves_quantized_models(
    auto_build: CliResult, session_home: Path, llama_source: Path, tmp_path: Path
) -> None:
    doc = auto_build.json()
    assert doc["ok"] and doc["changed"] and doc["data"]["activated"]
    build_id = doc["data"]["build_id"]
    current = _current(session_home)
    assert current.name == build_id
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["smoke_test"]["passed"] is True
    assert {c["quant"] for c in manifest["smoke_test"]["cases"]} == {"Q4_0", "Q8_0", "Q4_K_M"}
    assert manifest["plan"]["cmake_defines"]["GGML_NATIVE"] == "OFF"
    # The plan's -mtune names reached CMake, which used one it knows (every x86 profile gets some).
    tunes = manifest["plan"]["cmake_defines"].get("NATIVELLM_CPU_TUNE", "")
    used = manifest["cmake"]["cpu_tune"]
    assert (used in tunes.split(",")) if tunes else used == "", (tunes, used)
    # Every recorded binary hash matches what is on disk.
    for rel, digest in manifest["binaries"].items():
        assert sha256_file(current / rel) == digest, rel
    # RPATH layout: bin/ finds lib/ by itself, no LD_LIBRARY_PATH.
    ldd = subprocess.run(
        ["ldd", str(current / "bin" / "llama-server")], capture_output=True, text=True
    ).stdout
    assert "not found" not in ldd
    ours = [line.split("=>")[1].split("(")[0].strip() for line in ldd.splitlines() if "libggml" in line]
    assert ours and all(Path(p).resolve().parent == current / "lib" for p in ours), ldd

    # Independently of the smoke test: the current llama-server serves Q4_0 and Q8_0.
    f16 = write_synthetic_llama(tmp_path / "f16.gguf", find_vocab(llama_source), SynthSize.TINY, seed=7)
    for quant in ("Q4_0", "Q8_0"):
        q = tmp_path / f"{quant}.gguf"
        subprocess.run([str(current / "bin" / "llama-quantize"), str(f16), str(q), quant], check=True,
                       capture_output=True)  # fmt: skip
        data = _serve_completion(current, q)
        assert int(data["tokens_predicted"]) >= 1  # type: ignore[call-overload]


def test_amx_host_gets_a_build_without_amx(auto_build: CliResult, session_home: Path) -> None:
    """On hosts whose CPU advertises AMX the plan or the fallback must avoid llama.cpp's AMX crash."""
    manifest = json.loads((_current(session_home) / "manifest.json").read_text())
    reported = set(manifest["built_on"]["cpu"].get("reported_flags") or manifest["built_on"]["cpu"]["flags"])
    if "amx_int8" not in reported:
        pytest.skip("this CPU does not advertise AMX")
    defines = manifest["plan"]["cmake_defines"]
    if defines.get("GGML_AMX_INT8") == "ON":
        # AMX kept: then the smoke test must have passed with it (a host where AMX works).
        assert manifest["smoke_test"]["passed"]
    else:
        dropped = [f["dropped"] for f in manifest["fallbacks"]]
        why = manifest["plan"]["reasons"]["GGML_AMX_INT8"]
        assert "amx" in dropped or "amx" in why.lower(), (dropped, why)


def test_second_auto_build_is_a_fast_cache_hit(
    auto_build: CliResult, session_home: Path, llama_source: Path
) -> None:
    before = _current(session_home)
    res = nativellm("build", "--auto", "--source", str(llama_source), "--json", home=session_home)
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["data"]["cached"] is True
    assert doc["changed"] is False
    assert doc["data"]["build_id"] == before.name
    assert res.seconds < 5.0, f"cache hit took {res.seconds:.1f}s"
    assert _current(session_home) == before
    human = nativellm("build", "--auto", "--source", str(llama_source), home=session_home)
    assert "already built" in human.stdout


def test_smoke_test_failure_keeps_the_build_out_of_current(
    auto_build: CliResult,
    session_home: Path,
    llama_source: Path,
    trap_binary: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A really compiled build whose llama-server dies with SIGILL never becomes current."""
    # Its own store (at the sessions' depth, for ccache), with the auto build as current: the
    # baseline plan may already be built in the session's store, which would make it a cache hit.
    home = CACHE / "sessions" / f"smoke-fail-{uuid.uuid4().hex[:6]}"
    borrow_build(session_home, home)
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    paths = resolve_paths()
    store = Store(paths)
    before_current, before_ids = store.current_id(), [r.id for r in store.list_builds()]
    break_llama_server(monkeypatch, trap_binary)
    opts = BuildOptions(
        auto=False, plan=PlanOptions(baseline=True), source=SourceRequest(directory=llama_source)
    )
    with pytest.raises(SmokeTestError) as exc:
        build_llama(paths, opts)
    assert exc.value.exit_code == 7
    assert "SIGILL" in exc.value.message and "not activated" in exc.value.message
    assert store.current_id() == before_current
    assert [r.id for r in store.list_builds()] == before_ids
    smoke_logs = list((paths.work).glob("*/smoke/smoke.log"))
    assert smoke_logs and str(smoke_logs[0]) in exc.value.hint
    shutil.rmtree(home, ignore_errors=True)


def test_rollback_restores_the_first_build_exactly(
    auto_build: CliResult, session_home: Path, llama_source: Path
) -> None:
    first = _current(session_home)
    first_manifest = (first / "manifest.json").read_bytes()
    res = nativellm("build", "--baseline", "--source", str(llama_source), "--json", home=session_home)
    assert res.returncode == 0, res.stderr[-3000:]
    second_id = res.json()["data"]["build_id"]
    assert second_id != first.name
    assert _current(session_home).name == second_id
    assert res.json()["data"]["plan"]["cmake_defines"]["GGML_AVX512"] == "OFF"

    rb = nativellm("builds", "rollback", "--json", home=session_home)
    assert rb.returncode == 0, rb.stderr
    assert rb.json()["data"]["current"] == first.name
    assert _current(session_home) == first
    assert (first / "manifest.json").read_bytes() == first_manifest
    manifest = json.loads(first_manifest)
    for rel, digest in manifest["binaries"].items():
        assert sha256_file(first / rel) == digest

    listing = nativellm("builds", "list", "--json", home=session_home).json()
    ids = {b["id"]: b for b in listing["builds"]}
    assert ids[first.name]["current"] and not ids[second_id]["current"]
    # The current build can't be removed; the other one can, and gc keeps current.
    rm_cur = nativellm("builds", "rm", first.name, home=session_home)
    assert rm_cur.returncode == 8 and "is current" in rm_cur.stderr and "Traceback" not in rm_cur.stderr
