"""launchd (macOS): an instance as a LaunchAgent (user scope) or LaunchDaemon (system scope), and a small
typed adapter over `launchctl`.

The plist is rendered from the same InstanceSpec and the same llama-server argv as the systemd unit
(dropins.server_argv), written atomically with plistlib and read back before it counts as written.
The API key never appears in it: llama-server reads the instance's key file itself
(`--api-key-file`), and the file must be private to its owner (no group or other permission bits).

launchctl is run only through `nativellm.run` (an injectable runner, so tests feed it recorded
output). Its failures become one InstanceError line with a hint; the ones with a known meaning
(service already loaded, a domain that does not exist here, not root) say what to do.

Semantics, from launchd.plist(5) and launchctl(1):
- KeepAlive {SuccessfulExit: false}: launchd restarts the server when it exits non-zero or is killed
  (kill -9 included), not after a clean exit; ThrottleInterval spaces restarts (default 10 s).
- RunAtLoad: start when the job is loaded, i.e. at login (agent) or boot (daemon): `enable`.
- `bootstrap DOMAIN PLIST` loads, `bootout DOMAIN/LABEL` unloads (stopping it), `kickstart -k`
  (re)starts, `print` reports state, pid and last exit code, `enable`/`disable` persist whether the
  job is loaded at all at the next login or boot.
"""

from __future__ import annotations

import os
import plistlib
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm import client, run
from nativellm.errors import InstanceError
from nativellm.fsutil import write_atomic
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import Resolved, base_url, server_argv
from nativellm.serve.systemd import UnitState
from nativellm.specs import InstanceSpec

LABEL_PREFIX = "org.nativellm.llama."
THROTTLE_S = 10
LAUNCHCTL = "/bin/launchctl"
USER_AGENTS = Path("Library/LaunchAgents")  # under the user's home
SYSTEM_DAEMONS = Path("/Library/LaunchDaemons")

Runner = Callable[..., run.Completed]


def label(name: str) -> str:
    return LABEL_PREFIX + name


def plist_dir(scope: Scope, home: Path | None = None) -> Path:
    """~/Library/LaunchAgents (user) or /Library/LaunchDaemons (system): where launchd loads from."""
    if scope is Scope.SYSTEM:
        return SYSTEM_DAEMONS
    return (home or Path.home()) / USER_AGENTS


def log_path(paths: Paths, name: str) -> Path:
    """The server's stdout and stderr, together (launchd has no journal)."""
    return paths.home / "logs" / f"llama-{name}.log"


def render_plist(spec: InstanceSpec, r: Resolved, *, log: Path, workdir: Path) -> dict[str, Any]:
    """The launchd job for one instance, as plistlib data. Pure."""
    argv = server_argv(
        spec, r.server_binary, r.model_path, api_key_path=spec.api_key_file, flags=r.flags, backend=r.backend
    )
    job: dict[str, Any] = {
        "Label": label(spec.name),
        "ProgramArguments": argv,
        "RunAtLoad": spec.enable,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_S,
        # Interactive: no background throttling of CPU and I/O (launchd.plist(5), ProcessType).
        "ProcessType": "Interactive",
        "WorkingDirectory": str(workdir),
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        # launchd sends SIGTERM on bootout, then SIGKILL after this many seconds.
        "ExitTimeOut": 30,
    }
    if spec.env:
        job["EnvironmentVariables"] = dict(sorted(spec.env.items()))
    if r.scope is Scope.USER:
        # A user's agent also runs with no GUI login (a headless Mac mini reached over SSH).
        job["LimitLoadToSessionType"] = ["Aqua", "Background"]
    return job


