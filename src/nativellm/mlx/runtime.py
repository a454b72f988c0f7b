"""The managed MLX runtime: pinned mlx + mlx-lm in a virtualenv of their own, in the store.

    <home>/runtimes/mlx/<id>/venv/          the virtualenv (python -m venv, pip install of the pins)
    <home>/runtimes/mlx/<id>/manifest.json  pins, installed versions, python, smoke-test result
    <home>/runtimes/mlx/current -> <id>     what instances run (through the link, as builds do)
    <home>/runtimes/mlx/history.json        earlier `current` ids, for rollback

The id is a hash of everything that decides what gets installed (the pins, the Python version, the
platform), so installing the same pins again is a cache hit. A runtime is built in a staging
directory, smoke-tested with a real generation on a tiny random-weight model (tinymodel.py, run by
the runtime's own Python), and only then renamed into place and made current: a failed install
or smoke test leaves the previous runtime current and nothing else behind.

Instances run `<venv>/bin/python -m mlx_lm server`, never a console script: a venv's scripts carry
their staging path in the shebang, while `bin/python` keeps working after the rename.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.errors import (
    NotFoundError,
    ResourceError,
    SmokeTestError,
    StoreError,
    ToolchainError,
    UsageError,
)
from nativellm.fsutil import canonical_hash, file_lock, symlink_atomic, write_json_atomic
from nativellm.paths import Paths
from nativellm.progress import Reporter, SilentReporter

# The lock: the newest releases that installed and passed the smoke test here (Linux x86-64,
# CPython 3.11, 2026-11). `mlx[cpu]` is the Linux CPU build; macOS wheels carry Metal.
MLX_VERSION = "0.32.4"
MLX_LM_VERSION = "0.32.2"
MANIFEST_SCHEMA = "nativellm.mlx-runtime/1"
INSTALL_TIMEOUT_S = 1800
SMOKE_TIMEOUT_S = 600
RUNTIME_HINT = "install it with `nativellm mlx install`"


_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")


def requirements(
    system: str | None = None, mlx_version: str | None = None, mlx_lm_version: str | None = None
) -> tuple[str, ...]:
    """What pip installs: Linux needs the `cpu` extra (the CPU backend's wheel), macOS does not.
    Another version than the lock's (`mlx install --mlx-lm V`) makes another runtime id."""
    for what, v in (("--mlx", mlx_version), ("--mlx-lm", mlx_lm_version)):
        if v is not None and not _VERSION.fullmatch(v):
            raise UsageError(
                f"{what} {v!r} is not a version", f"give a release number, e.g. {what} {MLX_VERSION}"
            )
    mlx = "mlx" if (system or platform.system()) == "Darwin" else "mlx[cpu]"
    return (f"{mlx}=={mlx_version or MLX_VERSION}", f"mlx-lm=={mlx_lm_version or MLX_LM_VERSION}")


def runtime_id(reqs: tuple[str, ...], python_version: str, machine: str) -> str:
    """Readable and unique: the pinned versions, the Python, and a hash of all inputs."""
    digest = canonical_hash({"requirements": list(reqs), "python": python_version, "machine": machine})[:10]
    mlx, lm = (r.partition("==")[2] for r in reqs)
    return f"mlx{mlx}-lm{lm}-py{python_version.replace('.', '')}-{digest}"


@dataclass(frozen=True)
class RuntimeRecord:
    """One installed runtime, as read from its manifest."""

    id: str
    path: Path
    created: str
    python_version: str
    requirements: tuple[str, ...]
    versions: dict[str, str]
    smoke: dict[str, Any]

    @property
    def python(self) -> Path:
        return self.path / "venv" / "bin" / "python"

    @property
    def smoke_passed(self) -> bool:
        return bool(self.smoke.get("passed"))

    def to_dict(self, current: bool = False) -> dict[str, Any]:
        return {"id": self.id, "path": str(self.path), "created": self.created, "current": current,
                "python_version": self.python_version, "requirements": list(self.requirements),
                "versions": self.versions, "smoke_test": self.smoke}  # fmt: skip


@dataclass(frozen=True)
class InstallOptions:
    """`nativellm mlx install`: wheels from a local directory only (offline), and the base Python."""

    offline_wheels: Path | None = None
    find_links: Path | None = None  # extra wheels to prefer, with the index still reachable
    python: str | None = None
    force: bool = False  # reinstall these pins even when they are installed (a broken runtime)
    mlx_version: str | None = None  # None: the lock's
    mlx_lm_version: str | None = None


def _python_version(python: str) -> str:
    res = run.probe([python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=30)
    if res is None or not res.ok or not res.stdout.strip():
        raise ToolchainError(
            f"cannot run the Python interpreter {python}", "pass a working interpreter with --python"
        )
    return res.stdout.strip()


def base_python() -> str:
    """The interpreter the runtime's venv is made from: the real one behind nativellm's own venv."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable) or sys.executable)


class Runtimes:
    """The MLX runtimes of one store."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.root = paths.home / "runtimes" / "mlx"

    # -- reading -------------------------------------------------------------------------
    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @property
    def current_python(self) -> Path:
        """The path units run: through `current`, so rollback + restart switches runtimes."""
        return self.current_link / "venv" / "bin" / "python"

    def _read(self, d: Path) -> RuntimeRecord | None:
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(m, dict) or m.get("id") != d.name:
            return None
        return RuntimeRecord(
            id=d.name,
            path=d,
            created=str(m.get("created", "")),
            python_version=str(m.get("python_version", "")),
            requirements=tuple(str(r) for r in m.get("requirements", [])),
            versions={str(k): str(v) for k, v in dict(m.get("versions", {})).items()},
            smoke=dict(m.get("smoke_test", {})),
        )

    def installed(self) -> list[RuntimeRecord]:
        if not self.root.is_dir():
            return []
        recs = [r for d in self.root.iterdir() if d.is_dir() and not d.is_symlink()
                and not d.name.startswith(".") and (r := self._read(d))]  # fmt: skip
        return sorted(recs, key=lambda r: (r.created, r.id))

    def get(self, rid: str) -> RuntimeRecord | None:
        if not rid or "/" in rid or rid.startswith("."):
            return None
        return self._read(self.root / rid)

    def current_id(self) -> str | None:
        try:
            return Path(os.readlink(self.current_link)).name
        except OSError:
            return None

    def current(self) -> RuntimeRecord | None:
        cid = self.current_id()
        return self.get(cid) if cid else None

    def history(self) -> list[str]:
        try:
            data = json.loads((self.root / "history.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return []
        return [str(x) for x in data.get("current", [])] if isinstance(data, dict) else []

    # -- writing -------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        def busy(holder: str) -> None:
            raise ResourceError(
                f"another nativellm is installing an MLX runtime (pid {holder})", "wait for it to finish"
            )

        with file_lock(self.root / ".lock", on_busy=busy, record_pid=True):
            yield

    def set_current(self, rid: str) -> bool:
        """Atomically point `current` at a smoke-tested runtime; False when it already did."""
        rec = self.get(rid)
        if rec is None:
            raise NotFoundError(f"no MLX runtime {rid!r} in {self.root}", "see `nativellm mlx list`")
        if not rec.smoke_passed:
            raise StoreError(f"MLX runtime {rid} did not pass its smoke test", "install it again")
        if self.current_id() == rid:
            return False
        symlink_atomic(rid, self.current_link)
        hist = [h for h in self.history() if h != rid] + [rid]
        write_json_atomic(self.root / "history.json", {"current": hist[-50:]})
        return True

    def rollback(self) -> RuntimeRecord:
        """Make the previously current runtime current again (it must still be installed)."""
        cur = self.current_id()
        for candidate in reversed(self.history()):
            rec = self.get(candidate)
            # Never back onto a runtime whose venv is gone (removed by hand, a moved Python).
            if candidate != cur and rec is not None and rec.smoke_passed and rec.python.exists():
                self.set_current(candidate)
                return rec
        raise StoreError(
            "there is no earlier MLX runtime to roll back to", "see `nativellm mlx list`; nothing was changed"
        )


def _pip_argv(python: Path, reqs: tuple[str, ...], opts: InstallOptions) -> list[str]:
    argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off"]  # fmt: skip
    if opts.offline_wheels is not None:
        argv += ["--no-index", "--find-links", str(opts.offline_wheels)]
    elif opts.find_links is not None:
        argv += ["--find-links", str(opts.find_links)]
    return argv + list(reqs)


def _tinymodel_script() -> Path:
    return Path(__file__).with_name("tinymodel.py")


def smoke_test(python: Path, work: Path, log: Path) -> dict[str, Any]:
    """A real generation with this runtime on a tiny random-weight llama. SmokeTestError otherwise."""
    script = _tinymodel_script()
    model = work / "smoke-model"
    t0 = time.monotonic()
    for step in (["write", str(model)], ["generate", str(model), "--max-tokens", "8"]):
        res = run.run([str(python), "-I", str(script), *step], timeout=SMOKE_TIMEOUT_S)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {python} {script.name} {' '.join(step)}\n{res.stdout}{res.stderr}")
        if not res.ok:
            last = (res.stderr.strip().splitlines() or [run.describe_exit(res.returncode)])[-1]
            raise SmokeTestError(
                f"the MLX runtime failed its smoke test ({step[0]}): {last[:200]}",
                f"see {log}; nothing was changed",
            )
    tokens = 0
    for line in res.stdout.splitlines():
        if line.startswith("tokens="):
            tokens = int(line.partition("=")[2] or 0)
    return {"passed": tokens > 0, "tokens": tokens, "seconds": round(time.monotonic() - t0, 2)}


def _installed_versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('mlx', 'mlx-lm', 'transformers', 'tokenizers', 'numpy')}))")  # fmt: skip
    res = run.run([str(python), "-I", "-c", code], timeout=120)
    if not res.ok:
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(res.stdout).items()}
    except (json.JSONDecodeError, AttributeError):
        return {}


