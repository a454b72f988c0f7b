"""RPC worker rendering: golden drop-ins, the peer allow-list, the spec's refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nativellm.errors import InstanceError, UsageError
from nativellm.paths import Scope
from nativellm.serve.dropins import server_argv
from nativellm.serve.rpc import RpcWorkerSpec, render_rpc_dropin, rpc_argv, rpc_template
from nativellm.specs import InstanceSpec, parse_endpoint

GOLDEN = Path(__file__).parents[1] / "fixtures" / "units"
BIN = Path("/var/lib/nativellm/current/bin/rpc-server")
SPEC_FILE = Path("/etc/nativellm/rpc-workers/w.toml")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NATIVELLM_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), (
        f"{name} differs from its golden file (NATIVELLM_UPDATE_GOLDEN=1 to update)"
    )


def test_loopback_cpu_worker_dropin() -> None:
    spec = RpcWorkerSpec("w", 50052).validate()
    golden("rpc-loopback-cpu.conf", render_rpc_dropin(spec, BIN, "cpu", SPEC_FILE))
    assert spec.warning() is None


def test_lan_cuda_worker_dropin_allows_only_its_peers() -> None:
    spec = RpcWorkerSpec("w", 50052, "10.0.0.2", gpus=(0, 1), allow=("10.0.0.5", "10.0.1.0/24")).validate()
    text = render_rpc_dropin(spec, BIN, "cuda", SPEC_FILE, Scope.SYSTEM)
    golden("rpc-lan-cuda-system.conf", text)
    assert "DynamicUser=yes" in text and "ProtectHome=yes" in text
    assert "IPAddressAllow=10.0.0.5\nIPAddressAllow=10.0.1.0/24" in text
    assert "CUDA_VISIBLE_DEVICES=0,1" in text and "DeviceAllow=char-nvidia rw" in text
    warning = spec.warning()
    assert warning and "remote-code-execution" in warning and "10.0.0.2:50052" in warning


def test_template_denies_every_address_and_is_hardened() -> None:
    text = rpc_template()
    for line in ("IPAddressDeny=any", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateDevices=yes",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet=", "Restart=on-failure"):  # fmt: skip
        assert f"\n{line}\n" in text, line


def test_argv() -> None:
    assert rpc_argv(RpcWorkerSpec("w", 1, threads=4), BIN) == [
        str(BIN), "--host", "127.0.0.1", "--port", "1", "--threads", "4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (RpcWorkerSpec("w", 50052, "0.0.0.0"), InstanceError),  # open to all: needs --allow
        (RpcWorkerSpec("w", 50052, "10.0.0.2", allow=("any",)), UsageError),
        (RpcWorkerSpec("w", 50052, allow=("not-an-ip",)), UsageError),
        (RpcWorkerSpec("w", 0), UsageError),
        (RpcWorkerSpec("w", 50052, "example.com"), UsageError),
        (RpcWorkerSpec("bad name", 50052), UsageError),
    ],
)
def test_refusals(spec: RpcWorkerSpec, error: type[Exception]) -> None:
    with pytest.raises(error):
        spec.validate()


def test_spec_toml_round_trip() -> None:
    spec = RpcWorkerSpec("w", 50052, "10.0.0.2", gpus=(0,), allow=("10.0.0.5",), threads=2, build="cpu-x")
    assert RpcWorkerSpec.from_toml(spec.to_toml(), "t") == spec
    assert "allow" not in RpcWorkerSpec("w", 1).to_toml()


def test_instance_rpc_flag_reaches_the_argv_and_round_trips() -> None:
    spec = InstanceSpec("h", "demo", 8080, rpc=("127.0.0.1:50052", "10.0.0.2:50052")).validate()
    argv = server_argv(spec, Path("/b/llama-server"), Path("/m.gguf"), api_key_path=None)
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:50052,10.0.0.2:50052"
    assert InstanceSpec.from_toml(spec.to_toml()) == spec
    assert "rpc" not in InstanceSpec("h", "demo", 8080).to_toml()  # existing specs are unchanged
    with pytest.raises(UsageError):
        InstanceSpec("h", "demo", 8080, rpc=("nohost",)).validate()
    assert parse_endpoint("[::1]:50052") == ("::1", 50052)


def test_add_writes_template_dropin_and_spec_and_remove_takes_them_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nativellm.errors import NotFoundError
    from nativellm.serve.rpc import RpcWorkers
    from tests.unit.test_instances import make_paths

    paths = make_paths(tmp_path, monkeypatch)
    workers = RpcWorkers(paths, None)
    with pytest.raises(NotFoundError, match="has no rpc-server"):
        workers.add(RpcWorkerSpec("w", 50052))  # the build has no rpc-server yet
    assert not (paths.config / "rpc-workers").exists()
    (paths.builds / "cpu-test" / "bin" / "rpc-server").write_text("#!/bin/sh\n")
    first = workers.add(RpcWorkerSpec("w", 50052))
    assert first.changed and first.warning is None
    dropin = paths.units / "llama-rpc@w.service.d" / "50-nativellm.conf"
    assert f"ExecStart={paths.current}/bin/rpc-server --host 127.0.0.1 --port 50052" in dropin.read_text()
    assert (paths.units / "llama-rpc@.service").is_file()
    assert workers.add(RpcWorkerSpec("w", 50052)).changed is False  # idempotent
    workers.remove("w")
    assert not dropin.exists() and not (paths.units / "llama-rpc@.service").exists()
    assert not any((paths.config / "rpc-workers").glob("*.toml"))
