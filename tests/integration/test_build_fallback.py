"""--auto's fallback: a smoke-test crash with AMX on leads to a rebuild without AMX, recorded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import pytest

from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import build_llama
from nativellm.build.source import SourceRequest
from nativellm.hardware import detect_host
from nativellm.paths import resolve_paths
from tests.helpers import CACHE, break_llama_server

pytestmark = pytest.mark.slow


def test_auto_retries_without_amx_after_a_crash(
    llama_source: Path, trap_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = detect_host()
    if not {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"} <= set(host.cpu.flags):
        pytest.skip(
            "needs an AVX-512 VNNI host: ggml's AMX code needs it, and the rebuilt plan must run here"
        )
    # This host as if its CPU advertised working AMX (as the development VMs of the issue do);
    # the build with AMX really compiles, and its llama-server really dies with SIGILL.
    amx = dataclasses.replace(
        host.cpu, flags=tuple(sorted({*host.cpu.flags, "amx_tile", "amx_int8", "amx_bf16"}))
    )
    monkeypatch.setattr("nativellm.build.pipeline.detect_host", lambda: dataclasses.replace(host, cpu=amx))
    break_llama_server(monkeypatch, trap_binary, when=lambda plan: "amx" in plan.features())
    home = CACHE / "sessions" / f"fallback-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    try:
        outcome = build_llama(
            resolve_paths(), BuildOptions(auto=True, source=SourceRequest(directory=llama_source))
        )
        assert outcome.activated and outcome.record is not None
        assert [f["dropped"] for f in outcome.fallbacks] == ["amx"]
        assert outcome.fallbacks[0]["smoke_test"]["cases"][0]["signal"] == "SIGILL"
        defines = outcome.plan.cmake_defines
        assert defines["GGML_AMX_INT8"] == "OFF" and defines["GGML_AVX512"] == "ON"
        assert "smoke test crashed" in outcome.plan.reasons["GGML_AMX_INT8"]
        manifest = json.loads((outcome.record.path / "manifest.json").read_text())
        assert manifest["fallbacks"][0]["dropped"] == "amx"
        assert "amx_int8" in manifest["probe"]["flags"]  # the probe said yes; the smoke test said no
        assert len(manifest["requested_ids"]) == 2  # the AMX request id maps to this build: a later cache hit
        again = build_llama(
            resolve_paths(), BuildOptions(auto=True, source=SourceRequest(directory=llama_source))
        )
        assert again.cached and again.build_id == outcome.build_id
    finally:
        shutil.rmtree(home, ignore_errors=True)
