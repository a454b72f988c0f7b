"""The wheel: pure Python, no llama.cpp compile, cpp/ and systemd/ found as package data."""

from __future__ import annotations

import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Building CXX" not in proc.stdout + proc.stderr, "pip install must not compile llama.cpp"
    (whl,) = out.glob("nativellm-*.whl")
    return whl


def test_wheel_is_pure_and_carries_the_build_recipe(wheel: Path) -> None:
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nativellm/_data/cpp/CMakeLists.txt" in names
    shipped_units = {p.name for p in (ROOT / "systemd").iterdir() if p.is_file()}
    assert {f"nativellm/_data/systemd/{n}" for n in shipped_units} <= set(names)
    assert not [n for n in names if n.endswith((".so", ".o", ".a"))]


def test_installed_wheel_finds_its_package_data(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    probe = (
        "from nativellm.paths import package_data;print(package_data('cpp'));print(package_data('systemd'))"
    )
    res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    cpp, units = (Path(line) for line in res.stdout.split())
    assert venv in cpp.parents and venv in units.parents, res.stdout
    assert (cpp / "CMakeLists.txt").read_text() == (ROOT / "cpp" / "CMakeLists.txt").read_text()


def test_files_run_by_path_work_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """The ISA probe and the health helper are run by path, isolated (-I -S), not imported: after the
    move into hardware/ and serve/ they must still be in the wheel and run with the stdlib alone."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300)  # fmt: skip
    isa = target / "nativellm" / "hardware" / "isa_exec.py"
    health = target / "nativellm" / "serve" / "healthcheck.py"
    assert isa.is_file() and health.is_file()
    if platform.machine() in ("x86_64", "AMD64"):  # the instruction probes exist for x86-64 only
        res = subprocess.run([sys.executable, "-I", "-S", str(isa), "--info"], capture_output=True, text=True)
        assert res.returncode == 0 and "ok base" in res.stdout.splitlines(), res.stdout + res.stderr
    # Nothing listens on port 9: the probe answers "down" with its own exit status, not an ImportError.
    res = subprocess.run(
        [sys.executable, "-I", "-S", str(health), "probe", "--url", "http://127.0.0.1:9/health",
         "--tries", "1", "--timeout", "1", "--pause", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