def plist_text(job: Mapping[str, Any]) -> str:
    return plistlib.dumps(dict(job), fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")


def check_key_file(path: str) -> None:
    """The API key file llama-server will read: a regular file only its owner can read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InstanceError(
            f"API key file {path} cannot be read: {exc.strerror}", "check --api-key-file"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise InstanceError(f"API key file {path} is not a regular file", "point --api-key-file at a file")
    if st.st_mode & 0o077:
        raise InstanceError(
            f"API key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); nothing was written",
            f"restrict it: chmod 600 {path}",
        )


def write_plist(path: Path, job: Mapping[str, Any]) -> bool:
    """Atomically write the job; False when the file already holds it. The text is parsed back before
    and after the write: what launchd will read is exactly `job`."""
    text = plist_text(job)
    if plistlib.loads(text.encode("utf-8")) != dict(job):
        raise InstanceError(f"plist for {path.name} does not read back as written", "please report this bug")
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, text, 0o644)
    try:
        back = plistlib.loads(path.read_bytes())
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        raise InstanceError(f"{path} cannot be read back: {exc}", "check the disk and permissions") from None
    if back != dict(job):
        raise InstanceError(
            f"{path} does not read back as written", "check the disk, then run the command again"
        )
    return True


# -- launchctl ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePrint:
    """The top level of `launchctl print DOMAIN/LABEL`."""

    state: str  # running | not running | spawn scheduled | waiting | ...
    pid: int | None
    last_exit: int | None  # None: never exited (or killed by a signal, see `signal`)
    signal: str | None  # "last terminating signal = Killed: 9" -> "Killed: 9"
    runs: int | None
    path: str | None


_KEY = re.compile(r"^\t([a-z][a-z ]*?) = (.*)$")


def parse_print(text: str) -> ServicePrint:
    """The service's own keys (one tab deep), not those of nested blocks (`domain = {...}` has its own
    `state`). Total: what is absent is None."""
    top: dict[str, str] = {}
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if depth == 1:
            m = _KEY.match(line)
            if m and m.group(1) not in top:
                top[m.group(1)] = m.group(2).strip()
        if stripped.endswith("{"):
            depth += 1
        elif stripped == "}":
            depth = max(0, depth - 1)

    def number(key: str) -> int | None:
        value = top.get(key, "")
        return int(value) if re.fullmatch(r"-?\d+", value) else None

    return ServicePrint(
        state=top.get("state", "unknown"),
        pid=number("pid"),
        last_exit=number("last exit code"),
        signal=top.get("last terminating signal"),
        runs=number("runs"),
        path=top.get("path"),
    )


_HINT_DOMAIN = (
    "gui/UID exists only while that user is logged in at the Mac's screen (not over SSH): log in once, "
    "or install the instance as a LaunchDaemon with --system"
)


def _error(op: str, target: str, res: run.Completed, job: str | None = None) -> InstanceError:
    """One line for a failed launchctl call, with what to do about the failures that have a known cause."""
    detail = " ".join(line.strip() for line in (res.stderr or res.stdout).splitlines() if line.strip())
    detail = detail or f"exit status {res.returncode}"
    text = detail.lower()
    where = f"launchctl {op} {target}"
    if op == "bootstrap" and job and ("already loaded" in text or "bootstrap failed: 5:" in text):
        # macOS 11+ reports a loaded label as "Bootstrap failed: 5: Input/output error" (and, since
        # 14, "Try re-running the command as root for richer errors."); older ones said so.
        return InstanceError(
            f"{where} failed: {job} is already loaded ({detail}); nothing was changed",
            f"restart it instead (`nativellm restart {job.removeprefix(LABEL_PREFIX)}`), or unload it "
            f"first: launchctl bootout {target.split(' ', 1)[0]}/{job}",
        )
    if "domain does not support" in text or "could not find domain" in text or res.returncode == 125:
        return InstanceError(
            f"{where} failed: no such launchd domain here ({detail}); nothing was changed", _HINT_DOMAIN
        )
    if "operation not permitted" in text or "must be root" in text:
        return InstanceError(
            f"{where} failed: not permitted ({detail})", "the system domain needs root: use sudo"
        )
    return InstanceError(f"{where} failed ({detail})", "see `launchctl print` for the service, and its log")


class Launchctl:
    """launchctl for one domain: gui/<uid> (user scope) or system."""

    def __init__(
        self, scope: Scope, uid: int | None = None, runner: Runner = run.run, binary: str = LAUNCHCTL
    ):
        self.scope = scope
        self.uid = os.getuid() if uid is None else uid
        self._run = runner
        self.binary = binary

    @property
    def domain(self) -> str:
        return "system" if self.scope is Scope.SYSTEM else f"gui/{self.uid}"

    def target(self, job_label: str) -> str:
        return f"{self.domain}/{job_label}"

    def _call(self, op: str, *args: str, target: str, job: str | None = None) -> run.Completed:
        res = self._run([self.binary, op, *args], timeout=60)
        if not res.ok:
            raise _error(op, target, res, job)
        return res

    def check_domain(self) -> None:
        """The domain exists here (`launchctl print DOMAIN`): before anything is written."""
        res = self._run([self.binary, "print", self.domain], timeout=60)
        if not res.ok:
            raise _error("print", self.domain, res)

    def bootstrap(self, plist: Path) -> None:
        self._call("bootstrap", self.domain, str(plist), target=f"{self.domain} {plist}", job=plist.stem)

    def bootout(self, job_label: str) -> bool:
        """Unload (and stop) the job; False when it was not loaded."""
        target = self.target(job_label)
        res = self._run([self.binary, "bootout", target], timeout=90)
        if res.ok:
            return True
        text = (res.stderr + res.stdout).lower()
        if res.returncode in (3, 113) or "no such process" in text or "could not find service" in text:
            return False
        raise _error("bootout", target, res)

    def kickstart(self, job_label: str, *, kill: bool) -> None:
        target = self.target(job_label)
        self._call("kickstart", *(["-k"] if kill else []), target, target=target)

    def enable(self, job_label: str) -> None:
        self._call("enable", self.target(job_label), target=self.target(job_label))

    def disable(self, job_label: str) -> None:
        self._call("disable", self.target(job_label), target=self.target(job_label))

    def print_service(self, job_label: str) -> ServicePrint | None:
        """The job's state, or None when it is not loaded (launchctl exits 113: could not find service)."""
        target = self.target(job_label)
        res = self._run([self.binary, "print", target], timeout=60)
        if res.ok:
            return parse_print(res.stdout)
        if res.returncode == 113 or "could not find service" in (res.stderr + res.stdout).lower():
            return None
        raise _error("print", target, res)


