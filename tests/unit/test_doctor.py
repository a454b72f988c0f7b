"""doctor: each injected problem is found, a healthy store is clean."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nativellm.build.plan import PlanOptions, plan_build
from nativellm.build.store import Store
from nativellm.build.toolchain import nvcc_identity
from nativellm.fsutil import sha256_file
from nativellm.hardware.nvidia import parse_nvidia_smi_csv
from nativellm.hardware.profile import GpuInfo, load_profile
from nativellm.ops.doctor import check_disk, check_flags, check_gpu, check_store, missing_libraries
from nativellm.paths import Paths, resolve_paths

PROFILES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path))
    paths: Paths = resolve_paths()
    profile = load_profile(PROFILES / "zen4-epyc.json")
    stage = tmp_path / "stage"
    (stage / "bin").mkdir(parents=True)
    (stage / "bin" / "llama-server").write_text("binary")
    plan = plan_build(profile, PlanOptions())
    s = Store(paths)
    s.install(stage, {"id": "cpu-zen4", "created": "1", "plan": plan.to_dict(), "smoke_test": {"passed": True},
                      "built_for": profile.to_dict(),
                      "binaries": {"bin/llama-server": sha256_file(stage / "bin" / "llama-server")}})  # fmt: skip
    s.set_current("cpu-zen4")
    return s


def test_healthy_store_is_clean(store: Store) -> None:
    findings = check_store(store) + check_flags(store, load_profile(PROFILES / "zen4-epyc.json"))
    assert findings and all(f.ok for f in findings)


def test_tampered_and_missing_binaries_are_found(store: Store) -> None:
    binary = store.paths.builds / "cpu-zen4" / "bin" / "llama-server"
    binary.write_text("tampered")
    (problem,) = [f for f in check_store(store) if not f.ok]
    assert "does not match its manifest sha256" in problem.message and "rebuild" in problem.fix
    binary.unlink()
    (problem,) = [f for f in check_store(store) if not f.ok]
    assert "missing" in problem.message


def test_build_flags_missing_on_this_cpu_are_found(store: Store) -> None:
    old_xeon = load_profile(PROFILES / "ivybridge-avx-only-xeon.json")
    (problem,) = check_flags(store, old_xeon)
    assert not problem.ok and "avx2" in problem.message and "avx512f" in problem.message


def test_cuda_build_without_devices_is_found(store: Store, tmp_path: Path) -> None:
    manifest = store.paths.builds / "cpu-zen4" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["plan"]["backend"] = "cuda"
    manifest.write_text(json.dumps(data))
    host = load_profile(PROFILES / "zen4-epyc.json")
    (problem,) = check_gpu(store, host, dev=tmp_path / "no-dev")
    assert not problem.ok and "/dev/nvidiactl" in problem.message
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidiactl").write_text("")
    assert all(f.ok for f in check_gpu(store, dataclasses.replace(host, gpus=()), dev=tmp_path / "dev"))


HW = Path(__file__).resolve().parents[1] / "fixtures" / "hw"


def _cuda_store(store: Store, nvcc_fixture: str, built_for: list[GpuInfo]) -> None:
    manifest = store.paths.builds / "cpu-zen4" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["plan"]["backend"] = "cuda"
    data["toolchain"] = {"nvcc": nvcc_identity((HW / nvcc_fixture).read_text())}
    data["built_for"]["gpus"] = [dataclasses.asdict(g) for g in built_for]
    manifest.write_text(json.dumps(data))


def _dev(tmp_path: Path, *nodes: str) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    for n in nodes:
        (dev / n).write_text("")
    return dev


def test_driver_too_old_for_the_builds_cuda_release_is_found(store: Store, tmp_path: Path) -> None:
    """Two L4s on driver 570.144 (captured nvidia-smi): fine for a CUDA 12 build, too old for CUDA 13."""
    l4s = tuple(parse_nvidia_smi_csv((HW / "nvidia_smi_l4_x2.csv").read_text()))
    host = dataclasses.replace(load_profile(PROFILES / "zen4-epyc.json"), gpus=l4s)
    dev = _dev(tmp_path, "nvidiactl", "nvidia0", "nvidia1")
    _cuda_store(store, "nvcc_version_12.0_line.txt", list(l4s))
    (ok,) = check_gpu(store, host, dev=dev)
    assert ok.ok and "CUDA 12.0, driver 570.144" in ok.message
    _cuda_store(store, "nvcc_version_13.0.txt", list(l4s))
    (problem,) = check_gpu(store, host, dev=dev)
    assert (
        not problem.ok
        and "driver 570.144 is too old for this CUDA 13.0 build (needs >= 580)" in problem.message
    )
    assert "upgrade the NVIDIA driver" in problem.fix


def test_missing_device_node_and_missing_gpu_are_found(store: Store, tmp_path: Path) -> None:
    l4s = tuple(parse_nvidia_smi_csv((HW / "nvidia_smi_l4_x2.csv").read_text()))
    host = dataclasses.replace(load_profile(PROFILES / "zen4-epyc.json"), gpus=l4s)
    _cuda_store(store, "nvcc_version_12.0_line.txt", list(l4s))
    (problem,) = check_gpu(store, host, dev=_dev(tmp_path, "nvidiactl", "nvidia0"))
    assert not problem.ok and "/dev/nvidia1" in problem.message
    one = dataclasses.replace(host, gpus=l4s[:1])  # a GPU fell off the bus
    (problem,) = check_gpu(store, one, dev=_dev(tmp_path, "nvidiactl", "nvidia0"))
    assert not problem.ok and "made for 2 NVIDIA GPU(s), 1 present" in problem.message


def test_nvcc_identity_is_the_release_line_not_the_banner() -> None:
    assert (
        nvcc_identity((HW / "nvcc_version_13.0.txt").read_text())
        == "Cuda compilation tools, release 13.0, V13.0.88"
    )
    assert nvcc_identity("nvcc: NVIDIA (R) Cuda compiler driver\n") is None


def test_low_disk_is_found(store: Store) -> None:
    assert check_disk(store.paths, minimum=1)[0].ok
    (problem,) = check_disk(store.paths, minimum=1 << 60)
    assert not problem.ok and "gc" in problem.fix


def test_instance_problems_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-edited unit, stolen port and lingering off are each found; a healthy setup is clean."""
    from nativellm.ops.doctor import check_instances
    from nativellm.serve.instances import InstanceOptions, Instances
    from tests.unit.test_instances import _profile, _today, make_paths

    paths = make_paths(tmp_path, monkeypatch)
    busy: set[int] = set()
    inst = Instances(
        paths, None, profile=_profile, port_in_use=lambda port, host: port in busy, server_flags=_today
    )
    inst.add("q4", InstanceOptions(model=str(tmp_path / "m.gguf"), port=8090))

    def doctor(linger: bool = True) -> list[str]:
        found = check_instances(inst, linger=lambda: linger, port_in_use=lambda p, h: p in busy)
        return [f.message for f in found if not f.ok]

    assert doctor() == []
    dropin = paths.units / "llama@q4.service.d" / "50-nativellm.conf"
    dropin.write_text(dropin.read_text() + "Environment=HACK=1\n")
    assert any("edited by hand" in m for m in doctor())
    inst.edit("q4", InstanceOptions())  # re-render repairs it
    assert doctor() == []
    busy.add(8090)
    assert any("port 8090 is taken" in m for m in doctor())
    busy.clear()
    assert any("lingering is off" in m for m in doctor(linger=False))


