"""Drive the cpp/ superbuild: plan -> source -> configure/compile -> smoke test -> store.

`build_llama` is the use case behind `nativellm build`. Nothing reaches
`current` until its smoke test passed; a failure leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm import __version__, run
from nativellm.build import cmake, cudalibs
from nativellm.build.elf import beyond_glibc, find_needed
from nativellm.build.index import build_from_index
from nativellm.build.options import BuildOptions, BuildOutcome, runs_here
from nativellm.build.plan import Backend, BuildPlan, PlanOptions, next_fallback, plan_build
from nativellm.build.smoke import SmokeOffload, SmokeResult, base_model, plan_smoke_offload, smoke_test
from nativellm.build.source import Source, check_request, resolve_source
from nativellm.build.store import Store
from nativellm.build.synth import VOCAB_FILE, find_vocab
from nativellm.build.toolchain import Toolchain, failure_essence, find_toolchain, troubleshoot
from nativellm.build.tree import read_tree_options
from nativellm.build.ui import UI_DIR, UiAssets, find_ui_sources, provision_ui, ui_summary
from nativellm.errors import BuildError, ResourceError, SmokeTestError, UiError
from nativellm.fsutil import canonical_hash, sha256_file
from nativellm.hardware import HostProfile, detect_host
from nativellm.hardware.nvidia import find_nvcc
from nativellm.hardware.profile import load_profile
from nativellm.paths import Paths, package_data
from nativellm.progress import Reporter, SilentReporter

BUILD_FORMAT = 1  # bump when the store layout or superbuild changes the output
MIN_FREE_BYTES = 3 << 30
_NINJA_RE = re.compile(r"^\[(\d+)/(\d+)\]")
MAX_FALLBACKS = 2


def default_jobs(profile: HostProfile, backend: Backend) -> int:
    """Parallel compile jobs from cores and free RAM: a CUDA/HIP job needs a few GB."""
    per_job = (4 << 30) if backend in (Backend.CUDA, Backend.HIP) else (1 << 30)
    avail = _mem_available() or profile.memory_bytes
    return max(1, min(profile.cpu.logical_cores or 1, avail // per_job))


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def compute_build_id(plan: BuildPlan, source: Source, tools: Toolchain, profile: HostProfile) -> str:
    """Hash of everything that affects the binaries, so equal inputs are a cache hit."""
    superbuild = package_data("cpp") / "CMakeLists.txt"
    src = {k: v for k, v in source.identity.items() if k not in ("path", "origin")}
    inputs = {
        "format": BUILD_FORMAT,
        # "source" (the tree's revision) is left out: the source's own identity is hashed below.
        "plan": {k: v for k, v in plan.to_dict().items() if k not in ("reasons", "warnings", "source")},
        "source": src,
        "toolchain": tools.identity(),
        "superbuild": sha256_file(superbuild),
        "target": [profile.os, profile.arch],
    }
    kind = f"{plan.backend.value}-single" if plan.single_binary else plan.backend.value
    return f"{kind}-{canonical_hash(inputs)[:12]}"


def step_error(name: str, rc: int, log_text: str, log: Path) -> BuildError:
    """The one-line error for a failed CMake step: what CMake or the compiler said, the known fix
    when the failure is a known one, and where the full log is."""
    essence = failure_essence(log_text)
    said = f": {essence}" if essence else ""
    hint = troubleshoot(log_text) or f"read the log: {log}"
    return BuildError(f"llama.cpp {name} step failed (exit {rc}){said}; full log: {log}", hint)


@dataclass(frozen=True)
class ConfigureOutcome:
    """What `configure_llama` did: the plan adapted to the tree, and the configured build directory."""

    plan: BuildPlan
    source: Source
    build_dir: Path
    log: Path
    seconds: float


def _cuda_math(tools: Toolchain, plan: BuildPlan) -> cudalibs.CudaMath | None:
    """Where this build's cuBLAS comes from, for a plan that builds the CUDA backend."""
    return tools.cuda_math if plan.cmake_defines.get("GGML_CUDA") == "ON" else None


