"""Instance use cases without systemd: specs, validation before any write, idempotence,
and the parsers `status` uses (on real captured llama-server output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nativellm.errors import InstanceError, NotFoundError, ResourceError, UsageError
from nativellm.hardware.profile import CpuInfo, HostProfile, Toolkits
from nativellm.paths import Paths, resolve_paths
from nativellm.serve.instances import InstanceOptions, Instances, Refresh
from nativellm.serve.observe import find_error_line, parse_metrics
from nativellm.serve.server_flags import ServerFlags
from nativellm.specs import InstanceSpec, validate_name

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama_server"


def _profile() -> HostProfile:
    return HostProfile(
        os="linux", arch="x86_64",
        cpu=CpuInfo(vendor="GenuineIntel", model="test", flags=("avx2",), physical_cores=4, logical_cores=8),
        memory_bytes=32 * 2**30, gpus=(), toolkits=Toolkits(),
    )  # fmt: skip


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    return make_paths(tmp_path, monkeypatch)


def make_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A store under tmp_path with a current build and a model file at tmp_path/m.gguf."""
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NATIVELLM_UNIT_DIR", str(tmp_path / "units"))
    p = resolve_paths()
    build = p.builds / "cpu-test"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "llama-server").write_text("#!/bin/sh\n")
    (build / "manifest.json").write_text(json.dumps({"id": "cpu-test", "plan": {"backend": "cpu"},
                                                     "smoke_test": {"passed": True}}))  # fmt: skip
    p.current.symlink_to("builds/cpu-test")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    return p


def _today(binary: Path) -> ServerFlags:
    """The fake builds' llama-server is not run: every flag in today's spelling."""
    return ServerFlags()


def _instances(paths: Paths, busy: frozenset[int] = frozenset()) -> Instances:
    return Instances(
        paths, None, profile=_profile, port_in_use=lambda port, host: port in busy, server_flags=_today
    )


def _model(paths: Paths) -> str:
    return str(paths.home.parents[1] / "m.gguf")


def _snapshot(paths: Paths) -> list[str]:
    root = paths.home.parents[1]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_add_writes_spec_and_units_and_rerun_is_unchanged(paths: Paths) -> None:
    inst = _instances(paths, busy=frozenset({8080}))
    first = inst.add("q4", InstanceOptions(model=_model(paths), ctx=2048))
    assert first.changed and first.spec is not None
    assert first.spec.port == 8081  # 8080 is taken by another process
    assert first.spec.threads == 4  # physical cores
    dropin = paths.units / "llama@q4.service.d" / "50-nativellm.conf"
    assert "--ctx-size 2048" in dropin.read_text()
    assert (paths.units / "llama@.service").is_file() and (paths.units / "llama.target").is_file()
    assert 'build = "current"' in (paths.config / "instances" / "q4.toml").read_text()
    before = _snapshot(paths)
    again = _instances(paths, busy=frozenset({8080, 8081})).add(
        "q4", InstanceOptions(model=_model(paths), ctx=2048)
    )
    assert again.changed is False and "unchanged" in again.message
    assert _snapshot(paths) == before


@pytest.mark.parametrize(
    ("name", "opts", "error"),
    [
        ("bad/name", InstanceOptions(model="x"), UsageError),
        ("q4", InstanceOptions(model="no-such-model"), NotFoundError),
        ("q4", InstanceOptions(model="M", host="0.0.0.0"), InstanceError),
        (
            "q4",
            InstanceOptions(model="M", port=9000),
            ResourceError,
        ),  # used by another process: exit 12 as the README says
        ("q4", InstanceOptions(model="M", build="cpu-gone"), NotFoundError),
        ("q4", InstanceOptions(model="M", flash_attn="maybe"), UsageError),
        ("q4", InstanceOptions(model="M", api_key_file="relative.key", host="0.0.0.0"), UsageError),
        ("q4", InstanceOptions(), UsageError),
    ],
)
def test_bad_input_fails_before_anything_is_written(
    paths: Paths, name: str, opts: InstanceOptions, error: type[Exception]
) -> None:
    if opts.model == "M":
        opts = InstanceOptions(**{**opts.__dict__, "model": _model(paths)})
    before = _snapshot(paths)
    with pytest.raises(error):
        _instances(paths, busy=frozenset({9000})).add(name, opts)
    assert _snapshot(paths) == before