def install_runtime(
    paths: Paths, opts: InstallOptions, reporter: Reporter | None = None
) -> tuple[RuntimeRecord, bool]:
    """Install (or reuse) the pinned runtime and make it current. Returns (record, changed)."""
    rep = reporter or SilentReporter()
    rts = Runtimes(paths)
    if opts.offline_wheels is not None and not opts.offline_wheels.is_dir():
        raise NotFoundError(
            f"--offline-wheels {opts.offline_wheels} is not a directory",
            "give a directory of wheels (`pip download mlx[cpu] mlx-lm -d DIR`)",
        )
    python = opts.python or base_python()
    pyver = _python_version(python)
    reqs = requirements(mlx_version=opts.mlx_version, mlx_lm_version=opts.mlx_lm_version)
    rid = runtime_id(reqs, pyver, platform.machine())
    existing = rts.get(rid)
    if existing is not None and existing.smoke_passed and existing.python.exists() and not opts.force:
        return existing, rts.set_current(rid)
    rts.root.mkdir(parents=True, exist_ok=True)
    with rts.lock():
        staging = rts.root / f".staging-{rid}-{os.getpid()}"
        log = rts.root / "logs" / f"{rid}.log"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            rec = _build(rts, staging, rid, python, pyver, reqs, opts, log, rep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        rts.set_current(rec.id)
        return rec, True


def _build(
    rts: Runtimes,
    staging: Path,
    rid: str,
    python: str,
    pyver: str,
    reqs: tuple[str, ...],
    opts: InstallOptions,
    log: Path,
    rep: Reporter,
) -> RuntimeRecord:
    venv = staging / "venv"
    rep.stage(f"creating the virtualenv ({python}, Python {pyver})")
    res = run.run([python, "-m", "venv", str(venv)], timeout=300)
    if not res.ok:
        raise ToolchainError(
            f"cannot create a virtualenv with {python}: {(res.stderr.strip().splitlines() or ['?'])[-1]}",
            "install the venv module (Debian: apt-get install python3-venv), or pass --python",
        )
    vpy = venv / "bin" / "python"
    # No brackets in stage lines: the console renders them as markup (`mlx[cpu]`).
    rep.stage(f"installing {' '.join(reqs).replace('[', '(').replace(']', ')')}")
    seen = 0

    def on_line(line: str) -> None:
        nonlocal seen
        if line.startswith(("Collecting ", "Processing ")):
            seen += 1
            rep.stage(f"  {seen}: " + line.strip().replace("[", "(").replace("]", ")"))
        elif line.startswith("Installing collected packages"):
            rep.stage("installing the collected packages")

    rc = run.stream(_pip_argv(vpy, reqs, opts), log_path=log, on_line=on_line)
    if rc != 0:
        raise ToolchainError(
            f"pip could not install {' '.join(reqs)} ({run.short_exit(rc)})",
            f"see {log}; offline, pass --offline-wheels DIR; nothing was changed",
        )
    rep.stage("smoke test: a real generation on a tiny model")
    smoke = smoke_test(vpy, staging, log)
    if not smoke["passed"]:
        raise SmokeTestError("the MLX runtime generated no tokens in its smoke test", f"see {log}")
    shutil.rmtree(staging / "smoke-model", ignore_errors=True)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "id": rid,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": python,
        "python_version": pyver,
        "requirements": list(reqs),
        "versions": _installed_versions(vpy),
        "smoke_test": smoke,
    }
    write_json_atomic(staging / "manifest.json", manifest)
    dest = rts.root / rid
    # A reinstall (--force, or a broken earlier install of these pins): the old tree steps aside in
    # one rename and goes only once the new one is in place, so `current` never points at nothing.
    trash = rts.root / f".old-{rid}-{os.getpid()}"
    if dest.exists():
        os.rename(dest, trash)
    os.rename(staging, dest)
    shutil.rmtree(trash, ignore_errors=True)
    rec = rts.get(rid)
    assert rec is not None
    return rec


