"""The upgrade's pure decisions: which instances move, in which order, and which are left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nativellm.errors import NotFoundError, UsageError
from nativellm.ops.upgrade import Step, UpgradeOutcome, build_of_exe, plan_rollout, rollback_error
from nativellm.specs import InstanceSpec

NEW = "cpu-new"
OLD = "cpu-old"


def _specs() -> list[InstanceSpec]:
    return [
        InstanceSpec("b", "demo", 8081),
        InstanceSpec("a", "demo", 8080),
        InstanceSpec("pinned", "demo", 8082, build=OLD),
        InstanceSpec("stopped", "demo", 8083),
        InstanceSpec("moved", "demo", 8084),
    ]


def _plan(selected: list[str] | None = None, canary: str | None = None):  # type: ignore[no-untyped-def]
    builds = {"a": OLD, "b": OLD, "pinned": OLD, "moved": NEW}
    return plan_rollout(
        _specs(), selected=selected, canary=canary, running=lambda n: n != "stopped",
        on_build=builds.get, new_id=NEW,
    )  # fmt: skip


def test_all_moves_running_followers_in_name_order_and_says_why_for_the_rest() -> None:
    plan = _plan()
    assert plan.restart == ("a", "b")
    assert dict(plan.skipped) == {
        "moved": "already runs the new build",
        "pinned": f"pinned to build {OLD}",
        "stopped": "not running: starts on the new build next time",
    }


def test_canary_moves_exactly_one() -> None:
    plan = _plan(canary="b")
    assert plan.restart == ("b",) and plan.canary == "b"
    assert dict(plan.skipped)["a"] == "not selected: keeps running the old build until it restarts"
    assert dict(plan.skipped)["moved"] == "not selected"


def test_selected_subset() -> None:
    assert _plan(["b", "pinned"]).restart == ("b",)


def test_unknown_instance_and_pinned_canary_are_refused() -> None:
    with pytest.raises(NotFoundError, match="no instance named nope"):
        _plan(["nope"])
    with pytest.raises(UsageError, match="pinned"):
        _plan(canary="pinned")


def test_unknown_running_build_is_moved() -> None:
    plan = plan_rollout([InstanceSpec("a", "demo", 1)], selected=None, canary=None,
                        running=lambda n: True, on_build=lambda n: None, new_id=NEW)  # fmt: skip
    assert plan.restart == ("a",)


@pytest.mark.parametrize(
    ("exe", "build"),
    [
        ("/root/.local/share/nativellm/builds/cpu-abc/bin/llama-server", "cpu-abc"),
        ("/var/lib/nativellm/builds/cuda-1/bin/llama-server.real", "cuda-1"),
        ("/usr/bin/llama-server", None),
    ],
)
def test_build_of_exe(exe: str, build: str | None) -> None:
    assert build_of_exe(exe) == build


def test_rolled_back_outcome_becomes_an_error_with_its_reason() -> None:
    out = UpgradeOutcome(OLD, OLD, True, (Step("a", "failed", 1.0, "boom"),), (), None, 2.0,
                         rolled_back=True, reason="instance a failed on build cpu-new: boom", rollback_s=1.0)  # fmt: skip
    exc = rollback_error(out)
    assert exc.exit_code == 16 and "boom" in exc.message and f"rolled back to {OLD}" in exc.message
    assert out.to_dict()["steps"][0] == {
        "instance": "a",
        "result": "failed",
        "seconds": 1.0,
        "detail": "boom",
    }


def test_a_rebuild_keeps_the_current_builds_shape() -> None:
    from nativellm.build.plan import Backend
    from nativellm.ops.upgrade import plan_like

    opts = plan_like({"plan": {"backend": "cuda", "targets": ["llama-server", "rpc-server"],
                               "cmake_defines": {"GGML_CPU_ALL_VARIANTS": "ON"}}})  # fmt: skip
    assert (opts.backend, opts.rpc, opts.portable) == (Backend.CUDA, True, True)
    plain = plan_like({"plan": {"backend": "cpu", "targets": ["llama-server"], "cmake_defines": {}}})
    assert (plain.backend, plain.rpc, plain.portable, plain.single_binary) == (
        Backend.CPU,
        False,
        False,
        False,
    )
    single = plan_like({"plan": {"backend": "cpu", "targets": ["llama-server"],
                                 "cmake_defines": {"BUILD_SHARED_LIBS": "OFF"}}})  # fmt: skip
    assert (single.backend, single.single_binary) == (Backend.CPU, True)
    assert plain.ui  # builds from before the web UI existed get it on upgrade
    no_ui = plan_like({"plan": {"backend": "cpu", "targets": ["llama-server"], "cmake_defines": {},
                                "reasons": {"LLAMA_BUILD_UI": "--no-ui: llama-server serves no web UI"}}})  # fmt: skip
    assert not no_ui.ui  # --no-ui stays


class _NoManager:
    """A service manager that is not there: the upgrade must not get as far as asking."""

    address = "unix:path=/nonexistent/bus"

    def available(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("given", "error", "needle"),
    [
        ({}, UsageError, "give --ref, --source, --tarball or --artifact"),
        ({"source": "nowhere"}, NotFoundError, "nowhere does not exist"),
        ({"artifact": "nope.tar.gz", "sha256": "ab" * 32}, NotFoundError, "nope.tar.gz does not exist"),
        ({"artifact": "a.tar.gz", "sha256": "xyz"}, UsageError, "is not a sha256"),
        ({"artifact": "a.tar.gz"}, None, "sign"),  # an unsigned artifact: refused before systemd too
        ({"source": ".", "instances": ("nosuch",)}, NotFoundError, "no instance named nosuch"),
        ({"source": ".", "canary": "../x"}, UsageError, "invalid instance name"),
        ({"source": ".", "instances": ("a\nb",)}, UsageError, "invalid instance name"),
    ],
)
def test_arguments_are_checked_before_systemd_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], error: type | None, needle: str
) -> None:
    from nativellm.build.options import BuildOptions
    from nativellm.build.source import SourceRequest
    from nativellm.errors import ArtifactError, InstanceError, NativeLLMError
    from nativellm.ops.upgrade import UpgradeOptions, upgrade
    from tests.unit.test_instances import _snapshot, make_paths

    paths = make_paths(tmp_path, monkeypatch)
    (tmp_path / "a.tar.gz").write_bytes(b"not read: the signature is asked for first")
    src = given.get("source")
    build = BuildOptions(source=SourceRequest(directory=tmp_path / src)) if src else None
    art = str(tmp_path / given["artifact"]) if "artifact" in given else None
    opts = UpgradeOptions(build, art, given.get("sha256"), given.get("instances"), given.get("canary"))
    before = _snapshot(paths)
    with pytest.raises(NativeLLMError) as exc:
        upgrade(paths, opts, _NoManager())  # type: ignore[arg-type]
    assert not isinstance(exc.value, InstanceError), exc.value.message  # not "systemd is not reachable"
    assert isinstance(exc.value, error or ArtifactError) and needle in exc.value.message
    assert _snapshot(paths) == before


def test_good_arguments_reach_the_systemd_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nativellm.build.options import BuildOptions
    from nativellm.build.source import SourceRequest
    from nativellm.errors import InstanceError
    from nativellm.ops.upgrade import UpgradeOptions, upgrade
    from tests.unit.test_instances import make_paths

    paths = make_paths(tmp_path, monkeypatch)
    opts = UpgradeOptions(BuildOptions(source=SourceRequest(directory=tmp_path)))
    with pytest.raises(InstanceError, match="systemd is not reachable on unix:path=/nonexistent/bus"):
        upgrade(paths, opts, _NoManager())  # type: ignore[arg-type]
