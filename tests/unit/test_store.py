"""Build store: atomic current switch, rollback, rm/gc protections, the build lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nativellm.build.store import Store
from nativellm.errors import NotFoundError, ResourceError, StoreError
from nativellm.paths import Paths, resolve_paths


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path))
    return resolve_paths()


def _install(store: Store, tmp_path: Path, build_id: str, created: str, passed: bool = True) -> None:
    stage = tmp_path / f"stage-{build_id}"
    (stage / "bin").mkdir(parents=True)
    (stage / "bin" / "llama-server").write_text(build_id)
    store.install(stage, {"id": build_id, "created": created, "plan": {"backend": "cpu"},
                          "smoke_test": {"passed": passed}, "requested_ids": [build_id, f"req-{build_id}"]})  # fmt: skip


def test_install_and_switch_current_atomically(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    _install(store, tmp_path, "cpu-aaa", "2026-01-01")
    _install(store, tmp_path, "cpu-bbb", "2026-01-02")
    assert store.set_current("cpu-aaa") is True
    assert store.set_current("cpu-aaa") is False  # idempotent
    assert os.readlink(paths.current) == "builds/cpu-aaa"  # relative: the store can move
    assert store.set_current("cpu-bbb") is True
    assert store.current_id() == "cpu-bbb"
    assert [r.id for r in store.list_builds()] == ["cpu-aaa", "cpu-bbb"]
    assert store.find_by_request("req-cpu-aaa") is not None
    assert store.find_by_request("req-cpu-aaa").id == "cpu-aaa"  # type: ignore[union-attr]


def test_rollback_returns_to_the_previous_current(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    for i, bid in enumerate(("cpu-a", "cpu-b", "cpu-c")):
        _install(store, tmp_path, bid, f"2026-01-0{i + 1}")
        store.set_current(bid)
    assert store.rollback().id == "cpu-b"
    assert store.current_id() == "cpu-b"
    assert store.rollback().id == "cpu-c"  # rollback of a rollback goes back


def test_rollback_without_history_is_a_clear_error(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    _install(store, tmp_path, "cpu-a", "1")
    store.set_current("cpu-a")
    with pytest.raises(StoreError, match="no earlier build"):
        store.rollback()


def test_failed_smoke_build_cannot_become_current(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    _install(store, tmp_path, "cpu-bad", "1", passed=False)
    with pytest.raises(StoreError, match="smoke test"):
        store.set_current("cpu-bad")
    assert store.current_id() is None


def test_rm_and_gc_never_remove_current_or_pinned(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    for i in range(5):
        _install(store, tmp_path, f"cpu-{i}", f"2026-01-0{i}")
    store.set_current("cpu-0")
    spec_dir = paths.config / "instances"
    spec_dir.mkdir(parents=True)
    (spec_dir / "q4.toml").write_text('name = "q4"\nbuild = "cpu-1"\n')
    with pytest.raises(StoreError, match="is current"):
        store.remove("cpu-0")
    with pytest.raises(StoreError, match="pinned by instance"):
        store.remove("cpu-1")
    with pytest.raises(NotFoundError):
        store.remove("cpu-nope")
    (paths.work / "cpu-failed" / "build").mkdir(parents=True)
    (paths.work / "smoke-cache").mkdir()
    removed = store.gc(keep=1)
    assert removed == ["cpu-2", "cpu-3"]
    assert [p.name for p in paths.work.iterdir()] == ["smoke-cache"]
    assert {r.id for r in store.list_builds()} == {"cpu-0", "cpu-1", "cpu-4"}


def test_prefix_lookup_must_be_unambiguous(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    _install(store, tmp_path, "cpu-abc1", "1")
    _install(store, tmp_path, "cpu-abc2", "2")
    assert store.find("cpu-abc") is None
    assert store.get("cpu-abc2").id == "cpu-abc2"


def test_lock_excludes_a_second_builder(paths: Paths) -> None:
    store = Store(paths)
    with (
        store.lock(),
        pytest.raises(ResourceError, match="another nativellm build is running"),
        Store(paths).lock(),
    ):
        pass
    with store.lock():  # released again
        pass


def test_corrupt_manifest_is_ignored_not_fatal(paths: Paths, tmp_path: Path) -> None:
    store = Store(paths)
    _install(store, tmp_path, "cpu-ok", "1")
    broken = paths.builds / "cpu-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert [r.id for r in store.list_builds()] == ["cpu-ok"]
    assert (
        json.loads((paths.builds / "cpu-ok" / "manifest.json").read_text())["schema"] == "nativellm.build/1"
    )