def test_an_instance_refused_for_its_offload_is_a_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit that failed its offload check (GPU layers asked for, no GPU): doctor says why, with the
    readiness helper's verdict from the journal; a unit failed for another reason is not this finding."""
    from nativellm.ops.doctor import check_instances
    from nativellm.serve.healthcheck import OFFLOAD_FAILED
    from nativellm.serve.instances import InstanceOptions, Instances
    from nativellm.serve.systemd import UnitState
    from tests.unit.test_instances import _profile, _today, make_paths

    class Failed:
        def available(self) -> bool:
            return True

        def state(self, unit: str) -> UnitState:
            return UnitState(
                unit, "loaded", "failed", "failed", "exit-code", 0, 5, None, None, 0, False, "enabled"
            )

    paths = make_paths(tmp_path, monkeypatch)
    inst = Instances(paths, None, profile=_profile, port_in_use=lambda port, host: False, server_flags=_today)
    inst.add("gpu", InstanceOptions(model=str(tmp_path / "m.gguf"), port=8091, gpu_layers=99))
    inst.systemd = Failed()  # type: ignore[assignment]
    verdict = OFFLOAD_FAILED + "llama-server --list-devices found no GPU device (it listed none) within 15s"
    monkeypatch.setattr(inst, "error_line", lambda name: verdict)
    (finding,) = [
        f for f in check_instances(inst, linger=lambda: True, port_in_use=lambda p, h: False) if not f.ok
    ]
    assert finding.check == "offload" and finding.message == f"instance gpu did not start: {verdict}"
    assert "nativellm logs gpu" in finding.fix
    monkeypatch.setattr(inst, "error_line", lambda name: "error loading model: bad magic")
    assert all(f.ok for f in check_instances(inst, linger=lambda: True, port_in_use=lambda p, h: False))


