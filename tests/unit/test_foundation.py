"""The one owner of each rule that used to be written several times (issue 11)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from nativellm import run
from nativellm.errors import InstanceError, ResourceError, UsageError
from nativellm.fsutil import file_lock, write_if_changed
from nativellm.paths import Scope, resolve_paths
from nativellm.serve.dropins import base_url
from nativellm.serve.systemd import UnitState, require_reads_units_from
from nativellm.specs import (
    InstanceSpec,
    http_url,
    is_loopback,
    parse_endpoint,
    reach_host,
    url_is_loopback,
    validate_name,
    validate_sha256,
)
from nativellm.versions import dotted, major_minor, major_minor_text, version_tuple


# --------------------------------------------------------------------------- running state
def _state(active: str, sub: str = "running") -> UnitState:
    return UnitState(
        "llama@q4.service", "loaded", active, sub, "success", 1, 0, None, None, 0, False, "enabled"
    )


@pytest.mark.parametrize(
    ("active", "running", "stopped"),
    [
        ("active", True, False),
        ("activating", True, False),
        ("reloading", True, False),  # doctor's old copy forgot this one
        ("deactivating", False, False),
        ("inactive", False, True),
        ("failed", False, True),
    ],
)
def test_running_state_has_one_definition(active: str, running: bool, stopped: bool) -> None:
    assert _state(active).running is running
    assert _state(active).stopped is stopped


# --------------------------------------------------------------------------- loopback URL
@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),  # bench's old copy wrote http://:::8080
        ("::1", "http://[::1]:8080"),
        ("[::1]", "http://[::1]:8080"),
        ("fd00::5", "http://[fd00::5]:8080"),
        ("10.0.0.5", "http://10.0.0.5:8080"),
        ("localhost", "http://localhost:8080"),
    ],
)
def test_the_url_nativellm_uses_for_a_bind_address(host: str, url: str) -> None:
    assert http_url(host, 8080) == url
    spec = InstanceSpec(name="q4", model="m", port=8080, host=host or "127.0.0.1", insecure_no_api_key=True)
    if host:
        assert base_url(spec) == url


def test_reach_host_is_a_bare_address_for_sockets() -> None:
    assert reach_host("::") == "::1" and reach_host("0.0.0.0") == "127.0.0.1" and reach_host("[::1]") == "::1"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.3.4.5:8080", True),
        ("http://[::1]:8080/v1", True),
        ("http://localhost:8080", True),
        ("http://10.0.0.5:8080", False),
        ("http://127.example.org:8080", False),  # the old prefix test took this for loopback
        ("http://[fd00::1]:8080", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert url_is_loopback(url) is loopback


def test_is_loopback_hosts() -> None:
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


# --------------------------------------------------------------------------- exit wording
def test_exit_wording() -> None:
    assert run.describe_exit(-signal.SIGILL, "llama-server") == (
        "llama-server was killed by SIGILL (illegal instruction)"
    )
    assert run.describe_exit(-signal.SIGKILL) == "the process was killed by SIGKILL"
    assert run.describe_exit(3, "the probe process") == "the probe process exited with status 3"
    assert run.short_exit(-signal.SIGSEGV) == "SIGSEGV" and run.short_exit(1) == "exit 1"
    assert run.signal_name(-200) == "signal 200" and run.signal_name(0) is None


# --------------------------------------------------------------------------- versions
def test_versions() -> None:
    assert version_tuple("570.144.03") == (570, 144, 3)
    assert version_tuple("NVIDIA 580.65.06 extra 7", 3) == (580, 65, 6)
    assert version_tuple("570.144") < version_tuple("580.0")
    assert major_minor("Cuda compilation tools, release 12.8, V12.8.93", after="release") == (12, 8)
    assert major_minor_text("6.2.41133-dd7f95766") == "6.2"
    assert major_minor("no version here") is None
    assert dotted("cmake version 3.28.1\n\nCMake suite") == "3.28.1"
    assert dotted("ninja 1.11") == "1.11"


# --------------------------------------------------------------------------- validators
@pytest.mark.parametrize("name", ["q4\n", "q4\r", "../x", "-q", "", "a" * 65, "q 4", "q4\x00"])
@pytest.mark.parametrize("kind", ["instance", "model"])
def test_names_with_control_or_path_characters_are_refused(name: str, kind: str) -> None:
    with pytest.raises(UsageError, match=f"invalid {kind} name"):
        validate_name(name, kind)


def test_unit_suffixes_are_refused_for_units_only() -> None:
    with pytest.raises(UsageError):
        validate_name("q4.service")
    assert validate_name("llama.d", "model") == "llama.d"


def test_sha256_and_endpoint_validators() -> None:
    assert validate_sha256(" " + "AB" * 32 + "\n") == "ab" * 32
    for bad in ("xyz", "ab" * 31, "g" * 64, "ab" * 32 + "0"):
        with pytest.raises(UsageError, match="is not a sha256"):
            validate_sha256(bad)
    assert parse_endpoint("[fd00::2]:50052") == ("fd00::2", 50052)
    for bad in ("host", ":50052", "host:0", "host:65536", "host:x"):
        with pytest.raises(UsageError, match="is not host:port"):
            parse_endpoint(bad)


# --------------------------------------------------------------------------- write-if-changed
def test_write_if_changed_writes_only_a_change(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "unit.service"
    assert write_if_changed(f, "a\n") is True
    before = f.stat().st_mtime_ns, f.stat().st_ino
    assert write_if_changed(f, "a\n") is False
    assert (f.stat().st_mtime_ns, f.stat().st_ino) == before
    assert write_if_changed(f, "b\n", 0o600) is True
    assert f.read_text() == "b\n" and f.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- locking
def test_file_lock_refuses_or_waits(tmp_path: Path) -> None:
    """flock locks belong to an open file, so a holder in another thread conflicts like another process."""
    lock = tmp_path / "build.lock"
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with file_lock(lock, record_pid=True):
            ready.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        seen: list[str] = []

        def refuse(pid: str) -> None:
            seen.append(pid)
            raise ResourceError(f"busy (pid {pid})")

        with pytest.raises(ResourceError), file_lock(lock, on_busy=refuse):
            pytest.fail("the lock was taken twice")
        assert seen == [str(os.getpid())]  # the holder recorded its pid

        waited: list[str] = []

        def wait(pid: str) -> None:
            waited.append(pid)
            release.set()  # returning means: block until the holder lets go

        with file_lock(lock, on_busy=wait):
            assert waited and release.wait(0) is not False
            holder.join(10)
            assert not holder.is_alive()
    finally:
        release.set()
        holder.join(10)


@pytest.mark.parametrize("scope", list(Scope))
def test_relocating_state_never_moves_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scope: Scope
) -> None:
    monkeypatch.delenv("NATIVELLM_UNIT_DIR", raising=False)
    monkeypatch.delenv("NATIVELLM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    default = resolve_paths(scope)
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "big-disk"))
    moved = resolve_paths(scope)
    assert moved.home == tmp_path / "big-disk" / "data" and moved.config == tmp_path / "big-disk" / "config"
    assert (
        moved.units
        == default.units
        == (
            tmp_path / "user" / ".config" / "systemd" / "user"
            if scope is Scope.USER
            else Path("/etc/systemd/system")
        )
    )
    monkeypatch.setenv("NATIVELLM_UNIT_DIR", str(tmp_path / "u"))
    assert resolve_paths(scope).units == tmp_path / "u" and resolve_paths(scope).home == moved.home


class _Manager:
    """The one thing require_reads_units_from asks of systemd: its UnitPath."""

    def __init__(self, scope: Scope, dirs: list[Path]) -> None:
        self.scope, self.dirs = scope, dirs

    def unit_path(self) -> tuple[Path, ...]:
        return tuple(self.dirs)


def test_a_unit_dir_the_manager_does_not_read_is_refused(tmp_path: Path) -> None:
    read = tmp_path / "home" / ".config" / "systemd" / "user"
    read.mkdir(parents=True)
    (tmp_path / "link").symlink_to(read)
    mgr: Any = _Manager(Scope.USER, [Path("/etc/systemd/user"), read, Path("/usr/lib/systemd/user")])
    require_reads_units_from(mgr, read)
    require_reads_units_from(mgr, tmp_path / "link")  # the same directory by another name
    with pytest.raises(InstanceError) as err:
        require_reads_units_from(mgr, tmp_path / "data" / "systemd")
    assert "user manager does not read units from" in err.value.message
    assert err.value.hint == f"unset NATIVELLM_UNIT_DIR (units then go to {read})"
