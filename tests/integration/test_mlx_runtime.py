"""The MLX runtime for real: pinned mlx[cpu] + mlx-lm installed from PyPI's wheels (cached in the test
cache) into a managed venv, smoke-tested with a real generation, versioned and rolled back; MLX
model directories written by mlx itself, registered or refused through the real CLI (issue 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ggufs import write_gguf

from tests.helpers import CliResult, nativellm
from tests.mlxkit import OLDER_MLX_LM, mlx_wheels, write_tiny_mlx

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlx_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object]]]:
    home = tmp_path_factory.mktemp("mlx") / "home"
    res = nativellm(
        "mlx", "install", "--offline-wheels", str(mlx_wheels()), "--json", home=home, timeout=1200
    )
    assert res.returncode == 0, res.stderr[-3000:]
    yield home, res.json()


def _state(home: Path) -> dict[str, str]:
    """Every file and link under the home (path -> content or link target): "nothing changed"."""
    out = {}
    for p in sorted(home.rglob("*")) if home.exists() else []:
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file() and "/venv/" not in str(p) and p.name != ".lock":  # the lock records its pid
            out[str(p)] = p.read_bytes().hex()[:200] + str(p.stat().st_size)
    return out


def _one_error(res: CliResult, code: int, message: str, progress: bool = False) -> None:
    """One error line and one hint, last; before them only `> stage` progress lines (installs)."""
    lines = res.stderr.splitlines()
    assert res.returncode == code, res.stderr
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and lines[-1].startswith("  hint: "), (
        res.stderr
    )
    assert all(line.startswith("> ") for line in lines[:-2]) if progress else len(lines) == 2, res.stderr
    assert message in lines[-2], lines[-2]


def _mlx_lm_version(python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('mlx-lm'))"
    return subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_install_is_smoke_tested_versioned_and_rolled_back(mlx_home: tuple[Path, dict[str, object]]) -> None:
    home, first = mlx_home
    runtime = first["data"]["runtime"]  # type: ignore[index]
    assert (
        first["changed"] is True and runtime["smoke_test"]["passed"] and runtime["smoke_test"]["tokens"] > 0
    )
    assert runtime["versions"]["mlx"] == "0.32.4" and runtime["versions"]["mlx-lm"] == "0.32.2"
    root = home / "data" / "runtimes" / "mlx"
    current_python = root / "current" / "venv" / "bin" / "python"
    assert _mlx_lm_version(current_python) == "0.32.2"

    again = nativellm("mlx", "install", "--offline-wheels", str(mlx_wheels()), "--json", home=home)
    assert again.returncode == 0 and again.json()["changed"] is False  # the same pins: a cache hit

    older = nativellm("mlx", "install", "--offline-wheels", str(mlx_wheels()), "--mlx-lm", OLDER_MLX_LM, "--json",
                      home=home, timeout=1200)  # fmt: skip
    assert older.returncode == 0, older.stderr[-3000:]
    second = older.json()["data"]["runtime"]
    assert second["id"] != runtime["id"] and second["smoke_test"]["passed"]
    assert _mlx_lm_version(current_python) == OLDER_MLX_LM

    listed = nativellm("mlx", "list", "--json", home=home).json()
    assert listed["current"] == second["id"]
    assert sorted(r["id"] for r in listed["runtimes"]) == sorted([runtime["id"], second["id"]])

    back = nativellm("mlx", "rollback", "--json", home=home)
    assert back.returncode == 0 and back.json()["data"]["runtime"]["id"] == runtime["id"]
    assert _mlx_lm_version(current_python) == "0.32.2"

    forced = nativellm("mlx", "install", "--offline-wheels", str(mlx_wheels()), "--force", "--json", home=home,
                       timeout=1200)  # fmt: skip
    assert forced.returncode == 0 and forced.json()["changed"] is True, forced.stderr[-3000:]
    assert (
        forced.json()["data"]["runtime"]["id"] == runtime["id"]
        and _mlx_lm_version(current_python) == "0.32.2"
    )
    assert not [p for p in root.iterdir() if p.name.startswith((".staging", ".old"))]


def test_a_failed_install_changes_nothing(mlx_home: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    home, _ = mlx_home
    before = _state(home)
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    _one_error(nativellm("mlx", "install", "--python", str(fake), home=home), 11, "cannot run the Python")
    empty = tmp_path / "wheels"
    empty.mkdir()
    res = nativellm("mlx", "install", "--offline-wheels", str(empty), "--force", home=home, timeout=600)
    _one_error(res, 11, "pip could not install", progress=True)
    assert _state(home) == {**before, **{k: v for k, v in _state(home).items() if "/logs/" in k}}


def test_model_add_accepts_a_real_mlx_model_and_refuses_broken_ones(
    mlx_home: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    home, _ = mlx_home
    python = home / "data" / "runtimes" / "mlx" / "current" / "venv" / "bin" / "python"
    model = write_tiny_mlx(tmp_path / "tiny-mlx", python)
    add = nativellm("model", "add", str(model), "--json", home=home)
    assert add.returncode == 0, add.stderr
    facts = add.json()["data"]["model"]["facts"]
    assert facts["format"] == "mlx" and facts["vocab_size"] == 32000 and facts["tokenizer_tokens"] == 32000
    assert nativellm("model", "add", str(model), "--json", home=home).json()["changed"] is False
    assert nativellm("model", "verify", "tiny-mlx", home=home).returncode == 0
    shown = nativellm("model", "inspect", "tiny-mlx", home=home).stdout
    assert "llama" in shown and "layers" in shown

    index = home / "data" / "models" / "index.json"
    before = index.read_bytes()
    no_weights = shutil.copytree(model, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    _one_error(nativellm("model", "add", str(no_weights), home=home), 9, "has no weights")
    mismatched = shutil.copytree(model, tmp_path / "mismatched")
    cfg = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**cfg, "vocab_size": 32001}))
    _one_error(nativellm("model", "add", str(mismatched), home=home), 9, "vocab_size 32001, but")
    assert index.read_bytes() == before


def test_instance_add_refuses_a_wrong_engine_or_a_missing_or_broken_runtime(
    mlx_home: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    home, _ = mlx_home
    env = {"NATIVELLM_UNIT_DIR": str(tmp_path / "units")}
    python = home / "data" / "runtimes" / "mlx" / "current" / "venv" / "bin" / "python"
    model = write_tiny_mlx(tmp_path / "tiny2", python)
    assert nativellm("model", "add", str(model), home=home).returncode == 0
    gguf = write_gguf(tmp_path / "g.gguf")
    assert nativellm("model", "add", str(gguf), "--name", "g", home=home).returncode == 0
    before = _state(home)

    def add(*args: str, h: Path = home) -> CliResult:
        return nativellm("instance", "add", "x", "--no-systemd", "--port", "18700", *args, home=h, env=env)

    _one_error(add("--model", "g", "--engine", "mlx"), 9, "--engine mlx needs an MLX model directory")
    _one_error(
        add("--model", "tiny2", "--engine", "llama"), 9, "llama-server cannot load an MLX model directory"
    )
    assert _state(home) == before and not (tmp_path / "units").exists()

    bare = tmp_path / "bare"  # no runtime installed
    assert nativellm("model", "add", str(model), home=bare).returncode == 0
    _one_error(add("--model", "tiny2", h=bare), 3, "no MLX runtime is installed")
    broken = bare / "data" / "runtimes" / "mlx" / "rt1"  # current, smoke-tested, but mlx_lm is gone
    (broken / "venv" / "bin").mkdir(parents=True)
    (broken / "venv" / "bin" / "python").symlink_to(os.path.realpath("/usr/bin/python3"))
    (broken / "manifest.json").write_text(json.dumps({"id": "rt1", "smoke_test": {"passed": True}}))
    (broken.parent / "current").symlink_to("rt1")
    res = add("--model", "tiny2", h=bare)
    _one_error(res, 8, "the current MLX runtime rt1 is broken: importing mlx_lm fails")
    assert "nativellm mlx install" in res.stderr
    assert not (bare / "config" / "instances").exists() and not (tmp_path / "units").exists()
