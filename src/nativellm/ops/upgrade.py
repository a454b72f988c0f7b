"""Upgrades that cannot take the service down, and `builds rollback` with restarts (issue 5).

    new build (compile or artifact, not activated) -> `current` = new
    -> for each selected instance that follows `current` and is running, one at a time:
         restart, wait for /health (the unit's readiness wait), run a real completion
    -> any failure: `current` = old, restart the instances already touched on the old build,
       raise UpgradeError with the reason.

Instances run llama-server through the `current` link (see Instances._resolve), so a running
instance keeps the binary it was started with until it restarts: switching the link is safe,
and restarting is what moves an instance. Pinned instances (`build = "<id>"`) are never touched.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nativellm import client
from nativellm.build.artifacts import InstallOptions, install_artifact, trusted_sha
from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import build_llama
from nativellm.build.plan import NO_UI_REASON, Backend, PlanOptions
from nativellm.build.source import SourceRequest, check_request
from nativellm.build.store import Store
from nativellm.errors import NativeLLMError, NotFoundError, ResourceError, UsageError
from nativellm.fsutil import file_lock
from nativellm.paths import Paths
from nativellm.progress import Reporter, SilentReporter
from nativellm.serve.dropins import base_url, unit_name
from nativellm.serve.instances import Instances, Refresh
from nativellm.serve.systemd import Systemd, reachable, require_reachable
from nativellm.specs import InstanceSpec, validate_name


class UpgradeError(NativeLLMError):
    """An upgrade failed and was rolled back (or could not even start)."""

    exit_code = 16
    kind = "upgrade"


# --------------------------------------------------------------------------- pure decisions
@dataclass(frozen=True)
class RolloutPlan:
    """Which instances an upgrade restarts, in order, and which it leaves alone (and why)."""

    restart: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, why)
    canary: str | None = None


def plan_rollout(
    specs: Sequence[InstanceSpec],
    *,
    selected: Sequence[str] | None,
    canary: str | None,
    running: Callable[[str], bool],
    on_build: Callable[[str], str | None],
    new_id: str,
) -> RolloutPlan:
    """Pure: decide the rollout. `selected` None means all; `running(name)` says whether the unit
    is active; `on_build(name)` names the build its server runs now (None: unknown)."""
    by_name = {s.name: s for s in specs}
    wanted = [canary] if canary else list(selected) if selected is not None else list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise NotFoundError(f"no instance named {', '.join(unknown)}", "see `nativellm instance list`")
    if canary and by_name[canary].build != "current":
        raise UsageError(
            f"instance {canary} is pinned to build {by_name[canary].build}; a canary must follow current",
            f"pick an instance with build = current, or `nativellm instance edit {canary} --build current`",
        )
    restart: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in sorted(by_name):
        spec = by_name[name]
        if name not in wanted:
            if spec.build == "current" and running(name) and on_build(name) != new_id:
                why = "not selected: keeps running the old build until it restarts"
            else:
                why = "not selected"
            skipped.append((name, why))
        elif spec.build != "current":
            skipped.append((name, f"pinned to build {spec.build}"))
        elif not running(name):
            skipped.append((name, "not running: starts on the new build next time"))
        elif on_build(name) == new_id:
            skipped.append((name, "already runs the new build"))
        else:
            restart.append(name)
    return RolloutPlan(tuple(restart), tuple(skipped), canary)


def build_of_exe(exe: str) -> str | None:
    """builds/<id>/bin/llama-server (any prefix) -> <id>."""
    parts = Path(exe).parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "builds" and parts[i + 2] == "bin":
            return parts[i + 1]
    return None


def running_build(pid: int) -> str | None:
    """The build a running server was started from (its /proc/PID/exe), None when unknown."""
    if pid <= 0:
        return None
    try:
        return build_of_exe(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


# --------------------------------------------------------------------------- checks
def completion_check(spec: InstanceSpec, timeout: float = 120.0) -> str | None:
    """A real completion through the instance; None when it worked, else why not."""
    key = None
    if spec.api_key_file:
        try:
            key = Path(spec.api_key_file).read_text().strip()
        except OSError as exc:
            return f"cannot read the API key file {spec.api_key_file}: {exc.strerror}"
    return client.openai_completion_problem(base_url(spec), key, timeout)


# --------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class UpgradeOptions:
    """`nativellm upgrade`. Exactly one of build/artifact; neither: the current source again."""

    build: BuildOptions | None = None  # activate=False is forced
    artifact: str | None = None
    sha256: str | None = None
    instances: tuple[str, ...] | None = None  # None: all
    canary: str | None = None
    insecure_unsigned: bool = False  # --artifact without a verified signature (warned; never plain http)


@dataclass(frozen=True)
class Step:
    name: str
    result: str  # upgraded | failed | rolled back | rollback failed
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.name, "result": self.result, "seconds": round(self.seconds, 2),
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True)
class UpgradeOutcome:
    previous: str | None
    current: str
    changed: bool
    steps: tuple[Step, ...]
    skipped: tuple[tuple[str, str], ...]
    canary: str | None
    duration_s: float
    notes: tuple[str, ...] = ()
    rolled_back: bool = False
    reason: str | None = None
    rollback_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "current": self.current,
            "canary": self.canary,
            "rolled_back": self.rolled_back,
            "reason": self.reason,
            "steps": [s.to_dict() for s in self.steps],
            "skipped": [{"instance": n, "why": w} for n, w in self.skipped],
            "duration_s": round(self.duration_s, 2),
            "rollback_s": round(self.rollback_s, 2) if self.rollback_s is not None else None,
            "notes": list(self.notes),
        }


@contextmanager
def _upgrade_lock(paths: Paths) -> Iterator[None]:
    """One upgrade at a time (a separate lock: the build inside takes the store lock)."""

    def busy(holder: str) -> None:
        raise ResourceError("another nativellm upgrade is running", "wait for it to finish")

    with file_lock(paths.home / "upgrade.lock", on_busy=busy):
        yield


def plan_like(manifest: dict[str, Any]) -> Any:
    """PlanOptions that rebuild the shape of an installed build: its backend, `--rpc`, `--portable`,
    `--single-binary`, `--no-ui`."""
    plan = manifest.get("plan", {})
    defines = plan.get("cmake_defines", {})
    return PlanOptions(
        backend=Backend(plan.get("backend", "cpu")),
        rpc="rpc-server" in plan.get("targets", []),
        portable=defines.get("GGML_CPU_ALL_VARIANTS") == "ON",
        single_binary=defines.get("BUILD_SHARED_LIBS") == "OFF",
        ui=plan.get("reasons", {}).get("LLAMA_BUILD_UI") != NO_UI_REASON,
    )


def _build_options(store: Store, given: BuildOptions | None) -> BuildOptions:
    """The new version's source (given, or the current build's again) built in the current shape,
    so an upgrade never drops the backend or rpc-server that instances and workers rely on."""
    cur = store.current()
    if cur is None:
        raise UpgradeError(
            "there is no current build to upgrade", "build one first: `nativellm build --auto`"
        )
    if given is not None:
        return dataclasses.replace(given, plan=plan_like(cur.manifest))
    src = cur.source
    if src.get("kind") == "directory" and src.get("path"):
        req = SourceRequest(directory=Path(str(src["path"])))
    elif src.get("kind") == "git" and src.get("ref"):
        req = SourceRequest(ref=str(src["ref"]), repo=str(src.get("repo") or SourceRequest().repo))
    else:
        raise UsageError(
            "upgrade needs a new version: give --ref, --source, --tarball or --artifact "
            "(the current build's source cannot be fetched again)",
            "for example `nativellm upgrade --ref TAG`, or `--artifact FILE` for a packed build",
        )
    return BuildOptions(plan=plan_like(cur.manifest), source=req)


@dataclass
class _Rollout:
    """The mutable state of one rollout: what was touched, so a failure can undo exactly that."""

    paths: Paths
    sd: Systemd
    touched: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def _instances(paths: Paths, sd: Systemd) -> Instances:
    return Instances(paths, sd)


def check_upgrade(paths: Paths, store: Store, insts: Instances, opts: UpgradeOptions) -> BuildOptions | None:
    """Everything an upgrade can refuse without systemd and without side effects: the names, the new
    version (a source that exists, or an artifact that exists and is trusted) and the instances
    selected. Returns the build options (None for --artifact)."""
    if opts.canary and opts.instances is not None:
        raise UsageError("--canary and --instances exclude each other", "give one of them")
    for name in ((opts.canary,) if opts.canary is not None else ()) + (opts.instances or ()):
        validate_name(name)
    bopts = None
    if opts.artifact is not None:
        # Reads the signature (and sidecar) only: nothing is fetched, unpacked or run yet.
        trusted_sha(
            paths,
            InstallOptions(
                opts.artifact, opts.sha256, activate=False, insecure_unsigned=opts.insecure_unsigned
            ),
            SilentReporter(),
        )
    else:
        bopts = _build_options(store, opts.build)
        check_request(bopts.source)
    plan_rollout(insts.specs(), selected=opts.instances, canary=opts.canary,
                 running=lambda n: False, on_build=lambda n: None, new_id="")  # fmt: skip
    return bopts


def upgrade(
    paths: Paths, opts: UpgradeOptions, systemd: Systemd, reporter: Reporter | None = None
) -> UpgradeOutcome:
    """Install the new build beside the old one, then move the instances one at a time."""
    rep = reporter or SilentReporter()
    t0 = time.monotonic()
    store = Store(paths)
    insts = _instances(paths, systemd)
    # The command's own arguments first (usage, not found, an untrusted artifact): a typo is
    # answered as such on any host, before systemd is asked for and before minutes of compiling.
    bopts = check_upgrade(paths, store, insts, opts)
    require_reachable(
        systemd,
        "upgrade restarts instances under systemd; on a host without it use `nativellm build` and restart by hand",
    )
    with _upgrade_lock(paths):
        previous = store.current_id()
        if opts.artifact is not None:
            res = install_artifact(
                paths,
                InstallOptions(
                    opts.artifact, opts.sha256, activate=False, insecure_unsigned=opts.insecure_unsigned
                ),
                rep,
            )
            new_id = res.build_id
        else:
            assert bopts is not None  # check_upgrade gives build options whenever there is no artifact
            built = build_llama(paths, dataclasses.replace(bopts, activate=False, dry_run=False), rep)
            if built.build_id is None or built.record is None or not built.record.smoke_passed:
                raise UpgradeError("the new build was not smoke-tested on this host", "build for this host")
            new_id = built.build_id

        def running(name: str) -> bool:
            return systemd.state(unit_name(name)).running

        def on_build(name: str) -> str | None:
            return running_build(systemd.state(unit_name(name)).main_pid)

        specs = insts.specs()
        plan = plan_rollout(
            specs,
            selected=opts.instances,
            canary=opts.canary,
            running=running,
            on_build=on_build,
            new_id=new_id,
        )
        notes: list[str] = []
        switched = store.set_current(new_id)
        if switched:
            rep.stage(f"current {previous} -> {new_id}")
        # Every unit that follows current now names the new build's server: render its flags
        # for that server (an instance restarted later by systemd itself runs it too).
        for name, problem in insts.refresh_units().failed:
            if name not in plan.restart:
                notes.append(f"{name}: its unit still has the flags of the old build ({problem})")
        ro = _Rollout(paths, systemd)
        by_name = {s.name: s for s in specs}
        for name in plan.restart:
            spec = by_name[name]
            rep.stage(f"restarting {name} on {new_id}")
            t = time.monotonic()
            ro.touched.append(name)
            try:
                why = _restart_and_check(insts, spec)
            except BaseException:  # D-Bus gone, Ctrl-C: still put the old build back first
                _roll_back(ro, store, insts, by_name, previous, rep)
                raise
            if why is not None:
                ro.steps.append(Step(name, "failed", time.monotonic() - t, why))
                reason = f"instance {name} failed on build {new_id}: {why}"
                rb = _roll_back(ro, store, insts, by_name, previous, rep)
                broken = [s.name for s in ro.steps if s.result == "rollback failed"]
                if broken:
                    reason += f"; and {', '.join(broken)} did not come back on {previous} either"
                rest = plan.restart[len(ro.touched) :]
                skipped = plan.skipped + tuple((n, "not reached: the rollout stopped") for n in rest)
                return UpgradeOutcome(
                    previous, store.current_id() or "", True, tuple(ro.steps), skipped, opts.canary,
                    time.monotonic() - t0, tuple(notes), rolled_back=True, reason=reason, rollback_s=rb,
                )  # fmt: skip
            ro.steps.append(Step(name, "upgraded", time.monotonic() - t))
        if opts.canary:
            notes.append(
                f"canary {opts.canary} serves on {new_id}; the other instances keep the old build until "
                "they restart. Next: run the same `nativellm upgrade` without --canary to roll the rest, "
                "or `nativellm builds rollback` to go back"
            )
        return UpgradeOutcome(
            previous, new_id, switched or bool(ro.steps), tuple(ro.steps), plan.skipped, opts.canary,
            time.monotonic() - t0, tuple(notes),
        )  # fmt: skip


def _restart_and_check(insts: Instances, spec: InstanceSpec) -> str | None:
    failed = dict(insts.refresh_units([spec.name]).failed)  # its flags for the build it will run
    if spec.name in failed:
        return failed[spec.name]
    try:
        insts.restart(spec.name)  # returns once the unit is active, i.e. /health answered 200
    except NativeLLMError as exc:
        return exc.message
    return completion_check(spec)


def _roll_back(
    ro: _Rollout,
    store: Store,
    insts: Instances,
    by_name: dict[str, InstanceSpec],
    previous: str | None,
    rep: Reporter,
) -> float:
    t = time.monotonic()
    if previous is not None:
        store.set_current(previous)
        rep.stage(f"rolling back: current -> {previous}")
        insts.refresh_units()
    for name in ro.touched:
        t1 = time.monotonic()
        why = _restart_and_check(insts, by_name[name])
        result = "rolled back" if why is None else "rollback failed"
        ro.steps.append(Step(name, result, time.monotonic() - t1, why or f"serving on {previous}"))
    return time.monotonic() - t


def rollback_error(outcome: UpgradeOutcome) -> UpgradeError:
    return UpgradeError(
        f"{outcome.reason}; rolled back to {outcome.current}",
        "the instances serve on the old build again; see `nativellm logs NAME` for the failing server's output",
    )


def raise_if_rolled_back(outcome: UpgradeOutcome) -> None:
    if outcome.rolled_back:
        raise rollback_error(outcome)


# --------------------------------------------------------------------------- builds use / rollback
@dataclass(frozen=True)
class UseOutcome:
    """`builds use`: the build now current, and the units re-rendered for its llama-server."""

    current: str
    changed: bool
    refresh: Refresh


def use_build(paths: Paths, build_id: str, systemd: Systemd | None) -> UseOutcome:
    """Point `current` at a build and re-render the followers' units for its server (restarts are
    the user's: a running server keeps its binary until then)."""
    store = Store(paths)
    rec = store.get(build_id)
    changed = store.set_current(rec.id)
    refresh = Instances(paths, reachable(systemd)).refresh_units() if changed else Refresh((), ())
    return UseOutcome(rec.id, changed, refresh)


@dataclass(frozen=True)
class RollbackOutcome:
    previous: str | None
    current: str
    restarted: tuple[str, ...]
    not_running: tuple[str, ...]
    systemd: bool


def rollback_and_restart(paths: Paths, systemd: Systemd | None) -> RollbackOutcome:
    """`builds rollback`: swap `current` back, then restart the running instances that follow it."""
    store = Store(paths)
    before = store.current_id()
    rec = store.rollback()
    sd = reachable(systemd)
    insts = Instances(paths, sd)  # sd None: the units are still re-rendered
    insts.refresh_units()  # the units must carry the flags of the server they will run
    if sd is None:
        return RollbackOutcome(before, rec.id, (), (), False)
    restarted: list[str] = []
    idle: list[str] = []
    for spec in insts.specs():
        if spec.build != "current":
            continue
        if not sd.state(unit_name(spec.name)).running:
            idle.append(spec.name)
            continue
        insts.restart(spec.name)
        restarted.append(spec.name)
    return RollbackOutcome(before, rec.id, tuple(restarted), tuple(idle), True)
