"""The smoke test of binaries not built here, confined (issue 14, finding 2).

An artifact's llama-quantize and llama-server run before anything about them is trusted, and a fleet
runs nativellm as root. So the whole smoke check (quantize, serve, and the HTTP probe that reads the
tokens back) runs inside one confinement, and only its JSON result and log come out:

- **systemd** (root, a system manager is running): a transient service via `systemd-run --pipe
  --wait` with `DynamicUser=yes`, `ProtectSystem=strict`, `ProtectHome=tmpfs`, `PrivateTmp=yes`,
  `PrivateDevices=yes`, `NoNewPrivileges=yes`, `PrivateNetwork=yes` (loopback only) and read-only
  binds of the unpacked artifact, the smoke model and the Python that runs the check.
- **namespaces** (root, no systemd; CI hosts, containers): `unshare --mount --net --pid --ipc --uts
  --fork --mount-proc --kill-child`. Inside, this module (still root, and trusted) brings up
  loopback, puts a fresh tmpfs on /tmp, /var/tmp and /dev/shm, binds the artifact and the model
  read-only under /tmp/nativellm-smoke, makes the store, /root and /home read-only, and runs every
  artifact binary through `setpriv` as uid/gid 65534 with no groups, no capabilities and
  no_new_privs. The logs live in a root-only directory the binaries can't reach.
- **none**: only for a user who is not root (the binaries then get that user's rights, which they
  also get when an instance serves them later), or when `NATIVELLM_SMOKE_CONFINE=none` says so. As
  root with neither systemd nor namespaces the install is refused: running a downloaded binary as
  root unconfined is the hole this closes.

The PrivateNetwork / net-namespace choice puts the probe inside too: a server in a private network
can't be reached from the host, so the check runs where the server is, with the same code as a
local build's smoke test (real inference, tokens counted).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm import run
from nativellm.build.smoke import Runner, SmokeOffload, SmokeResult, smoke_test
from nativellm.errors import SmokeTestError
from nativellm.hardware.devices import DeviceClass

ENV = "NATIVELLM_SMOKE_CONFINE"  # systemd | namespaces | none: force a level (tests, opt-out)
MODES = ("systemd", "namespaces", "none")
NOBODY = 65534
TIMEOUT = 1200.0
_MARK = "NATIVELLM-SMOKE-RESULT "
_INSIDE = Path("/tmp/nativellm-smoke")  # inside the confinement only (a private /tmp)
_SETPRIV = (
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--",
)


@dataclass(frozen=True)
class Job:
    """What the confined runner needs: paths as seen inside, and what to hide or freeze."""

    mode: str
    artifact: str  # the unpacked build's top directory (bin/, lib/)
    model: str  # the F16 smoke model
    threads: int
    readonly: tuple[str, ...] = ()  # host paths made read-only inside (namespaces mode)
    offload: SmokeOffload | None = None  # a GPU build on a host with its device: the offloaded case

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "artifact": self.artifact,
                "model": self.model,
                "threads": self.threads,
                "readonly": list(self.readonly),
                "offload": dataclasses.asdict(self.offload) if self.offload is not None else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        return cls(
            str(d["mode"]),
            str(d["artifact"]),
            str(d["model"]),
            int(d["threads"]),
            tuple(str(p) for p in d.get("readonly", [])),
            SmokeOffload(**d["offload"]) if d.get("offload") else None,
        )


# --------------------------------------------------------------------------- choosing a level
def probe_systemd() -> bool:
    """A system manager we may start transient units in: root, systemd as PID 1, systemd-run."""
    if os.geteuid() != 0 or not Path("/run/systemd/system").is_dir() or run.which("systemd-run") is None:
        return False
    res = run.probe(["systemctl", "is-system-running"], timeout=10)
    return res is not None and res.stdout.strip() in ("running", "degraded", "starting")


def probe_namespaces() -> bool:
    """Root with unshare and setpriv, and the kernel lets us make the namespaces."""
    if os.geteuid() != 0 or run.which("unshare") is None or run.which("setpriv") is None:
        return False
    res = run.probe(
        ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--mount-proc", "true"],
        timeout=20,
    )
    return res is not None and res.ok


def choose_mode() -> str:
    """The strongest confinement this host offers, or the one NATIVELLM_SMOKE_CONFINE names."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        if forced not in MODES:
            raise SmokeTestError(f"{ENV}={forced!r} is not one of {', '.join(MODES)}", f"unset {ENV}")
        return forced
    if probe_systemd():
        return "systemd"
    if probe_namespaces():
        return "namespaces"
    if os.geteuid() == 0:
        raise SmokeTestError(
            "cannot confine the smoke test of an artifact: this host has neither a systemd manager "
            "nor namespaces (unshare, setpriv) for root, and running its binaries as root unconfined "
            "is refused",
            f"install util-linux (unshare, setpriv), run with systemd, or accept the risk with {ENV}=none",
        )
    return "none"


