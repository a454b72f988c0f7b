"""Issue 14 through the real CLI: unit-directive injection, malformed specs and manifests,
non-UTF-8 arguments, a read-only store, git option injection, pins, and the exit codes of a
busy port and of `logs` for a missing instance. Each case: the documented exit code, one
`error:` line and a `hint:`, no traceback, and the home directory unchanged (hashed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ggufs import write_gguf

from nativellm.build import source
from nativellm.errors import SourceError
from tests.helpers import CliResult, nativellm

INJECT = "\r[Service]\rExecStartPre=+/bin/sh -c 'touch /tmp/pwned'"


def _one_line_error(res: CliResult, code: int, needle: str = "") -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and needle in lines[errors[0]], res.stderr
    assert lines[errors[0] + 1].strip().startswith("hint: "), res.stderr


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and link under root, hashed: a refused command must leave all of them as they were."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


def _build(home: Path, build_id: str, created: str) -> Path:
    d = home / "data" / "builds" / build_id
    (d / "bin").mkdir(parents=True)
    for binary in ("llama-server", "rpc-server"):
        (d / "bin" / binary).write_text("#!/bin/sh\nexit 0\n")
        (d / "bin" / binary).chmod(0o755)
    manifest = {
        "id": build_id,
        "created": created,
        "plan": {"backend": "cpu"},
        "smoke_test": {"passed": True},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """A store with two fake builds (cpu-new current) and a unit dir inside it."""
    h = tmp_path / "home"
    _build(h, "cpu-abc123", "2026-01-01")
    _build(h, "cpu-new", "2026-01-02")
    (h / "data" / "current").symlink_to("builds/cpu-new")
    yield h


def _cli(home: Path, *args: str) -> CliResult:
    return nativellm(*args, home=home, env={"NATIVELLM_UNIT_DIR": str(home / "units")}, timeout=120)


# --------------------------------------------------------------------------- finding 3: injection
@pytest.mark.parametrize(
    "flags",
    [
        ["--memory-max", "8G" + INJECT],
        ["--memory-max", "lots"],  # accepted before, then silently ignored by systemd
        ["--cpus", "0-3" + INJECT],
        ["--cpus", "1\nCPUQuota=1000%"],
        ["--api-key-file", "/etc/hostname" + INJECT],
        ["--model", "/models/m.gguf" + INJECT],
        ["--host", "127.0.0.1" + INJECT],
        ["--build", "cpu-new" + INJECT],
        ["--rpc", "127.0.0.1:50052" + INJECT],
        ["--", "--ctx-size", "1" + INJECT],
    ],
    ids=lambda f: f[0] + ("-lots" if "lots" in f else ""),
)
@pytest.mark.parametrize("command", ["add", "edit"])
def test_injection_through_each_flag_is_refused(home: Path, command: str, flags: list[str]) -> None:
    before = _snapshot(home)
    model = [] if "--model" in flags else ["--model", "m"]
    res = _cli(home, "instance", command, "q4", *model, "--no-systemd", *flags)
    _one_line_error(res, 2)
    assert _snapshot(home) == before
    assert not Path("/tmp/pwned").exists()


def test_a_hand_edited_spec_with_a_carriage_return_never_reaches_a_unit(home: Path) -> None:
    spec = home / "config" / "instances" / "q4.toml"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        'name = "q4"\nmodel = "m"\nport = 8080\nmemory_max = "8G\\r[Service]\\rExecStartPre=/bin/true"\n'
    )
    before = _snapshot(home)
    for args in (
        ["instance", "show", "q4"],
        ["instance", "list"],
        ["instance", "edit", "q4", "--ctx", "512", "--no-systemd"],
    ):
        _one_line_error(_cli(home, *args), 10, f"{spec}: --memory-max")
    assert _snapshot(home) == before


# --------------------------------------------------------------------------- malformed specs
@pytest.mark.parametrize(
    ("line", "key"), [('port = "abc"', "port"), ("ctx = 1.5", "ctx"), ('gpus = "0"', "gpus")]
)
def test_a_spec_value_of_the_wrong_type_names_the_file_and_key(home: Path, line: str, key: str) -> None:
    spec = home / "config" / "instances" / "q4.toml"
    spec.parent.mkdir(parents=True)
    base = {"name": '"q4"', "model": '"m"', "port": "8080"}
    base.pop(key, None)
    spec.write_text("".join(f"{k} = {val}\n" for k, val in base.items()) + line + "\n")
    before = _snapshot(home)
    for args in (["instance", "show", "q4"], ["instance", "list"], ["status", "q4"]):
        _one_line_error(_cli(home, *args), 10, f"{spec}: key '{key}'")
    assert _snapshot(home) == before


def test_a_directory_where_a_spec_file_should_be(home: Path) -> None:
    (home / "config" / "instances" / "q4.toml").mkdir(parents=True)
    (home / "config" / "rpc-workers" / "w1.toml").mkdir(parents=True)
    before = _snapshot(home)
    for args in (["instance", "show", "q4"], ["instance", "list"], ["instance", "add", "q4", "--model", "m"]):
        _one_line_error(_cli(home, *args), 10, "is a directory")
    _one_line_error(_cli(home, "instance", "rm-rpc-worker", "w1", "--no-systemd"), 10, "is a directory")
    assert _snapshot(home) == before


# --------------------------------------------------------------------------- arguments, exit codes
@pytest.mark.parametrize(
    "args",
    [
        ["model", "add", "\udcff"],
        ["instance", "add", "q\udcff4", "--model", "m"],
        ["model", "add", "/tmp/x\udcfe.gguf"],
    ],
)
def test_non_utf8_arguments_are_a_usage_error(home: Path, args: list[str]) -> None:
    before = _snapshot(home)
    res = _cli(home, *args)  # subprocess encodes the surrogates back to the raw bytes \xff, \xfe
    _one_line_error(res, 2, "is not valid UTF-8")
    assert _snapshot(home) == before


def test_logs_of_a_missing_instance_exits_3(home: Path) -> None:
    _one_line_error(_cli(home, "logs", "nosuch"), 3, "no instance named 'nosuch'")


def test_a_port_in_use_exits_12_as_the_readme_says(home: Path, tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = _snapshot(home)
        res = _cli(home, "instance", "add", "q4", "--model", str(model), "--port", str(port), "--no-systemd")
        _one_line_error(res, 12, f"port {port} is in use")
        assert _snapshot(home) == before
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert (
        "| 12 | resource |" in readme
        and "port in use" in readme.split("| 12 | resource |")[1].splitlines()[0]
    )


# --------------------------------------------------------------------------- finding 7: pins
def test_pins_by_abbreviated_id_and_by_rpc_worker_survive_rm_and_gc(home: Path, tmp_path: Path) -> None:
    _build(home, "cpu-rpc999", "2026-01-03")
    _build(home, "cpu-doomed", "2026-01-04")
    model = write_gguf(tmp_path / "m.gguf")
    add = _cli(
        home, "instance", "add", "q4", "--model", str(model), "--build", "cpu-abc", "--no-systemd", "--json"
    )
    assert add.returncode == 0, add.stderr
    assert add.json()["data"]["spec"]["build"] == "cpu-abc123"
    assert 'build = "cpu-abc123"' in (home / "config" / "instances" / "q4.toml").read_text()
    w = _cli(
        home, "instance", "add-rpc-worker", "w1", "--port", "50052", "--build", "cpu-rpc", "--no-systemd"
    )
    assert w.returncode == 0, w.stderr
    assert 'build = "cpu-rpc999"' in (home / "config" / "rpc-workers" / "w1.toml").read_text()
    _one_line_error(_cli(home, "builds", "rm", "cpu-abc123"), 8, "pinned by instance q4")
    _one_line_error(_cli(home, "builds", "rm", "cpu-rpc999"), 8, "pinned by rpc-worker w1")
    gc = _cli(home, "builds", "gc", "--keep", "0")
    assert gc.returncode == 0, gc.stderr
    left = sorted(p.name for p in (home / "data" / "builds").iterdir())
    assert left == ["cpu-abc123", "cpu-new", "cpu-rpc999"]
    listing = _cli(home, "builds", "list", "--json").json()
    pins = {b["id"]: b["pinned_by"] for b in listing["builds"]}
    assert pins == {"cpu-abc123": ["q4"], "cpu-new": [], "cpu-rpc999": ["rpc-worker w1"]}


# --------------------------------------------------------------------------- broken manifests
def test_one_malformed_manifest_does_not_break_builds_list(home: Path) -> None:
    bad = home / "data" / "builds" / "cpu-bad"
    (bad / "bin").mkdir(parents=True)
    (bad / "manifest.json").write_text('{"id": ')
    before = _snapshot(home)
    listing = _cli(home, "builds", "list")
    assert listing.returncode == 0, listing.stderr
    assert "cpu-abc123" in listing.stdout and "cpu-new" in listing.stdout
    assert "warning: build cpu-bad is broken" in listing.stderr and "Traceback" not in listing.stderr
    doc = _cli(home, "builds", "list", "--json").json()
    assert [b["id"] for b in doc["builds"]] == ["cpu-abc123", "cpu-new"]
    assert doc["broken"][0]["id"] == "cpu-bad"
    _one_line_error(_cli(home, "builds", "rm", "cpu-bad"), 8, "cpu-bad")
    _one_line_error(_cli(home, "builds", "use", "cpu-bad"), 8, "is broken")
    assert _snapshot(home) == before


# --------------------------------------------------------------------------- finding 9: git
def test_repo_option_injection_is_refused(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    before = _snapshot(home)
    res = _cli(home, "build", "--ref", "b1", "--repo", f"--upload-pack=touch {marker}")
    _one_line_error(res, 5, "is not a git repository URL")
    assert not marker.exists() and _snapshot(home) == before


def test_git_reads_repo_as_a_repository_even_without_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: `--` before the positional arguments alone keeps git from running CMD."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    marker = tmp_path / "PWNED"
    monkeypatch.setattr(source, "check_repo", lambda repo: repo)
    with pytest.raises(SourceError):
        source.resolve_git("b1", f"--upload-pack=touch {marker};false", tmp_path / "cache")
    assert not marker.exists()
    # ...and without `--` it would have run (what the test guards against): git itself shows it.
    subprocess.run(["git", "init", "-q", str(tmp_path / "g")], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "g"), "fetch", "-q", f"--upload-pack=touch {marker};false", "x"],
                   capture_output=True, check=False)  # fmt: skip
    assert marker.exists()


# --------------------------------------------------------------------------- read-only store
def _in_ro_mount(ro: Path, home: Path, *args: str) -> CliResult:
    """Run the CLI in a private mount namespace where `ro` is bind-mounted read-only (as root,
    mode bits don't stop writes; a read-only mount does)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    argv = ["unshare", "--mount", "sh", "-c", script, "sh", str(ro), sys.executable, "-m", "nativellm", *args]
    env = {**os.environ, "NATIVELLM_HOME": str(home), "NATIVELLM_UNIT_DIR": str(home / "units")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, 0.0)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --mount for a read-only bind mount")
def test_a_read_only_store_is_a_resource_error(home: Path, tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "models" / "m.gguf")
    (home / "units").mkdir()
    before = _snapshot(home)
    cases = [
        (["builds", "rm", "cpu-abc123"], "builds"),
        (["builds", "use", "cpu-abc123"], "current"),
        (["model", "add", str(model), "--name", "m"], str(home)),
        (["instance", "add", "q4", "--model", str(model), "--no-systemd"], str(home)),
    ]
    for args, where in cases:
        res = _in_ro_mount(home, home, *args)
        _one_line_error(res, 12, "Read-only file system")
        assert where in res.stderr, res.stderr
    assert _snapshot(home) == before
