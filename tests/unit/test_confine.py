"""build.confine without starting anything: which confinement is chosen, what the transient unit
asks systemd for, and how the runner's answer is read back. The real runs are in
tests/integration/test_confined_smoke.py (namespaces) and tests/e2e/test_confined_smoke.py (systemd)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nativellm.build import confine
from nativellm.build.confine import Job
from nativellm.build.smoke import SmokeCase, SmokeOffload, SmokeResult
from nativellm.errors import SmokeTestError
from nativellm.hardware.devices import DeviceClass


def test_a_forced_mode_wins_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in confine.MODES:
        monkeypatch.setenv(confine.ENV, mode)
        assert confine.choose_mode() == mode
    monkeypatch.setenv(confine.ENV, "chroot")
    with pytest.raises(SmokeTestError, match="not one of"):
        confine.choose_mode()


def test_root_without_systemd_or_namespaces_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(confine.ENV, raising=False)
    monkeypatch.setattr(confine, "probe_systemd", lambda: False)
    monkeypatch.setattr(confine, "probe_namespaces", lambda: False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(SmokeTestError, match="cannot confine") as info:
        confine.choose_mode()
    assert confine.ENV in info.value.hint
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert confine.choose_mode() == "none"  # a user's own rights: what an instance gets later too
    monkeypatch.setattr(confine, "probe_namespaces", lambda: True)
    assert confine.choose_mode() == "namespaces"
    monkeypatch.setattr(confine, "probe_systemd", lambda: True)
    assert confine.choose_mode() == "systemd"


def test_the_transient_unit_is_hardened_and_sees_only_what_it_needs(tmp_path: Path) -> None:
    job = Job("systemd", "/tmp/nativellm-smoke/artifact", "/tmp/nativellm-smoke/model.gguf", 2)
    argv = confine._systemd_argv(job, tmp_path / "top", tmp_path / "base.gguf", 600)
    props = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    for want in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=tmpfs",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateNetwork=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        f"BindReadOnlyPaths={tmp_path / 'top'}:{job.artifact}",
        f"BindReadOnlyPaths={tmp_path / 'base.gguf'}:{job.model}",
    ):
        assert want in props
    assert not [p for p in props if p.startswith("BindPaths=")], "nothing is bound writable"
    assert argv[:2] == ["systemd-run", "--quiet"] and "--wait" in argv and "--pipe" in argv
    assert argv[argv.index("--") + 1 :][1:3] == ["-m", "nativellm.build.confine"]
    assert Job.from_json(argv[-1]) == job


def test_a_gpu_smoke_opens_only_its_backends_devices_and_sees_the_linked_runtime(tmp_path: Path) -> None:
    """The offloaded case of a CUDA artifact: the GPU nodes (the unit's allow-list), not PrivateDevices,
    which would hide the GPU and fail every install on a systemd host; and the host's cuBLAS that
    install-artifact linked into lib/ stays visible under ProtectHome=tmpfs."""
    top = tmp_path / "top"
    (top / "lib").mkdir(parents=True)
    wheel = tmp_path / "home" / "venv" / "nvidia" / "cu13" / "lib"
    wheel.mkdir(parents=True)
    (wheel / "libcublas.so.13").write_bytes(b"")
    (top / "lib" / "libcublas.so.13").symlink_to(wheel / "libcublas.so.13")
    (top / "lib" / "libggml.so.0").symlink_to("libggml.so.0.25.3")  # relative: inside the build
    offload = SmokeOffload(device="GPU 0 NVIDIA H200", backend="cuda")
    job = Job(
        "systemd", "/tmp/nativellm-smoke/artifact", "/tmp/nativellm-smoke/model.gguf", 2, offload=offload
    )
    argv = confine._systemd_argv(job, top, tmp_path / "base.gguf", 600)
    props = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert (
        "PrivateDevices=yes" not in props and "PrivateDevices=no" in props and "DevicePolicy=closed" in props
    )
    assert [p for p in props if p.startswith("DeviceAllow=")] == [
        f"DeviceAllow={d}" for d in DeviceClass.NVIDIA.device_allow
    ]
    assert f"BindReadOnlyPaths=-{wheel}" in props
    assert Job.from_json(argv[-1]) == job  # the offload case reaches the confined runner


def test_the_runner_answer_is_read_back_and_garbage_is_none() -> None:
    res = SmokeResult(True, (SmokeCase("Q4_0", True, "ok", tokens=8),), "namespaces", 65534)
    line = confine._MARK + json.dumps({"result": res.to_dict(), "log": "log text"})
    parsed = confine._parse(f"noise\n{line}\n", "namespaces")
    assert parsed == (res, "log text")
    assert res.to_dict()["confinement"] == "namespaces" and res.to_dict()["uid"] == 65534
    assert confine._parse("no result here", "systemd") is None
    assert confine._parse(confine._MARK + "{not json", "systemd") is None
    assert confine._parse(confine._MARK + json.dumps({"result": {"cases": [{"x": 1}]}}), "systemd") is None
    # No cases is no pass, whatever the runner says.
    empty = confine._parse(confine._MARK + json.dumps({"result": {"passed": True, "cases": []}}), "systemd")
    assert empty is not None and empty[0].passed is False


def test_a_unit_that_gives_no_result_falls_back_to_namespaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An older systemd refuses a property (ProtectHome=tmpfs is v242): namespaces run instead,
    and a host with neither raises a typed error rather than running unconfined."""
    ok = SmokeResult(True, (SmokeCase("Q4_0", True, "ok", tokens=8),), "namespaces", 65534)
    tried: list[str] = []

    def fake(mode: str, *args: object) -> tuple[tuple[SmokeResult, str] | None, str]:
        tried.append(mode)
        return ((ok, "log\n") if mode == "namespaces" else None), "Unknown assignment: ProtectHome=tmpfs"

    monkeypatch.delenv(confine.ENV, raising=False)
    monkeypatch.setattr(confine, "choose_mode", lambda: "systemd")
    monkeypatch.setattr(confine, "_run_confined", fake)
    monkeypatch.setattr(confine, "probe_namespaces", lambda: True)
    res = confine.confined_smoke_test(tmp_path / "top", tmp_path / "m.gguf", tmp_path / "w", 2)
    assert res == ok and tried == ["systemd", "namespaces"]
    assert "ran in namespaces instead" in (tmp_path / "w" / "smoke.log").read_text()
    monkeypatch.setattr(confine, "probe_namespaces", lambda: False)
    with pytest.raises(SmokeTestError, match=r"confined smoke test \(systemd\) did not report.*ProtectHome"):
        confine.confined_smoke_test(tmp_path / "top", tmp_path / "m.gguf", tmp_path / "w", 2)
