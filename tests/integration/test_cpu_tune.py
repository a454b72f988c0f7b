"""cpp/CMakeLists.txt applies the plan's NATIVELLM_CPU_TUNE to ggml's CPU backend, and only there.

Configure-only runs of the real superbuild over the sdist's llama.cpp: compile_commands.json shows what
every source file would be compiled with, without compiling anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CPP = Path(__file__).resolve().parents[2] / "cpp"
CMAKE = Path(sys.executable).with_name("cmake")

pytestmark = pytest.mark.slow


def _configure(build: Path, source: Path, tune: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    proc = subprocess.run(
        [str(CMAKE), "-G", "Ninja", "-S", str(CPP), "-B", str(build), "-Wno-dev",
         f"-DCMAKE_MAKE_PROGRAM={Path(sys.executable).with_name('ninja')}",
         "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", f"-DNATIVELLM_LLAMA_SOURCE={source}",
         f"-DNATIVELLM_CPU_TUNE={tune}", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON",
         "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = json.loads((build / "compile_commands.json").read_text())
    stamp = json.loads((build / "nativellm-cmake.json").read_text())
    return proc.stdout + proc.stderr, commands, stamp


def _tunes(commands: list[dict[str, Any]]) -> dict[str, set[str]]:
    """source file -> the -mtune options its command carries."""
    return {c["file"]: {a for a in c["command"].split() if a.startswith("-mtune")} for c in commands}


def test_first_name_the_compiler_knows_tunes_ggml_cpu_only(llama_source: Path, tmp_path: Path) -> None:
    _, commands, stamp = _configure(tmp_path / "b", llama_source, "no-such-cpu,cascadelake")
    tunes = _tunes(commands)
    cpu_files = [f for f in tunes if "/ggml-cpu/" in f]
    assert cpu_files, "ggml-cpu sources missing from compile_commands.json"
    assert all(tunes[f] == {"-mtune=cascadelake"} for f in cpu_files)
    others = [f for f in tunes if "/ggml-cpu/" not in f]
    assert others and not any(tunes[f] for f in others), "tuning leaked past ggml-cpu"
    assert stamp["cpu_tune"] == "cascadelake"


def test_a_name_the_compiler_does_not_know_keeps_default_tuning(llama_source: Path, tmp_path: Path) -> None:
    out, commands, stamp = _configure(tmp_path / "b", llama_source, "no-such-cpu")
    assert "knows none of -mtune=no-such-cpu" in out
    assert not any(_tunes(commands).values())
    assert stamp["cpu_tune"] == ""
