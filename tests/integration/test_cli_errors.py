"""Bad input: one line with a hint, a stable exit code, no traceback, nothing changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nativellm.build.store import Store
from nativellm.paths import resolve_paths
from tests.helpers import CliResult, nativellm

PROFILES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


def _one_line_error(res: CliResult, code: int, needle: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and needle in lines[errors[0]], res.stderr
    assert lines[errors[0] + 1].strip().startswith("hint: "), res.stderr


def test_version_and_module_entry(tmp_path: Path) -> None:
    res = nativellm("--version", home=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("nativellm ")


def test_unknown_backend(tmp_path: Path) -> None:
    _one_line_error(nativellm("plan", "--backend", "tpu", home=tmp_path), 2, "unknown backend 'tpu'")


def test_impossible_plan_names_the_fix(tmp_path: Path) -> None:
    res = nativellm("plan", "--profile", str(PROFILES / "blackwell-cuda124.json"), home=tmp_path)
    _one_line_error(res, 4, "12.8")
    js = nativellm("plan", "--profile", str(PROFILES / "blackwell-cuda124.json"), "--json", home=tmp_path)
    doc = json.loads(js.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "plan" and doc["error"]["exit_code"] == 4


def test_missing_profile_and_missing_source(tmp_path: Path) -> None:
    _one_line_error(
        nativellm("plan", "--profile", str(tmp_path / "nope.json"), home=tmp_path), 3, "does not exist"
    )
    res = nativellm("build", "--source", str(tmp_path / "no-such-dir"), home=tmp_path)
    _one_line_error(res, 3, "does not exist")
    assert not (tmp_path / "data" / "builds").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = nativellm("--debug", "plan", "--profile", str(tmp_path / "nope.json"), home=tmp_path)
    assert res.returncode == 3 and "Traceback" in res.stderr


def test_wrong_tarball_sha256_changes_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "ggml").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(x)\n")
    archive = tmp_path / "llama.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="llama.cpp")
    res = nativellm("build", "--tarball", str(archive), "--sha256", "ab" * 32, home=tmp_path)
    _one_line_error(res, 5, "sha256")
    assert Store(resolve_paths_for(tmp_path)).list_builds() == []


def resolve_paths_for(home: Path):  # type: ignore[no-untyped-def]
    os.environ["NATIVELLM_HOME"] = str(home)
    try:
        return resolve_paths()
    finally:
        del os.environ["NATIVELLM_HOME"]


def test_no_compiler_is_a_toolchain_error(tmp_path: Path, llama_source: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    res = nativellm(
        "build", "--dry-run", "--source", str(llama_source), home=tmp_path, env={"PATH": str(bare)}
    )
    _one_line_error(res, 11, "no C/C++ compiler")


def test_busy_build_lock(tmp_path: Path, llama_source: Path) -> None:
    store = Store(resolve_paths_for(tmp_path))
    with store.lock():
        res = nativellm("build", "--source", str(llama_source), home=tmp_path)
    _one_line_error(res, 12, "another nativellm build is running")


@pytest.mark.slow
def test_ctrl_c_during_compile_leaves_the_store_untouched(tmp_path: Path, llama_source: Path) -> None:
    # PYTHONFAULTHANDLER: if it ever hangs, SIGABRT makes it print where every thread is.
    env = {**os.environ, "NATIVELLM_HOME": str(tmp_path), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nativellm", "build", "--baseline", "--source", str(llama_source)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        # As from an interactive shell's foreground: a background job (`scripts/test.sh &`) inherits SIGINT
        # ignored, and then Ctrl-C rightly reaches nobody.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # readiness: wait until the compile step has started
        if "> compile" in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"no exit 60 s after Ctrl-C; its threads:\n{proc.stderr.read()[-6000:]}")
    err = proc.stderr.read()  # the same buffered reader: communicate() would skip its buffer
    proc.stderr.close()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    store = Store(resolve_paths_for(tmp_path))
    assert store.list_builds() == [] and store.current_id() is None
    # The compiler processes are gone with it.
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "data" / "work")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_full_disk_is_refused_before_compiling(
    tmp_path: Path, llama_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil as real_shutil

    from nativellm.build.options import BuildOptions
    from nativellm.build.pipeline import build_llama
    from nativellm.build.source import SourceRequest
    from nativellm.errors import ResourceError

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        "nativellm.build.pipeline.shutil.disk_usage",
        lambda p: type(usage)(usage.total, usage.total - (100 << 20), 100 << 20),
    )
    paths = resolve_paths_for(tmp_path)
    with pytest.raises(ResourceError, match="MiB free") as exc:
        build_llama(paths, BuildOptions(source=SourceRequest(directory=llama_source)))
    assert exc.value.exit_code == 12 and "gc" in exc.value.hint
    assert not paths.work.exists() and Store(paths).list_builds() == []