def find_runtime_python(paths: Paths) -> Path | None:
    """The current runtime's interpreter, or None when no runtime is current."""
    rts = Runtimes(paths)
    return rts.current_python if rts.current() is not None else None


def runtime_problem(
    python: Path, probe: Callable[[list[str]], run.Completed | None] | None = None
) -> str | None:
    """Why the runtime at `python` cannot serve (missing interpreter, mlx_lm not importable), else None."""
    if not python.exists():
        return f"its Python {python} is missing"
    res = (probe or (lambda argv: run.probe(argv, timeout=120)))(
        [str(python), "-I", "-c", "import mlx.core, mlx_lm.server"]
    )
    if res is None:
        return f"its Python {python} cannot be run"
    if not res.ok:
        last = (res.stderr.strip().splitlines() or [run.describe_exit(res.returncode)])[-1]
        return f"importing mlx_lm fails: {last[:160]}"
    return None


def require_runtime(paths: Paths, check: Callable[[Path], str | None] = runtime_problem) -> Path:
    """The interpreter units run (through `current`); NotFoundError/StoreError with a hint otherwise."""
    rts = Runtimes(paths)
    rec = rts.current()
    if rec is None:
        raise NotFoundError("no MLX runtime is installed", RUNTIME_HINT + "; nothing was changed")
    why = check(rts.current_python)
    if why is not None:
        raise StoreError(
            f"the current MLX runtime {rec.id} is broken: {why}",
            "reinstall it with `nativellm mlx install`, or `nativellm mlx rollback`; nothing was changed",
        )
    return rts.current_python