# --------------------------------------------------------------------------- the host side
def nativellm_file() -> str:
    import nativellm

    return str(nativellm.__file__)


def _python_paths() -> list[str]:
    """Where this interpreter, its packages and nativellm live: bound read-only into the unit."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(nativellm_file()).parent.parent)}
    found.update(p for p in sys.path if p and Path(p).is_dir())
    hidden = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")  # ProtectHome, PrivateTmp
    real = sorted({r for r in (os.path.realpath(p) for p in found if p) if r.startswith(hidden)})
    # A parent covers its children; binding both is harmless but noisy.
    return [p for p in real if not any(p != q and p.startswith(q + os.sep) for q in real)]


def _systemd_argv(job: Job, artifact: Path, model: Path, timeout: float) -> list[str]:
    props = [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=tmpfs",  # /home, /root empty; the binds below re-expose only what is needed
        "PrivateTmp=yes",
        *_device_props(job.offload),
        "PrivateNetwork=yes",
        "PrivateIPC=yes",
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "CapabilityBoundingSet=",
        "UMask=0077",
        f"RuntimeMaxSec={int(timeout)}",
        f"BindReadOnlyPaths={artifact}:{job.artifact}",
        f"BindReadOnlyPaths={model}:{job.model}",
        *(f"BindReadOnlyPaths=-{d}" for d in _host_lib_dirs(artifact)),
        *(f"BindReadOnlyPaths=-{p}" for p in _python_paths()),
        "Environment=HOME=/tmp",
        f"Environment=PYTHONPATH={Path(nativellm_file()).parent.parent}",
    ]
    argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--service-type=exec"]
    argv += [f"--unit=nativellm-smoke-{os.getpid()}-{int.from_bytes(os.urandom(3), 'big'):06x}"]
    for p in props:
        argv += ["-p", p]
    return [*argv, "--", sys.executable, "-m", "nativellm.build.confine", job.to_json()]


def _device_props(offload: SmokeOffload | None) -> list[str]:
    """No devices at all for a CPU smoke test; for a GPU build's offloaded case, only the devices its
    backend needs (the same allow-list as an instance's unit): PrivateDevices=yes would hide the GPU
    and fail the offload check on every host with systemd."""
    devices = DeviceClass.for_backend(offload.backend) if offload is not None else DeviceClass.CPU
    if devices is DeviceClass.CPU:
        return ["PrivateDevices=yes"]
    return ["PrivateDevices=no", "DevicePolicy=closed", *(f"DeviceAllow={d}" for d in devices.device_allow)]


def _host_lib_dirs(artifact: Path) -> list[str]:
    """Directories outside the artifact that its lib/ links to (this host's CUDA runtime, linked by
    install-artifact): ProtectHome=tmpfs would hide a wheel under /root or /home."""
    lib = artifact / "lib"
    found = (
        {str(Path(os.readlink(p)).parent) for p in lib.iterdir() if p.is_symlink()} if lib.is_dir() else set()
    )
    return sorted(d for d in found if os.path.isabs(d))


def _namespaces_argv(job: Job) -> list[str]:
    ns = ["unshare", "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--mount-proc", "--kill-child"]
    return [*ns, "--", sys.executable, "-m", "nativellm.build.confine", job.to_json()]


def _parse(out: str, mode: str) -> tuple[SmokeResult, str] | None:
    for line in reversed(out.splitlines()):
        if line.startswith(_MARK):
            try:
                doc = json.loads(line[len(_MARK) :])
                res = SmokeResult.from_dict(doc["result"])
                log = str(doc.get("log", ""))
            except (ValueError, KeyError, TypeError):
                return None
            return SmokeResult(res.passed, res.cases, mode, res.uid), log
    return None


def confined_smoke_test(
    artifact: Path,
    base: Path,
    workdir: Path,
    threads: int,
    *,
    readonly: Sequence[Path] = (),
    offload: SmokeOffload | None = None,
) -> SmokeResult:
    """smoke_test for a build not made here (`artifact` is its top dir, `base` the F16 model),
    run confined as described above; `workdir/smoke.log` gets the log. `readonly`: host paths
    (the store) that the binaries must not write even as their owner. `offload`: the case that
    must run on this host's GPU (build.smoke.plan_smoke_offload)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mode = choose_mode()
    if mode == "none":
        res = smoke_test(artifact / "bin", base, workdir, threads, offload=offload)
        with (workdir / "smoke.log").open("a") as f:
            f.write(f"warning: the smoke test ran unconfined ({ENV}=none or not root)\n")
        return SmokeResult(res.passed, res.cases, "none", os.getuid())
    notes = ""
    parsed, why = _run_confined(mode, artifact, base, threads, readonly, offload)
    if parsed is None and mode == "systemd" and os.environ.get(ENV, "") != "systemd" and probe_namespaces():
        # An older systemd may not know a property (ProtectHome=tmpfs needs v242): namespaces next.
        notes = f"note: the systemd unit gave no result ({why}); ran in namespaces instead\n"
        mode = "namespaces"
        parsed, why = _run_confined(mode, artifact, base, threads, readonly, offload)
    if parsed is None:
        raise SmokeTestError(
            f"the confined smoke test ({mode}) did not report a result: {why}",
            f"see `nativellm --debug`; {ENV}=namespaces or systemd picks the other confinement",
        )
    result, log = parsed
    (workdir / "smoke.log").write_text(log + notes + f"confinement: {mode}, uid {result.uid}\n")
    return result


def _run_confined(
    mode: str,
    artifact: Path,
    base: Path,
    threads: int,
    readonly: Sequence[Path],
    offload: SmokeOffload | None = None,
) -> tuple[tuple[SmokeResult, str] | None, str]:
    if mode == "systemd":
        job = Job(mode, str(_INSIDE / "artifact"), str(_INSIDE / "model.gguf"), threads, offload=offload)
        argv = _systemd_argv(job, artifact, base, TIMEOUT)
    else:
        ro = tuple(str(p) for p in (*readonly, Path("/root"), Path("/home")))
        job = Job(mode, str(artifact), str(base), threads, ro, offload)
        argv = _namespaces_argv(job)
    done = run.probe(argv, timeout=TIMEOUT + 60)  # None: it could not start or ran out of time
    parsed = _parse(done.stdout, mode) if done is not None else None
    lines = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines()) if done else []
    return parsed, (lines or [f"no answer within {TIMEOUT + 60:.0f}s"])[-1]