def test_duplicate_name_and_port_of_another_instance(paths: Paths) -> None:
    inst = _instances(paths)
    inst.add("q4", InstanceOptions(model=_model(paths), port=8100))
    with pytest.raises(InstanceError, match="already exists"):
        inst.add("q4", InstanceOptions(model=_model(paths), port=8101))
    with pytest.raises(ResourceError, match="port 8100 is already in use by instance q4"):
        inst.add("q8", InstanceOptions(model=_model(paths), port=8100))


def test_edit_changes_only_what_was_given_and_reports_unchanged(paths: Paths) -> None:
    inst = _instances(paths)
    inst.add("q4", InstanceOptions(model=_model(paths), port=8100, ctx=1024))
    out = inst.edit("q4", InstanceOptions(ctx=8192))
    assert out.changed and out.spec is not None and out.spec.port == 8100 and out.spec.ctx == 8192
    assert inst.edit("q4", InstanceOptions(ctx=8192)).changed is False


def test_rm_of_the_last_instance_removes_every_file(paths: Paths) -> None:
    inst = _instances(paths)
    inst.add("q4", InstanceOptions(model=_model(paths)))
    inst.remove("q4")
    assert not any(paths.units.rglob("*.conf"))
    assert not any(p.is_file() for p in paths.units.rglob("*"))
    assert not (paths.config / "instances" / "q4.toml").exists()
    with pytest.raises(NotFoundError):
        inst.remove("q4")


def test_pinned_build_is_seen_by_the_store(paths: Paths) -> None:
    from nativellm.build.store import Store

    _instances(paths).add("q4", InstanceOptions(model=_model(paths), build="cpu-test"))
    assert Store(paths).pinned() == {"cpu-test": ["q4"]}


def test_units_follow_the_flags_of_the_build_current_names(paths: Paths) -> None:
    """`current` moves from a late-2024 server to today's: refresh_units re-renders the followers'
    flags for the new server, leaves pinned instances alone and reports what cannot be rendered."""
    from nativellm.build.store import Store
    from nativellm.serve.server_flags import parse_server_help

    old_help = parse_server_help((FIXTURES / "help-2024-11-74d73dc.txt").read_text())
    new_help = parse_server_help((FIXTURES / "help-b11312.txt").read_text())
    new = paths.builds / "cpu-new"
    shutil.copytree(paths.builds / "cpu-test", new)
    (new / "manifest.json").write_text((new / "manifest.json").read_text().replace("cpu-test", "cpu-new"))

    def flags(binary: Path) -> ServerFlags:
        return new_help if binary.resolve().parts[-3] == "cpu-new" else old_help

    inst = Instances(paths, None, profile=_profile, port_in_use=lambda p, h: False, server_flags=flags)
    inst.add("fa", InstanceOptions(model=_model(paths), flash_attn="on", mlock=True))
    inst.add("pinned", InstanceOptions(model=_model(paths), flash_attn="on", build="cpu-test"))
    dropin = paths.units / "llama@fa.service.d" / "50-nativellm.conf"
    pinned = paths.units / "llama@pinned.service.d" / "50-nativellm.conf"
    assert "--flash-attn --mlock" in dropin.read_text() and "--flash-attn on" not in dropin.read_text()
    before_pinned = pinned.read_text()
    assert inst.refresh_units() == Refresh((), ())  # nothing moved: nothing to write

    Store(paths).set_current("cpu-new")
    assert inst.refresh_units() == Refresh(("fa",), ())
    assert "--flash-attn on --load-mode mmap+mlock" in dropin.read_text()
    assert pinned.read_text() == before_pinned

    # An instance that needs what the old server lacks keeps its unit and is reported on the way back.
    inst.add("rpc", InstanceOptions(model=_model(paths), rpc=("10.0.0.5:50052",)))
    rpc_unit = (paths.units / "llama@rpc.service.d" / "50-nativellm.conf").read_text()
    Store(paths).set_current("cpu-test")
    refresh = inst.refresh_units()
    assert refresh.rewritten == ("fa",) and [n for n, _ in refresh.failed] == ["rpc"]
    assert "--rpc" in refresh.failed[0][1]
    assert (paths.units / "llama@rpc.service.d" / "50-nativellm.conf").read_text() == rpc_unit
    assert "--flash-attn --mlock" in dropin.read_text()
    with pytest.raises(InstanceError, match="--rpc"):  # and a new one is refused before any write
        inst.add("rpc2", InstanceOptions(model=_model(paths), rpc=("10.0.0.5:50052",)))
    assert not (paths.config / "instances" / "rpc2.toml").exists()


