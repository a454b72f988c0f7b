"""A real systemd, booted as PID 1 of fresh PID/mount/cgroup namespaces over an overlay of /.

DESIGN.md §6. Nothing it writes reaches the host: the overlay's upper dir is a tmpfs that
lives only in the sandbox's mount namespace, and /run and /tmp are fresh tmpfs mounts.
The network namespace is shared, so the host reaches its services on 127.0.0.1.

Never boot systemd over the real root: its tmpfiles setup wipes the host's /tmp.

Usage::

    sb = Sandbox.boot(workdir)
    sb.start_user_manager()
    sb.systemctl("--user", "start", "llama@q4")
    sb.kill()
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Units the host has enabled that a test sandbox has no use for. Some would even collide with
# the host (a second PostgreSQL on the shared network namespace).
MASKED_UNITS = (
    "postgresql.service",
    "postgresql@.service",
    "console-getty.service",
    "getty@.service",
    "getty.target",
    "serial-getty@.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-sysctl.service",
    "systemd-update-utmp.service",
    "cron.service",
    "ssh.service",
    "sshd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
    "logrotate.timer",
    "dpkg-db-backup.timer",
)

_BOOT_SCRIPT = r"""
set -eu
B="$1"; shift
BINDS="$1"; shift
mount --make-rprivate /
mount -t tmpfs -o mode=755 nativellm-sandbox "$B"
mkdir -p "$B/upper" "$B/work" "$B/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
R="$B/root"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
# A fresh /dev/shm: systemd stages LoadCredential= files on a ramfs it mounts there and
# moves into place; over the host's (here doubly mounted) /dev/shm that move is lost.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
for u in "$@"; do ln -sf /dev/null "$R/etc/systemd/system/$u"; done
# Shared with the host both ways (not through the overlay), one path per line.
printf '%s\n' "$BINDS" | while IFS= read -r d; do
    if [ -n "$d" ]; then mkdir -p "$R$d"; mount --bind "$d" "$R$d"; fi
done
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# systemd makes / shared only when it is not in a container; services' mount namespaces
# (LoadCredential= staging, PrivateTmp=...) rely on it. New peer groups: nothing reaches the
# host, whose propagation was cut by --make-rprivate above.
mount --make-rshared /
exec env -i container=other PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --log-level=warning --show-status=false
"""

SYSTEMD = Path("/lib/systemd/systemd")


def find_unavailable_reason() -> str | None:
    """Why a sandbox can't be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "the systemd sandbox needs root (mount, pivot_root and namespaces)"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (systemd is not installed)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount", "--cgroup", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create PID/mount/cgroup namespaces: {probe.stderr.strip()}"
    return None


@dataclass
class Sandbox:
    """One booted systemd. `pid` is its PID 1, as seen from the host."""

    pid: int
    workdir: Path
    launcher: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def boot(
        cls,
        workdir: Path,
        *,
        binds: Sequence[Path] = (),
        masked: Sequence[str] = MASKED_UNITS,
        timeout: float = 60,
    ) -> Sandbox:
        """Boot systemd. `binds` are host directories shared read-write (not copied up)."""
        workdir.mkdir(parents=True, exist_ok=True)
        mnt = workdir / "mnt"
        mnt.mkdir(exist_ok=True)
        script = workdir / "boot.sh"
        script.write_text(_BOOT_SCRIPT)
        log_path = workdir / "boot.log"
        with log_path.open("wb") as logf:
            launcher = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--cgroup",
                    "--kill-child=SIGKILL",
                    "sh",
                    str(script),
                    str(mnt),
                    "\n".join(str(b) for b in binds),
                    *masked,
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            pid = _wait_child_systemd(launcher, log_path, timeout)
        except BaseException:
            launcher.kill()  # --kill-child takes the namespace with it
            launcher.wait()
            raise
        sb = cls(pid=pid, workdir=workdir, launcher=launcher, log_path=log_path)
        try:
            sb.wait_running(timeout)
        except BaseException:
            sb.kill()
            raise
        return sb

    def wait_running(self, timeout: float = 60) -> str:
        """Wait for `is-system-running` to say running or degraded."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            res = self.exec(["systemctl", "is-system-running"], check=False, timeout=10)
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if self.launcher.poll() is not None:
                raise RuntimeError(
                    f"sandbox systemd exited: {self.log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
        failed = self.exec(["systemctl", "--failed", "--no-pager"], check=False).stdout
        raise TimeoutError(f"sandbox systemd not running after {timeout}s (state {state!r}):\n{failed}")

    def start_user_manager(self, uid: int = 0, timeout: float = 30) -> None:
        """A real user manager (user@UID.service) with its bus at /run/user/UID/bus."""
        self.exec(["systemctl", "start", f"user@{uid}.service"], timeout=timeout)
        bus = self.host_path(f"/run/user/{uid}/bus")
        deadline = time.monotonic() + timeout
        while not bus.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"user bus {bus} did not appear")
            time.sleep(0.1)
        self.env.update(
            {
                "XDG_RUNTIME_DIR": f"/run/user/{uid}",
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{uid}/bus",
            }
        )

    def kill(self) -> None:
        """SIGKILL of the namespace's PID 1 takes every process in it along."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.launcher.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait()

    # -- reaching inside -----------------------------------------------------------------
    def host_path(self, inner: str | Path) -> Path:
        """The host's view of a path inside the sandbox."""
        return Path(f"/proc/{self.pid}/root") / str(inner).lstrip("/")

    @property
    def user_bus_address(self) -> str:
        return f"unix:path={self.host_path('/run/user/0/bus')}"

    @property
    def system_bus_address(self) -> str:
        return f"unix:path={self.host_path('/run/dbus/system_bus_socket')}"

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
        cwd: str = "/",
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox (its mount and PID namespaces, as root)."""
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **self.env,
            **(env or {}),
        }
        cmd = [
            "nsenter",
            "-t",
            str(self.pid),
            "--mount",
            "--pid",
            "--",
            "env",
            "-i",
            # Not nsenter's --wd: it opens the directory on the host, so the process's cwd lies
            # outside the sandbox's root and getcwd() fails (cmake then exits at once).
            f"--chdir={cwd}",
            *(f"{k}={v}" for k, v in full_env.items()),
            *argv,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(
                f"inside sandbox: {shlex.join(argv)} -> {res.returncode}\n"
                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.exec(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str, user: bool = True) -> dict[str, str]:
        scope = ["--user"] if user else []
        res = self.systemctl(*scope, "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.exec(["journalctl", "--no-pager", *args], check=False).stdout


def _wait_child_systemd(launcher: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    """unshare --fork's child execs systemd: find it among the launcher's children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(launcher.pid):
            if _comm(child) == "systemd":
                return child
        if launcher.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"sandbox systemd did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