# --------------------------------------------------------------------------- the confined side
def _loopback_up() -> None:
    """A fresh network namespace has lo down; the server and its probe need 127.0.0.1."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), siocgifflags, req)[:18])[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def _mount(*args: str) -> None:
    res = run.run(["mount", *args], timeout=30)
    if not res.ok:
        raise SmokeTestError(f"mount {' '.join(args)} failed: {res.stderr.strip()}", "")


def _namespaces_setup(job: Job) -> tuple[Path, Path, Path, Path]:
    """Root inside fresh namespaces: build the view the unprivileged binaries get."""
    _loopback_up()
    # Held open across the tmpfs mounts below: the host paths may lie under /tmp.
    art_fd = os.open(job.artifact, os.O_PATH | os.O_DIRECTORY)
    model_fd = os.open(job.model, os.O_PATH)
    pid = os.getpid()
    opts = "nosuid,nodev,mode=0755"
    _mount("-t", "tmpfs", "-o", f"{opts},size=2g", "tmpfs", "/tmp")  # the smoke models are MBs
    for extra in ("/var/tmp", "/dev/shm"):
        if Path(extra).is_dir():
            _mount("-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=64m", "tmpfs", extra)
    inside = _INSIDE
    art, model, work, logs = inside / "artifact", inside / "model.gguf", inside / "work", inside / "log"
    for d in (art, work, logs):
        d.mkdir(parents=True, exist_ok=True)
    model.touch()
    for fd, target in ((art_fd, art), (model_fd, model)):
        # --no-canonicalize: mount(8) would otherwise resolve the fd to its (now hidden) path.
        _mount("--no-canonicalize", "--bind", f"/proc/{pid}/fd/{fd}", str(target))
        _mount("-o", "remount,bind,ro,nosuid,nodev", str(target))
        os.close(fd)
    os.chown(work, NOBODY, NOBODY)
    os.chmod(work, 0o700)
    os.chmod(logs, 0o700)  # root's: the binaries can't reach the log they are judged by
    for p in job.readonly:
        if Path(p).is_dir() and not p.startswith("/tmp/") and p != "/tmp":
            _mount("--bind", p, p)
            _mount("-o", "remount,bind,ro,nosuid,nodev", p)
    return art, model, work, logs


def _confined_main(job: Job) -> dict[str, Any]:
    if job.mode == "namespaces":
        art, model, work, logs = _namespaces_setup(job)
        runner = Runner(_SETPRIV, {"HOME": str(work), "TMPDIR": str(work)}, work)
        uid = NOBODY
    else:  # systemd: this process already is the DynamicUser, with a private /tmp
        art, model = Path(job.artifact), Path(job.model)
        work, logs = Path("/tmp/work"), Path("/tmp/log")
        runner = Runner((), {"HOME": str(work), "TMPDIR": str(work)}, work)
        uid = os.getuid()
    work.mkdir(parents=True, exist_ok=True)
    res = smoke_test(art / "bin", model, work, job.threads, runner=runner, logdir=logs, offload=job.offload)
    log = (logs / "smoke.log").read_text(errors="replace") if (logs / "smoke.log").is_file() else ""
    return {"result": {**res.to_dict(), "uid": uid, "confinement": job.mode}, "log": log}


def main(argv: Sequence[str]) -> int:
    """`python -m nativellm.build.confine JOB-JSON`: the runner inside the confinement."""
    try:
        doc = _confined_main(Job.from_json(argv[0]))
    except Exception as exc:  # reported to the host side, which raises a typed error
        print(f"confined smoke runner failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(_MARK + json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
