"""--auto's fallback: a smoke-test crash leads to a rebuild without the suspect ISA family, recorded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import pytest

from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import build_llama
from nativellm.build.plan import BuildPlan
from nativellm.build.source import SourceRequest
from nativellm.hardware import detect_host
from nativellm.hardware.cpu import is_x86
from nativellm.paths import resolve_paths
from tests.helpers import CACHE, break_llama_server

pytestmark = pytest.mark.slow


AVX512_VNNI = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"}
AMX = {"amx_tile", "amx_int8", "amx_bf16"}


def _families(flags: set[str]) -> set[str]:
    return {f for f in flags if f.startswith(("avx512", "amx"))}


@pytest.mark.parametrize("cpu", ["this-cpu", "cpu-without-avx512"])
def test_auto_retries_without_amx_after_a_crash(
    cpu: str, llama_source: Path, trap_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs on every x86-64 host: the crashes are injected, so no CPU feature is needed to prove it.

    The profile advertises AMX (as the development VMs of DESIGN.md section 6 do), and the build with
    AMX really compiles, then its llama-server dies with SIGILL. On a CPU without AVX-512 (really, or
    as "cpu-without-avx512" pretends) the AVX-512 rebuild would die too, so that crash is injected as
    well, and the build must end on the third plan, without either family.
    """
    host = detect_host()
    if not is_x86(host.arch):
        pytest.skip("AMX and AVX-512 are x86-64 ISA families")
    real = set(host.cpu.flags)
    has_avx512 = cpu == "this-cpu" and real >= AVX512_VNNI
    base = real if has_avx512 else real - _families(real)
    advertised = dataclasses.replace(host.cpu, flags=tuple(sorted(base | AVX512_VNNI | AMX)))
    monkeypatch.setattr(
        "nativellm.build.pipeline.detect_host", lambda: dataclasses.replace(host, cpu=advertised)
    )

    def crashes(plan: BuildPlan) -> bool:
        return "amx" in plan.features() or ("avx512" in plan.features() and not has_avx512)

    break_llama_server(monkeypatch, trap_binary, when=crashes)
    dropped = ["amx"] if has_avx512 else ["amx", "avx512"]
    home = CACHE / "sessions" / f"fallback-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    try:
        outcome = build_llama(
            resolve_paths(), BuildOptions(auto=True, source=SourceRequest(directory=llama_source))
        )
        assert outcome.activated and outcome.record is not None
        assert [f["dropped"] for f in outcome.fallbacks] == dropped
        assert all(f["smoke_test"]["cases"][0]["signal"] == "SIGILL" for f in outcome.fallbacks)
        defines = outcome.plan.cmake_defines
        assert defines["GGML_AMX_INT8"] == "OFF"
        assert defines["GGML_AVX512"] == ("ON" if has_avx512 else "OFF")
        assert "smoke test crashed" in outcome.plan.reasons["GGML_AMX_INT8"]
        assert not crashes(outcome.plan) and outcome.record.smoke_passed
        manifest = json.loads((outcome.record.path / "manifest.json").read_text())
        assert manifest["fallbacks"][0]["dropped"] == "amx"
        assert "amx_int8" in manifest["probe"]["flags"]  # the probe said yes; the smoke test said no
        # every crashed request id maps to this build: a later cache hit
        assert len(manifest["requested_ids"]) == len(dropped) + 1
        again = build_llama(
            resolve_paths(), BuildOptions(auto=True, source=SourceRequest(directory=llama_source))
        )
        assert again.cached and again.build_id == outcome.build_id
    finally:
        shutil.rmtree(home, ignore_errors=True)
