"""Issue 14: values that reach unit files or paths (one validator per kind), a hand-edited or
malformed instance spec, pins by abbreviated id and by RPC workers, broken build manifests,
and the ownership check for what system-scope units run as root."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from nativellm import validate as v
from nativellm.build.store import Store
from nativellm.errors import InstanceError, NotFoundError, StoreError, UsageError
from nativellm.paths import Paths, Scope, resolve_paths
from nativellm.serve.dropins import Resolved, render_dropin, render_watchdog_dropin, unsafe_for_root
from nativellm.serve.instances import InstanceOptions, Instances
from nativellm.serve.rpc import RpcWorkers, RpcWorkerSpec
from nativellm.serve.server_flags import ServerFlags
from nativellm.specs import InstanceSpec, list_specs, load_spec
from tests.unit.test_instances import _profile

# Each attempt would, unvalidated, end the line in a unit file and start a directive of its own.
INJECT = "\r[Service]\rExecStartPre=+/bin/sh -c 'touch /tmp/pwned'"
CONTROL = ["\r", "\n", "\t", "\x00", "\x1b", "\x7f"]


# --------------------------------------------------------------------------- the validators
@pytest.mark.parametrize("good", ["8G", "512M", "1.5T", "1073741824", "100K", "80%", "0.5%", "infinity"])
def test_byte_size_accepts_systemd_sizes(good: str) -> None:
    assert v.byte_size(good) == good


@pytest.mark.parametrize(
    "bad", ["lots", "", "8GB", "8 G", "-1G", "0", "101%", "0%", "1.5", "8g", "8G" + INJECT, "8G\n", "inf"]
)
def test_byte_size_refuses_what_systemd_would_ignore_or_split(bad: str) -> None:
    with pytest.raises(UsageError, match="--memory-max"):
        v.byte_size(bad)


@pytest.mark.parametrize("good", ["2", "0-3", "0-3,6", "1,3,5", "2.5", "0.5", "16"])
def test_cpus_accepts_counts_and_lists(good: str) -> None:
    assert v.cpus(good) == good


@pytest.mark.parametrize(
    "bad", ["", "all", "3-1", "0-3,", "0-3" + INJECT, "1\r", "0.0", "99999", "-1", "1 2"]
)
def test_cpus_refuses_anything_else(bad: str) -> None:
    with pytest.raises(UsageError, match="--cpus"):
        v.cpus(bad)


@pytest.mark.parametrize("good", ["127.0.0.1", "::1", "[::1]", "0.0.0.0", "localhost", "gpu-2.lan", "a.b.c."])
def test_host_accepts_addresses_and_names(good: str) -> None:
    assert v.host(good) == good


@pytest.mark.parametrize("bad", ["", "-oProxy", "a b", "host\r", "x" * 300, "a..b", "under_score", "h;rm"])
def test_host_refuses_the_rest(bad: str) -> None:
    with pytest.raises(UsageError, match="--host"):
        v.host(bad)


@pytest.mark.parametrize("bad", ["relative.key", "", "/k" + INJECT, "/k\n", "/k\t"])
def test_abs_path_refuses_relative_and_control(bad: str) -> None:
    with pytest.raises(UsageError, match="--api-key-file"):
        v.abs_path(bad, "--api-key-file")


@pytest.mark.parametrize("ch", CONTROL)
def test_control_characters_are_refused_by_every_validator(ch: str) -> None:
    for check in (
        lambda s: v.byte_size(s),
        lambda s: v.cpus(s),
        lambda s: v.host(s),
        lambda s: v.abs_path("/" + s, "path"),
        lambda s: v.name(s),
        lambda s: v.build_id(s),
        lambda s: v.endpoint(s),
        lambda s: v.no_control(s, "value"),
    ):
        with pytest.raises(UsageError):
            check(f"1{ch}2")


def test_names_and_endpoints() -> None:
    assert v.name("q4") == "q4"
    for bad in ("q4\r", "../x", "-x", "a" * 65, "x.service"):
        with pytest.raises(UsageError):
            v.name(bad)
    assert v.endpoint("[::1]:50052") == ("::1", 50052)
    for bad in ("10.0.0.1", "x:0", "h\r:1", "-o:1"):
        with pytest.raises(UsageError):
            v.endpoint(bad)


# --------------------------------------------------------------------------- specs
SPEC = InstanceSpec(name="q4", model="m", port=8080)


@pytest.mark.parametrize(
    "change",
    [
        {"memory_max": "8G" + INJECT},
        {"memory_max": "lots"},
        {"cpus": "0-3" + INJECT},
        {"api_key_file": "/k" + INJECT},
        {"model": "/models/m.gguf" + INJECT},
        {"model": "m\rx"},
        {"host": "127.0.0.1" + INJECT},
        {"build": "cpu-x" + INJECT},
        {"build": "../../etc"},
        {"rpc": ("127.0.0.1:50052" + INJECT,)},
        {"env": {"A": "b" + INJECT}},
        {"extra_args": ("--x", "a\rb")},
    ],
)
def test_spec_validate_refuses_injection(change: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        dataclasses.replace(SPEC, **change).validate()  # type: ignore[arg-type]


def test_hand_edited_toml_is_validated_naming_the_file(tmp_path: Path) -> None:
    text = SPEC.to_toml() + 'memory_max = "8G\\r[Service]\\rExecStartPre=+/bin/sh"\n'
    with pytest.raises(InstanceError, match=r"q4.toml: --memory-max"):
        InstanceSpec.from_toml(text, "/cfg/q4.toml")


@pytest.mark.parametrize(
    ("line", "key"),
    [('port = "abc"', "port"), ("port = 80.5", "port"), ('mlock = "yes"', "mlock"), ("ctx = true", "ctx"),
     ("gpus = [0, \"x\"]", "gpus"), ("env = 3", "env"), ('env = {A = 1}', "env"), ('name = 4', "name")],
)  # fmt: skip
def test_toml_of_the_wrong_type_names_file_and_key(line: str, key: str) -> None:
    doc = {k: val for k, val in (("name", "q4"), ("model", "m"), ("port", 8080)) if k != key}
    text = "".join(f"{k} = {json.dumps(val)}\n" for k, val in doc.items()) + line + "\n"
    with pytest.raises(InstanceError, match=rf"/cfg/q4.toml: key '{key}' is"):
        InstanceSpec.from_toml(text, "/cfg/q4.toml")


def test_a_directory_or_bytes_where_a_spec_should_be(tmp_path: Path) -> None:
    (tmp_path / "instances" / "q4.toml").mkdir(parents=True)
    with pytest.raises(InstanceError, match="is a directory"):
        load_spec(tmp_path, "q4")
    with pytest.raises(InstanceError, match="is a directory"):
        list_specs(tmp_path)
    (tmp_path / "instances" / "q4.toml").rmdir()
    (tmp_path / "instances" / "q4.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(InstanceError, match="not UTF-8"):
        load_spec(tmp_path, "q4")


# --------------------------------------------------------------------------- rendering (defence in depth)
def _resolved(scope: Scope = Scope.USER) -> Resolved:
    return Resolved(scope=scope, server_binary=Path("/opt/b/bin/llama-server"), model_path=Path("/m/m.gguf"),
                    backend="cpu", python="/usr/bin/python3", healthcheck=Path("/var/lib/n/h.py"),
                    systemctl="/usr/bin/systemctl", spec_path=Path("/cfg/q4.toml"), flags=ServerFlags())  # fmt: skip


def _directives(text: str) -> list[tuple[str, str]]:
    """(section, key) for each line as systemd reads it: a line ends at \\n and at \\r."""
    section, found = "", []
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")) and "=" in line:
            found.append((section, line.split("=", 1)[0]))
    return found


@pytest.mark.parametrize(
    "change",
    [{"memory_max": "8G" + INJECT}, {"cpus": "0-3" + INJECT}, {"api_key_file": "/k" + INJECT},
     {"model": "/m/m.gguf" + INJECT}, {"env": {"A": "b" + INJECT}}, {"extra_args": ("--x", INJECT)},
     {"host": "127.0.0.1" + INJECT}],
)  # fmt: skip
def test_render_never_lets_a_value_add_a_directive(change: dict[str, object]) -> None:
    """Specs built around validate() (a bug, a future code path) still can't inject: the renderer
    refuses a raw control character or escapes it, and no ExecStartPre= line appears."""
    spec = dataclasses.replace(SPEC, **change)  # type: ignore[arg-type]
    for scope in (Scope.USER, Scope.SYSTEM):
        for render in (render_dropin, render_watchdog_dropin):
            clean = _directives(render(SPEC, _resolved(scope)))
            try:
                text = render(spec, _resolved(scope))
            except InstanceError as exc:
                assert "control character" in exc.message
                continue
            assert "\r" not in text
            keys = _directives(text)
            assert set(keys) <= set(clean) | {("Service", k) for k in RESOURCE_KEYS}, text
            for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecCondition"):
                assert keys.count(("Service", key)) == clean.count(("Service", key)), text


RESOURCE_KEYS = ("MemoryMax", "AllowedCPUs", "CPUQuota", "LoadCredential", "Environment")


def test_render_refuses_a_carriage_return_in_a_plain_value() -> None:
    for change in ({"memory_max": "8G" + INJECT}, {"model": "m\r[Service]"}, {"cpus": "1\rX=y"}):
        with pytest.raises(InstanceError, match="control character"):
            render_dropin(dataclasses.replace(SPEC, **change), _resolved())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pins
@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NATIVELLM_UNIT_DIR", str(tmp_path / "units"))
    return resolve_paths()


def _build(paths: Paths, build_id: str, created: str, *, rpc: bool = False) -> None:
    stage = paths.home / f"stage-{build_id}"
    (stage / "bin").mkdir(parents=True)
    (stage / "bin" / "llama-server").write_text("#!/bin/sh\n")
    if rpc:
        (stage / "bin" / "rpc-server").write_text("#!/bin/sh\n")
    Store(paths).install(stage, {"id": build_id, "created": created, "plan": {"backend": "cpu"},
                                 "smoke_test": {"passed": True}})  # fmt: skip


def _instances(paths: Paths, **kw: object) -> Instances:
    return Instances(paths, None, profile=_profile, port_in_use=lambda p, h: False,
                     server_flags=lambda b: ServerFlags(), **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_pin_by_abbreviated_id_is_stored_in_full_and_protects_the_build(
    paths: Paths, tmp_path: Path
) -> None:
    for i, bid in enumerate(["cpu-abc123", "cpu-def456", "cpu-0ld"]):
        _build(paths, bid, f"2026-01-0{i + 1}")
    store = Store(paths)
    store.set_current("cpu-def456")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    out = _instances(paths).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf"), build="cpu-abc"))
    assert out.spec is not None and out.spec.build == "cpu-abc123"
    assert 'build = "cpu-abc123"' in (paths.config / "instances" / "q4.toml").read_text()
    with pytest.raises(StoreError, match="pinned by instance q4"):
        store.remove("cpu-abc123")
    assert store.gc(keep=0) == ["cpu-0ld"]
    assert store.find("cpu-abc123") is not None
    # Adding again with the same prefix is the same spec: unchanged, not "exists with other settings".
    again = _instances(paths).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf"), build="cpu-abc"))
    assert again.changed is False


def test_pins_written_as_a_prefix_by_hand_still_protect(paths: Paths) -> None:
    _build(paths, "cpu-abc123", "2026-01-01")
    _build(paths, "cpu-def456", "2026-01-02")
    Store(paths).set_current("cpu-def456")
    (paths.config / "instances").mkdir(parents=True)
    (paths.config / "instances" / "old.toml").write_text(
        'name = "old"\nmodel = "m"\nport = 8080\nbuild = "cpu-ab"\n'
    )
    assert Store(paths).pinned() == {"cpu-abc123": ["old"]}
    with pytest.raises(StoreError, match="pinned"):
        Store(paths).remove("cpu-abc123")
    assert Store(paths).gc(keep=0) == []


def test_an_rpc_worker_pin_protects_its_build(paths: Paths) -> None:
    _build(paths, "cpu-rpc999", "2026-01-01", rpc=True)
    _build(paths, "cpu-new", "2026-01-02")
    store = Store(paths)
    store.set_current("cpu-new")
    res = RpcWorkers(paths, None).add(RpcWorkerSpec("w1", 50052, build="cpu-rpc"))
    assert res.spec.build == "cpu-rpc999"
    assert store.pinned() == {"cpu-rpc999": ["rpc-worker w1"]}
    with pytest.raises(StoreError, match="pinned by rpc-worker w1"):
        store.remove("cpu-rpc999")
    assert store.gc(keep=0) == [] and store.find("cpu-rpc999") is not None


def test_an_ambiguous_or_unknown_pin_is_refused_before_writing(paths: Paths, tmp_path: Path) -> None:
    _build(paths, "cpu-abc1", "2026-01-01")
    _build(paths, "cpu-abc2", "2026-01-02")
    Store(paths).set_current("cpu-abc2")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(NotFoundError, match="ambiguous"):
        _instances(paths).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf"), build="cpu-abc"))
    assert not (paths.config / "instances" / "q4.toml").exists()


# --------------------------------------------------------------------------- broken manifests
@pytest.mark.parametrize(
    "manifest", ["{not json", "[1, 2]", '{"id": 7}', '{"id": "other"}', '{"id": "cpu-bad", "plan": []}']
)
def test_one_broken_manifest_does_not_break_the_store(paths: Paths, manifest: str) -> None:
    _build(paths, "cpu-good", "2026-01-01")
    (paths.builds / "cpu-bad").mkdir()
    (paths.builds / "cpu-bad" / "manifest.json").write_text(manifest)
    store = Store(paths)
    assert [r.id for r in store.list_builds()] == ["cpu-good"]
    assert [b for b, _ in store.broken()] == ["cpu-bad"]
    with pytest.raises(StoreError, match="cpu-bad .* is broken"):
        store.remove("cpu-bad")
    assert (paths.builds / "cpu-bad").is_dir()
    assert store.gc(keep=0) == ["cpu-good"]


# --------------------------------------------------------------------------- what root runs (finding 10)
def _copied_python(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(sys.executable))
    shutil.copy2(real, where / real.name)
    return where / real.name


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@needs_root
def test_interpreter_in_a_directory_owned_by_another_uid_is_refused(paths: Paths, tmp_path: Path) -> None:
    python = _copied_python(tmp_path / "evil" / "bin")
    os.chown(tmp_path / "evil", 1000, 1000)
    assert unsafe_for_root(python) == f"{tmp_path / 'evil'} is owned by uid 1000, not root"
    _build(paths, "cpu-x", "2026-01-01")
    Store(paths).set_current("cpu-x")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    system = dataclasses.replace(paths, scope=Scope.SYSTEM)
    with pytest.raises(InstanceError, match="as root, but .*owned by uid 1000") as exc:
        _instances(system, python=str(python)).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf")))
    assert "Python that root owns" in exc.value.hint
    assert not (paths.config / "instances" / "q4.toml").exists()
    # The same interpreter is fine for user-scope units: they run as the user.
    _instances(paths, python=str(python)).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf")))


@needs_root
def test_world_writable_directories_and_files_are_refused(tmp_path: Path) -> None:
    python = _copied_python(tmp_path / "ww" / "bin")
    os.chmod(tmp_path / "ww", 0o777)
    assert unsafe_for_root(python) == f"{tmp_path / 'ww'} is writable by others"
    os.chmod(tmp_path / "ww", 0o1777)  # sticky (as /tmp): root's entries can't be swapped
    assert unsafe_for_root(python) is None
    os.chmod(python, 0o775)
    assert "writable by its group" in (unsafe_for_root(python) or "")
    # Through a symlink: the real path is what counts.
    (tmp_path / "link").symlink_to(python)
    assert "writable by its group" in (unsafe_for_root(tmp_path / "link") or "")


@needs_root
def test_a_helper_script_under_another_users_directory_is_refused(paths: Paths, tmp_path: Path) -> None:
    _build(paths, "cpu-x", "2026-01-01")
    Store(paths).set_current("cpu-x")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (paths.home / "libexec").mkdir()
    os.chown(paths.home / "libexec", 1000, 1000)
    system = dataclasses.replace(paths, scope=Scope.SYSTEM)
    with pytest.raises(InstanceError, match="health helper .*owned by uid 1000"):
        _instances(system).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf")))
    os.chown(paths.home / "libexec", 0, 0)
    out = _instances(system).add("q4", InstanceOptions(model=str(tmp_path / "m.gguf")))
    assert (
        out.changed
        and "DynamicUser=yes" in (paths.units / "llama@q4.service.d" / "50-nativellm.conf").read_text()
    )


def test_doctor_names_a_broken_build_instead_of_failing(paths: Paths) -> None:
    from nativellm.ops.doctor import check_store

    _build(paths, "cpu-good", "2026-01-01")
    (paths.builds / "cpu-bad").mkdir()
    (paths.builds / "cpu-bad" / "manifest.json").write_text('{"id": ')
    manifest = paths.builds / "cpu-good" / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"binaries": [1], ', 1))
    findings = check_store(Store(paths))
    assert [(f.ok, f.message.split(":")[0]) for f in findings] == [(False, "build cpu-bad is broken")]


def test_refused_file_operations_map_to_resource_errors() -> None:
    import errno

    from nativellm.cli.app import resource_error

    for code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
        mapped = resource_error(OSError(code, os.strerror(code), "/store/x"))
        assert mapped is not None and mapped.exit_code == 12 and "/store/x" in mapped.message and mapped.hint
    assert resource_error(OSError(errno.ENOENT, "gone", "/x")) is None  # a bug: stays "internal error"