def unit_state(job_label: str, got: ServicePrint | None, *, enabled: bool) -> UnitState:
    """launchctl's view in the shape `status` already shows for systemd units."""
    if got is None:
        active, sub, result = "inactive", "not loaded", "success"
    elif got.state == "running" and got.pid:
        active, sub, result = "active", "running", "success"
    else:
        failed = (got.last_exit or 0) != 0 or got.signal is not None
        active = ("activating" if got.state == "spawn scheduled" else "failed") if failed else "inactive"
        sub, result = got.state, ("signal" if got.signal else "exit-code") if failed else "success"
    return UnitState(
        name=job_label,
        load_state="loaded" if got is not None else "not-found",
        active_state=active,
        sub_state=sub,
        result=result,
        main_pid=(got.pid or 0) if got is not None else 0,
        n_restarts=max(0, (got.runs or 1) - 1) if got is not None else 0,
        memory_bytes=None,
        cpu_ns=None,
        active_since_us=0,
        job_pending=False,
        unit_file_state="enabled" if enabled else "disabled",
    )


class LaunchdManager:
    """The ServiceManager (serve/manager.py) for macOS."""

    kind = "launchd"

    def __init__(
        self,
        paths: Paths,
        launchctl: Launchctl | None = None,
        *,
        home: Path | None = None,
        health: Callable[[str], str] = lambda url: client.health(url, timeout=2.0).status,
        interval: float = 0.5,
    ) -> None:
        self.paths = paths
        self.launchctl = launchctl or Launchctl(paths.scope)
        self.dir = plist_dir(paths.scope, home)
        self._health = health
        self._interval = interval

    def service_name(self, name: str) -> str:
        return label(name)

    def plist_path(self, name: str) -> Path:
        return self.dir / f"{label(name)}.plist"

    def available(self) -> bool:
        return Path(self.launchctl.binary).exists()

    def require_reachable(self, hint: str) -> LaunchdManager:
        if not self.available():
            raise InstanceError(f"{self.launchctl.binary} is not here: launchd runs only on macOS", hint)
        return self

    def definition_files(self, spec: InstanceSpec, r: Resolved) -> dict[Path, str]:
        job = render_plist(spec, r, log=log_path(self.paths, spec.name), workdir=self.paths.home)
        return {self.plist_path(spec.name): plist_text(job)}

    def install(self, spec: InstanceSpec, r: Resolved) -> list[str]:
        """Check everything, then write the plist (and the log folder). Written paths."""
        if spec.api_key_file:
            check_key_file(spec.api_key_file)
        self.launchctl.check_domain()
        job = render_plist(spec, r, log=log_path(self.paths, spec.name), workdir=self.paths.home)
        log_path(self.paths, spec.name).parent.mkdir(parents=True, exist_ok=True)
        return [str(self.plist_path(spec.name))] if write_plist(self.plist_path(spec.name), job) else []

    def _enabled(self, name: str) -> bool:
        try:
            return bool(plistlib.loads(self.plist_path(name).read_bytes()).get("RunAtLoad"))
        except (OSError, plistlib.InvalidFileException, ValueError, AttributeError):
            return False

    def state(self, name: str) -> UnitState:
        return unit_state(label(name), self.launchctl.print_service(label(name)), enabled=self._enabled(name))

    def start(self, spec: InstanceSpec, *, restart: bool, timeout: float) -> UnitState:
        """Load the job if it is not loaded (restart: unload and load it again, so the plist is read
        afresh), start it, and follow it until /health answers ok, the server has exited with an
        error, or `timeout` passes; returns the state it ended in."""
        job = label(spec.name)
        plist = self.plist_path(spec.name)
        if not plist.is_file():
            raise InstanceError(
                f"{plist} does not exist", f"add the instance first: `nativellm instance add {spec.name}`"
            )
        loaded = self.launchctl.print_service(job) is not None
        if loaded and restart:
            # kickstart -k alone would keep the job launchd loaded before: a changed plist (after
            # `instance edit` or an upgrade) takes effect only when it is bootstrapped again.
            self.launchctl.bootout(job)
        if restart or not loaded:
            self.launchctl.bootstrap(plist)
        self.launchctl.kickstart(job, kill=False)
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(spec.name)
            if st.active_state == "active" and self._health(base_url(spec)) == "ok":
                return st
            if st.active_state in ("failed", "inactive") or time.monotonic() >= deadline:
                return st
            time.sleep(self._interval)

    def stop(self, name: str) -> None:
        self.launchctl.bootout(label(name))

    def set_enabled(self, name: str, enabled: bool) -> None:
        (self.launchctl.enable if enabled else self.launchctl.disable)(label(name))

    def is_enabled(self, name: str) -> bool:
        return self._enabled(name)

    def logs_argv(self, name: str, *, follow: bool = False, lines: int = 50) -> list[str]:
        return ["tail", "-n", str(lines), *(["-F"] if follow else []), str(log_path(self.paths, name))]

    def recent_log(self, name: str, lines: int = 200) -> str | None:
        try:
            with log_path(self.paths, name).open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        return "".join(text.splitlines(keepends=True)[-lines:])

    def remove(self, name: str) -> list[str]:
        self.launchctl.bootout(label(name))
        plist = self.plist_path(name)
        if plist.exists():
            plist.unlink()
            return [str(plist)]
        return []
