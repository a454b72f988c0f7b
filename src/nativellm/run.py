"""The one process chokepoint: every child process nativellm starts goes through here.

It logs the argv, never uses a shell, normalises the locale so parsers see
stable text, applies timeouts, and streams long jobs to a log file.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from nativellm.errors import Interrupted, ToolchainError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def signal_name(returncode: int) -> str | None:
    """ "SIGILL" for a process killed by signal 4 (returncode -4), None for a normal exit."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def describe_exit(returncode: int, what: str = "the process") -> str:
    """The one wording of how a child ended: killed by a signal (SIGILL explained) or an exit status."""
    name = signal_name(returncode)
    if name is None:
        return f"{what} exited with status {returncode}"
    extra = " (illegal instruction)" if -returncode == signal.SIGILL else ""
    return f"{what} was killed by {name}{extra}"


def short_exit(returncode: int) -> str:
    """ "SIGILL" or "exit 1": the short form for tables."""
    return signal_name(returncode) or f"exit {returncode}"


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    if extra:
        env.update(extra)
    return env


def which(name: str) -> str | None:
    return shutil.which(name)


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = 60,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> Completed:
    """Run to completion and capture output. Raises ToolchainError if argv[0] is missing."""
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=_env(env),
            cwd=cwd,
            input=input_text,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolchainError(f"{argv[0]} is not installed", f"install {argv[0]} and retry") from exc
    return Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def exec_replace(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with argv (`nativellm run`, `logs -f`): no Python stays behind."""
    log.debug("exec: %s", shlex.join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], list(argv), _env(env))
    except FileNotFoundError as exc:
        raise ToolchainError(f"{argv[0]} is not installed", f"install {argv[0]} and retry") from exc
    except OSError as exc:
        raise ToolchainError(f"cannot run {argv[0]}: {exc}", "check that the file is executable") from exc


def probe(argv: Sequence[str], *, timeout: float = 10) -> Completed | None:
    """Run a probe: None when the tool is absent, times out or cannot start. Never raises."""
    if which(argv[0]) is None and not Path(argv[0]).is_file():
        log.info("probe: %s not found", argv[0])
        return None
    try:
        return run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.info("probe: %s timed out after %ss", argv[0], timeout)
    except (OSError, ToolchainError) as exc:
        log.info("probe: %s failed to start: %s", argv[0], exc)
    return None


def stream(
    argv: Sequence[str],
    *,
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run a long job, appending every output line to log_path and passing it to on_line.

    Ctrl-C kills the whole child process group and raises Interrupted.
    """
    log.debug("stream: %s (log %s)", shlex.join(argv), log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as logf:
        logf.write(f"$ {shlex.join(argv)}\n")
        logf.flush()
        with _ctrl_c_deferred() as interrupted:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    env=_env(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise ToolchainError(f"{argv[0]} is not installed", f"install {argv[0]} and retry") from exc
        try:
            if interrupted:
                raise KeyboardInterrupt  # Ctrl-C while the child was being started: it is killed below
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            return proc.wait()
        except KeyboardInterrupt:
            _kill_group(proc)
            logf.write("\n[nativellm] interrupted by user\n")
            raise Interrupted("interrupted; nothing was changed", "run the command again") from None
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def _ctrl_c_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C back while a child is being started; yields a list that is non-empty if it came.

    A KeyboardInterrupt raised inside Popen (after the fork, before it returns) leaves a started
    child that nobody knows the pid of: a Ctrl-C right after "compile" left `cmake --build` and its
    compilers running. The handler is Python's, so the child's exec resets it to the default.
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)


def _live_children() -> dict[int, list[int]]:
    """parent pid -> its live (not zombie) children, from /proc; {} where there is no /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _tree(root: int) -> set[int]:
    """The live descendants of `root`."""
    children, found, todo = _live_children(), set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_group(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """Kill the child and everything it started, and return only when they are gone.

    Neither its process group nor its session is enough: ninja starts every compile command in a
    session of its own (setsid), so the compilers of a `cmake --build` survive both. The tree is
    frozen top-down (SIGSTOP, so nothing spawns), until a pass finds no new descendant, then killed;
    the child is reaped last so its pid can't be reused meanwhile.
    """
    try:
        os.killpg(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        pass
    seen: set[int] = set()
    for _ in range(100):
        new = _tree(proc.pid) - seen
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        seen |= new
    _signal(seen, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILL is delivered asynchronously; look again until they are gone
    proc.wait()


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
        except (OSError, IndexError):
            continue
    return alive


class Process:
    """A long-running child (a llama-server under test). Output goes to a file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        log.debug("spawn: %s", shlex.join(argv))
        self.argv = tuple(argv)
        self.log_file = log_file
        self._out: IO[str] = log_file.open("w", encoding="utf-8")
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdout=self._out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_env(env),
                start_new_session=True,
            )
        except OSError as exc:
            self._out.close()
            raise ToolchainError(f"cannot start {argv[0]}: {exc}", "check that the build is intact") from exc

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def stop(self, timeout: float = 10) -> int:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rc = self._proc.wait()
        self._out.close()
        return rc

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_file.read_text(encoding="utf-8", errors="replace")