def test_foreground_argv_reads_the_key_file_directly(paths: Paths, tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("secret")
    _instances(paths).add("q4", InstanceOptions(model=_model(paths), api_key_file=str(key)))
    argv = _instances(paths).foreground_argv("q4")
    assert argv[0] == str(paths.current / "bin" / "llama-server")
    assert argv[argv.index("--api-key-file") + 1] == str(key)
    assert "secret" not in " ".join(argv)


def _registered(paths: Paths, tmp_path: Path) -> Path:
    """A real GGUF registered as model "m" (linked in place)."""
    from ggufs import write_gguf

    from nativellm.models.registry import add_model

    model = write_gguf(tmp_path / "reg.gguf")
    add_model(paths, model, name="m")
    return model


def test_a_registered_model_damaged_since_model_add_is_refused_before_any_write(
    paths: Paths, tmp_path: Path
) -> None:
    from nativellm.errors import ModelError

    model = _registered(paths, tmp_path)
    model.write_bytes(model.read_bytes()[:40])  # the header now ends mid-way
    before = _snapshot(paths)
    with pytest.raises(ModelError, match="model 'm': .*reg.gguf") as exc:
        _instances(paths).add("q4", InstanceOptions(model="m", port=8100))
    assert "model verify m" in exc.value.hint
    assert _snapshot(paths) == before


def test_run_checks_the_model_file_and_the_port_before_exec(paths: Paths, tmp_path: Path) -> None:
    from nativellm.errors import ModelError

    model = _registered(paths, tmp_path)
    _instances(paths).add("q4", InstanceOptions(model="m", port=8100))
    assert str(model) in _instances(paths).foreground_argv("q4")
    with pytest.raises(ResourceError, match="port 8100 of instance q4 is in use"):
        _instances(paths, busy=frozenset({8100})).foreground_argv("q4")
    model.unlink()
    with pytest.raises(ModelError, match="reg.gguf does not exist"):
        _instances(paths).foreground_argv("q4")


def test_spec_toml_round_trip_and_unknown_keys() -> None:
    spec = InstanceSpec(name="q4", model="demo", port=8080, gpus=(0, 1), extra_args=("--foo", "a b"),
                        env={"X": "1"})  # fmt: skip
    assert InstanceSpec.from_toml(spec.to_toml()) == spec
    with pytest.raises(InstanceError, match="unknown keys"):
        InstanceSpec.from_toml("bogus = 1\n" + spec.to_toml())


@pytest.mark.parametrize("name", ["q4", "Qwen2.5-7B", "a_b", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a@b", "a/b", "x" * 65, "q4.service", "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)


def test_error_line_from_a_real_model_load_failure() -> None:
    text = (FIXTURES / "bad_model_load.log").read_text()
    assert find_error_line(text) == (
        "llama_model_load: error loading model: llama_model_loader: failed to load model from /srv/models/bad.gguf"
    )
    assert find_error_line("llama-server (pid 5) exited before it was ready\nfake: boom\n") == "fake: boom"
    assert find_error_line("") is None


def test_metrics_from_a_real_llama_server() -> None:
    m = parse_metrics((FIXTURES / "metrics.txt").read_text())
    assert m["tokens_per_s"] == pytest.approx(7.19075)
    assert m["requests_processing"] == 0
    assert "kv_cache_usage_ratio" not in m  # this llama.cpp does not export it


def test_no_systemd_bus_is_explained_before_anything_is_written(paths: Paths, tmp_path: Path) -> None:
    from nativellm.paths import Scope
    from nativellm.serve.systemd import Systemd

    sd = Systemd(Scope.USER, address=f"unix:path={tmp_path}/no-such-bus")
    inst = Instances(paths, sd, profile=_profile, port_in_use=lambda port, host: False, server_flags=_today)
    before = _snapshot(paths)
    with pytest.raises(InstanceError) as exc:
        inst.add("q4", InstanceOptions(model=_model(paths)))
    assert "nativellm run" in exc.value.hint
    assert _snapshot(paths) == before