def test_removed_model_is_found(store: Store, tmp_path: Path) -> None:
    from ggufs import write_gguf

    from nativellm.models.registry import add_model
    from nativellm.ops.doctor import check_models

    model = write_gguf(tmp_path / "m.gguf")
    add_model(store.paths, model, name="m")
    assert all(f.ok for f in check_models(store.paths))
    model.unlink()
    (problem,) = check_models(store.paths)
    assert not problem.ok and "model m" in problem.message and problem.fix


def test_missing_libraries_parses_ldd_not_found_lines() -> None:
    ldd = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibcudart.so.13 => not found\n"
        "\tlibggml-base.so.0 => /opt/b/bin/../lib/libggml-base.so.0 (0x00007fe4)\n"
        "\tlibcublas.so.13 => not found\n"
    )
    assert missing_libraries(ldd) == ["libcudart.so.13", "libcublas.so.13"]
    assert missing_libraries("\tnot a dynamic executable\n") == []


def test_a_damaged_model_index_is_a_finding_not_the_end(store: Store) -> None:
    """An unreadable models/index.json is listed with the model registry's fix (no ModelError)."""
    from nativellm.ops.doctor import check_models

    index = store.paths.models / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("{not json")
    (problem,) = check_models(store.paths)
    assert not problem.ok and "index.json is damaged" in problem.message and "backup" in problem.fix
    assert index.read_text() == "{not json"  # doctor only reads


def test_a_corrupt_spec_is_a_finding_and_the_other_instances_are_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nativellm.ops.doctor import check_instances
    from nativellm.serve.instances import InstanceOptions, Instances
    from tests.unit.test_instances import _profile, _today, make_paths

    paths = make_paths(tmp_path, monkeypatch)
    inst = Instances(paths, None, profile=_profile, port_in_use=lambda port, host: False, server_flags=_today)
    inst.add("q4", InstanceOptions(model=str(tmp_path / "m.gguf"), port=8090))
    (paths.config / "instances" / "bad.toml").write_text("[[[[")
    found = check_instances(inst, linger=lambda: True, port_in_use=lambda p, h: p == 8090)
    problems = [f for f in found if not f.ok]
    assert len(problems) == 2, problems
    assert "bad.toml is not valid TOML" in problems[0].message and problems[0].fix
    assert "q4's port 8090 is taken" in problems[1].message  # q4 was still checked
