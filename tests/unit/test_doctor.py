"""doctor: each injected problem is found, a healthy store is clean."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nativellm.doctor import check_disk, check_flags, check_gpu, check_store
from nativellm.fsutil import sha256_file
from nativellm.hardware.profile import load_profile
from nativellm.paths import Paths, resolve_paths
from nativellm.plan import PlanOptions, plan_build
from nativellm.store import Store

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


def test_low_disk_is_found(store: Store) -> None:
    assert check_disk(store.paths, minimum=1)[0].ok
    (problem,) = check_disk(store.paths, minimum=1 << 60)
    assert not problem.ok and "gc" in problem.fix


def test_instance_problems_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-edited unit, stolen port and lingering off are each found; a healthy setup is clean."""
    from nativellm.doctor import check_instances
    from nativellm.instances import InstanceOptions, Instances
    from tests.unit.test_instances import _profile, make_paths

    paths = make_paths(tmp_path, monkeypatch)
    busy: set[int] = set()
    inst = Instances(paths, None, profile=_profile, port_in_use=lambda port, host: port in busy)
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


def test_removed_model_is_found(store: Store, tmp_path: Path) -> None:
    from nativellm.doctor import check_models
    from nativellm.models import add_model
    from tests.fixtures.models.ggufs import write_gguf

    model = write_gguf(tmp_path / "m.gguf")
    add_model(store.paths, model, name="m")
    assert all(f.ok for f in check_models(store.paths))
    model.unlink()
    (problem,) = check_models(store.paths)
    assert not problem.ok and "model m" in problem.message and problem.fix