class _Builder:
    """The mutable state of one `build` run."""

    def __init__(self, paths: Paths, opts: BuildOptions, reporter: Reporter) -> None:
        self.paths = paths
        self.opts = opts
        self.rep = reporter
        self.store = Store(paths)
        self.ui: UiAssets | None = None  # the web UI assets this build embeds
        self.ui_warning = ""  # why the UI wanted was left out

    def compile(
        self,
        plan: BuildPlan,
        source: Source,
        tools: Toolchain,
        work: Path,
        jobs: int,
        *,
        configure_only: bool = False,
    ) -> Path:
        """Configure, compile and install into work/stage; with configure_only, configure into work/build."""
        stage, log = work / "stage", work / "build.log"
        shutil.rmtree(stage, ignore_errors=True)

        # Work dirs sit at one depth, so with a base dir ccache sees identical relative
        # paths across build ids and reuses objects a different plan left behind.
        ccache_env = {"CCACHE_BASEDIR": os.path.commonpath([source.path, work]), "CCACHE_NOHASHDIR": "1"}

        def on_line(line: str) -> None:
            m = _NINJA_RE.match(line)
            if m:
                self.rep.progress(int(m.group(1)), int(m.group(2)))

        ui_dist = self.ui.dist if self.ui is not None and not configure_only else None
        math = _cuda_math(tools, plan)
        cuda_libs = cudalibs.prefix_for(math, find_nvcc(), work / "cuda-libs") if math is not None else None
        steps = cmake.steps(tools, plan, source.path, work, jobs, ui_dist, cuda_libs)
        for name, argv in steps[:1] if configure_only else steps:
            self.rep.stage(f"{name} ({'ninja' if name == 'compile' else 'cmake'}, log: {log})")
            rc = run.stream(argv, log_path=log, on_line=on_line, env=ccache_env)
            if rc != 0:
                raise step_error(name, rc, log.read_text(errors="replace"), log)
        return work / "build" if configure_only else stage

    def plan_for(self, target: HostProfile, source: Source, options: PlanOptions) -> BuildPlan:
        """The plan adapted to the source tree's own CMake options (build/tree.py)."""
        plan = plan_build(target, options, read_tree_options(source.path))
        for key in plan.source.adapted if plan.source else ():
            self.rep.stage(f"adapted to the tree: {key}: {plan.reasons.get(key, '')}")
        return plan

    def link_cuda_runtime(self, stage: Path, tools: Toolchain, plan: BuildPlan) -> list[dict[str, str]]:
        """Link the CUDA runtime libraries the loader can't find (wheel cuBLAS) into stage/lib."""
        math = _cuda_math(tools, plan)
        if math is None:
            return []
        dirs = [math.lib_dir, *cudalibs.runtime_lib_dirs(find_nvcc(), math.major)]
        linked = cudalibs.link_runtime(stage, dirs)
        for entry in linked:
            if "from" in entry:
                self.rep.stage(f"CUDA runtime: lib/{entry['soname']} -> {entry['from']}")
        return linked

    @staticmethod
    def cuda_parts(tools: Toolchain, plan: BuildPlan, runtime_libs: list[dict[str, str]]) -> dict[str, Any]:
        """Manifest keys of a CUDA build: where cuBLAS came from and which runtime libraries were linked."""
        math = _cuda_math(tools, plan)
        return {} if math is None else {"cuda_math": math.to_dict(), "runtime_libs": runtime_libs}

    def warnings(self) -> list[str]:
        return [self.ui_warning] if self.ui_warning else []

    def provide_ui(
        self, plan: BuildPlan, options: PlanOptions, target: HostProfile, source: Source
    ) -> tuple[BuildPlan, PlanOptions]:
        """Build (or find cached) the web UI the plan asks for. When that is impossible (no npm,
        offline, a tree without tools/ui), warn with the fix and return the plan without the UI."""
        ui_dir = find_ui_sources(source.path)
        build = plan.source.build.removeprefix("b") if plan.source else ""
        try:
            if ui_dir is None:
                raise UiError(
                    f"this tree has no {UI_DIR} with package.json and package-lock.json to build it from",
                    "build a llama.cpp with tools/ui, or pass --no-ui",
                )
            self.ui = provision_ui(self.paths.ui_cache, ui_dir, self.rep, build if build.isdigit() else "")
            return plan, options
        except UiError as exc:
            self.ui_warning = f"web UI left out: {exc.message}; {exc.hint}"
            self.rep.warn(self.ui_warning)
            options = dataclasses.replace(options, ui=False, no_ui_reason=f"wanted, but {exc.message}")
            return self.plan_for(target, source, options), options

    def configure_only(self) -> ConfigureOutcome:
        """Plan for the source tree and run CMake's configure step, nothing else (no compile, no store)."""
        t0 = time.monotonic()
        opts = self.opts
        check_request(opts.source)
        here = detect_host()
        target = load_profile(opts.profile) if opts.profile else here
        plan_build(target, opts.plan)  # an impossible plan fails before anything is fetched
        with self.store.lock():
            source = resolve_source(opts.source, self.paths.sources)
            plan = self.plan_for(target, source, opts.plan)
            tools = find_toolchain(need_nvcc=plan.backend is Backend.CUDA)
            work = self.paths.work / f"configure-{compute_build_id(plan, source, tools, target)}"
            shutil.rmtree(work, ignore_errors=True)
            build_dir = self.compile(plan, source, tools, work, 1, configure_only=True)
        return ConfigureOutcome(plan, source, build_dir, work / "build.log", time.monotonic() - t0)

    def check_single_binary(self, stage: Path, log: Path) -> dict[str, Any]:
        """`--single-binary` promised a llama-server that needs only glibc: read its ELF to hold it to it."""
        server = stage / "bin" / "llama-server"
        needed = find_needed(server)
        if needed is None:
            raise BuildError(f"{server} is not a readable 64-bit ELF executable", f"read the log: {log}")
        extra = beyond_glibc(needed)
        if extra:
            raise BuildError(
                f"--single-binary: bin/llama-server still needs {', '.join(extra)}, which glibc does not "
                "provide, so it would not run on a host without it",
                f"read the link step in {log}; the llama.cpp tree links a library the plan does not turn off",
            )
        return {"file": "bin/llama-server", "needed": list(needed)}

    def smoke(
        self, stage: Path, work: Path, threads: int, offload: SmokeOffload | None = None
    ) -> SmokeResult:
        vocab = stage / "share" / "nativellm" / VOCAB_FILE  # ship_vocab put it there after the compile
        base = base_model(self.paths.work / "smoke-cache" / sha256_file(vocab)[:12], vocab)
        on = f" (Q4_0 on {offload.device})" if offload is not None else ""
        self.rep.stage(f"smoke test: real inference on Q4_0, Q8_0 and Q4_K_M models{on}")
        return smoke_test(stage / "bin", base, work / "smoke", threads=threads, offload=offload)

    @staticmethod
    def ship_vocab(stage: Path, source: Source) -> Path:
        """The tree's vocab GGUF in share/nativellm/: the smoke model is made from it, here and on every
        host that installs the build's artifact, so a cross-build (not smoke-tested here) carries it too."""
        share = stage / "share" / "nativellm"
        share.mkdir(parents=True, exist_ok=True)
        shutil.copy2(find_vocab(source.path), share / VOCAB_FILE)
        return share / VOCAB_FILE

    def manifest(self, **parts: Any) -> dict[str, Any]:
        stage: Path = parts.pop("stage")
        binaries = {
            str(p.relative_to(stage)): sha256_file(p)
            for p in sorted(stage.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.parent.name in ("bin", "lib")
        }
        stamp_file = stage / "share" / "nativellm" / "nativellm-cmake.json"
        stamp = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
        return {**parts, "binaries": binaries, "cmake": stamp, "nativellm_version": __version__}

    def run(self) -> BuildOutcome:
        t0 = time.monotonic()
        opts = self.opts
        check_request(opts.source)
        self.rep.stage("detecting hardware")
        here = detect_host()
        target = load_profile(opts.profile) if opts.profile else here
        plan = plan_build(target, opts.plan)
        if opts.source.directory is not None:  # a local tree is cheap to read: even a dry run adapts to it
            plan = plan_build(target, opts.plan, read_tree_options(opts.source.directory.expanduser()))
        if opts.from_index:  # issue 5: a matching artifact replaces the compile (no toolchain needed)
            from_index, why_not = build_from_index(self.paths, opts, plan, target, here, self.rep)
            if from_index is not None:
                return from_index
            self.rep.warn(why_not)
        backend = plan.backend
        jobs = opts.jobs or default_jobs(here, backend)
        tools = find_toolchain(need_nvcc=backend is Backend.CUDA)
        if opts.dry_run:
            return BuildOutcome(plan, None, jobs=jobs, notes=("dry run: nothing was fetched or compiled",))
        can_smoke = runs_here(target, here)

        with self.store.lock():
            self.rep.stage("fetching llama.cpp source")
            source = resolve_source(
                opts.source, self.paths.sources, lambda d, t: self.rep.progress(d, t or 0)
            )
            plan_opts = opts.plan
            plan = self.plan_for(target, source, plan_opts)
            requested: list[str] = []
            fallbacks: list[dict[str, Any]] = []
            disabled: dict[str, str] = opts.plan.disabled()
            while True:
                build_id = compute_build_id(plan, source, tools, target)
                requested.append(build_id)
                hit = self.store.find_by_request(build_id)
                if hit is not None and (hit.smoke_passed or not can_smoke):
                    activated = opts.activate and hit.smoke_passed and self.store.set_current(hit.id)
                    return BuildOutcome(
                        plan, hit.id, cached=True, changed=activated, activated=activated, record=hit,
                        jobs=jobs, duration_s=time.monotonic() - t0, notes=(f"already built: {hit.id}", *self.warnings()),
                    )  # fmt: skip
                if plan.cmake_defines.get("LLAMA_BUILD_UI") == "ON" and self.ui is None:
                    plan, plan_opts = self.provide_ui(plan, plan_opts, target, source)
                    if self.ui is None:  # planned anew without the UI: that build may exist already
                        requested.pop()
                        continue
                free = shutil.disk_usage(self.paths.home).free
                if free < MIN_FREE_BYTES:
                    raise ResourceError(
                        f"only {free >> 20} MiB free in {self.paths.home}; a build needs {MIN_FREE_BYTES >> 30} GiB",
                        "free disk space or run `nativellm builds gc`",
                    )
                work = self.paths.work / build_id
                started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                self.rep.stage(f"building {build_id} with {jobs} job(s)")
                stage = self.compile(plan, source, tools, work, jobs)
                runtime_libs = self.link_cuda_runtime(stage, tools, plan)
                self.ship_vocab(stage, source)
                single = self.check_single_binary(stage, work / "build.log") if plan.single_binary else None
                result: SmokeResult | None = None
                if can_smoke:
                    offload = plan_smoke_offload(plan.backend.value, here)
                    result = self.smoke(stage, work, max(1, here.cpu.physical_cores), offload)
                if result is None or result.passed:
                    break
                family = next_fallback(plan, frozenset(disabled)) if opts.auto else None
                failure = {
                    "build_id": build_id,
                    "smoke_test": result.to_dict(),
                    "log": str(work / "smoke" / "smoke.log"),
                }
                if family is None or len(fallbacks) >= MAX_FALLBACKS:
                    raise SmokeTestError(
                        f"build {build_id} failed its smoke test ({result.summary()}); it was not activated",
                        f"read {work / 'smoke' / 'smoke.log'}; the previous build stays current",
                    )
                why = f"the smoke test crashed with it enabled ({result.summary()})"
                disabled[family] = why
                fallbacks.append({**failure, "dropped": family, "reason": why})
                self.rep.warn(f"smoke test failed ({result.summary()}); retrying without {family}")
                plan = plan_build(
                    target,
                    dataclasses.replace(
                        plan_opts,
                        disable=frozenset(disabled),
                        disable_reasons=tuple(sorted(disabled.items())),
                    ),
                    read_tree_options(source.path),
                )

            manifest = self.manifest(
                stage=stage,
                id=build_id,
                requested_ids=requested,
                created=started,
                finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                duration_s=round(time.monotonic() - t0, 1),
                source=source.identity,
                plan=plan.to_dict(),
                toolchain=tools.identity(),
                built_on=here.to_dict(),
                built_for=target.to_dict(),
                probe={"flags": list(target.cpu.flags), "dropped": target.cpu.dropped_flags or {}},
                smoke_test=result.to_dict()
                if result
                else {"passed": False, "skipped": "built for another host"},
                fallbacks=fallbacks,
                jobs=jobs,
                **self.cuda_parts(tools, plan, runtime_libs),
                **({"single_binary": single} if single is not None else {}),
                ui=self.ui.to_dict() if self.ui is not None else None,
            )
            shutil.copy2(work / "build.log", stage / "build.log")
            if (work / "smoke" / "smoke.log").exists():
                shutil.copy2(work / "smoke" / "smoke.log", stage / "smoke.log")
            record = self.store.install(stage, manifest)
            shutil.rmtree(work, ignore_errors=True)
            activated = bool(opts.activate and result and self.store.set_current(record.id))
            notes = [f"built {record.id}"]
            notes += [ui_summary(self.ui)] if self.ui is not None else []
            notes += self.warnings()
            notes += [f"dropped {f['dropped']}: {f['reason']}" for f in fallbacks]
            if result is None:
                notes.append("not smoke-tested: built for another host; install it there to activate")
            return BuildOutcome(
                plan, record.id, changed=True, activated=activated, record=record,
                fallbacks=tuple(fallbacks), jobs=jobs, duration_s=time.monotonic() - t0, notes=tuple(notes),
                ui=self.ui,
            )  # fmt: skip


def configure_llama(paths: Paths, opts: BuildOptions, reporter: Reporter | None = None) -> ConfigureOutcome:
    """Plan for the source tree and run only CMake's configure step: proves a tree and a plan agree in
    seconds, without compiling. Raises BuildError with CMake's own words when configure fails."""
    return _Builder(paths, opts, reporter or SilentReporter()).configure_only()


def build_llama(paths: Paths, opts: BuildOptions, reporter: Reporter | None = None) -> BuildOutcome:
    return _Builder(paths, opts, reporter or SilentReporter()).run()
