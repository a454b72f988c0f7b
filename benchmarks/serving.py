"""Serving overhead, start-to-ready and kill -9 recovery: a systemd instance vs the same argv by hand.

The instance runs under the user's systemd manager when there is one; on a machine without
systemd as PID 1 (these dev VMs, CI) it runs under the throwaway systemd of the e2e tier
(tests/e2e/sandbox.py, DESIGN.md §6), which shares the network namespace. Either way the
load generator (`nativellm bench`) runs outside, on loopback, against both servers alike.

Both servers stay up, on two ports (the only difference in their argv), and the load alternates
between them in an A B B A pattern, so drift on a noisy machine hits both alike; an idle
llama-server blocks and costs the other nothing. Start-to-ready and kill -9 recovery are
measured first, a few times each.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
from stats import median_ci

CHECKOUT = Path(__file__).resolve().parents[1]
NAME = "nlbench"
UNIT = f"llama@{NAME}.service"


class Supervisor(Protocol):
    where: str

    def nativellm(self, *args: str) -> subprocess.CompletedProcess[str]: ...
    def main_pid(self) -> int: ...
    def kill9(self, pid: int) -> None: ...
    def close(self) -> None: ...


def _env(work: Path, unit_dir: str) -> dict[str, str]:
    return {"NATIVELLM_HOME": str(work), "NATIVELLM_UNIT_DIR": unit_dir, "PYTHONPATH": str(CHECKOUT / "src")}


class HostSystemd:
    """The user's own systemd user manager; units go to the runtime dir and are removed after."""

    where = "the user's systemd user manager"

    def __init__(self, work: Path) -> None:
        runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
        self.env = {**os.environ, **_env(work, f"{runtime}/systemd/user")}

    def nativellm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nativellm", *args], capture_output=True, text=True,
                              env=self.env, timeout=900, check=False)  # fmt: skip

    def main_pid(self) -> int:
        res = subprocess.run(["systemctl", "--user", "show", "-p", "MainPID", "--value", UNIT],
                             capture_output=True, text=True, check=False)  # fmt: skip
        return int(res.stdout.strip() or 0)

    def kill9(self, pid: int) -> None:
        os.kill(pid, 9)

    def close(self) -> None:
        pass


class SandboxSystemd:
    """A real systemd booted in namespaces over an overlay (the e2e tier's sandbox)."""

    where = "a throwaway systemd booted in namespaces (tests/e2e/sandbox.py), shared network"

    def __init__(self, work: Path) -> None:
        sys.path.insert(0, str(CHECKOUT))
        from tests.e2e.sandbox import Sandbox

        self.workdir = work / "sandbox" / uuid.uuid4().hex[:8]
        binds = dict.fromkeys([work.resolve(), CHECKOUT, Path(sys.prefix).resolve()])
        self.sb = Sandbox.boot(self.workdir, binds=[b for b in binds if b != Path("/")])
        self.sb.start_user_manager()
        self.env = _env(work, "/run/user/0/systemd/user")

    def nativellm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sb.exec([sys.executable, "-m", "nativellm", *args], env=self.env, check=False,
                            timeout=900, cwd=str(CHECKOUT))  # fmt: skip

    def main_pid(self) -> int:
        return int(self.sb.show(UNIT, "MainPID")["MainPID"] or 0)

    def kill9(self, pid: int) -> None:
        self.sb.exec(["kill", "-9", str(pid)])

    def close(self) -> None:
        import shutil

        self.sb.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def open_supervisor(work: Path) -> Supervisor:
    """The host's user manager if it answers, else the sandbox; raises RuntimeError with the reason."""
    probe = subprocess.run(
        ["systemctl", "--user", "is-system-running"], capture_output=True, text=True, check=False
    )
    if probe.stdout.strip() in ("running", "degraded"):
        return HostSystemd(work)
    sys.path.insert(0, str(CHECKOUT))
    from tests.e2e.sandbox import find_unavailable_reason

    reason = find_unavailable_reason()
    if reason:
        raise RuntimeError(f"no systemd user manager and no sandbox: {reason}")
    return SandboxSystemd(work)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


def _first_completion(port: int) -> None:
    body = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    if not r.json()["usage"]["completion_tokens"]:
        raise RuntimeError("first completion returned no tokens")


def _checked(res: subprocess.CompletedProcess[str], what: str) -> str:
    if res.returncode != 0:
        raise RuntimeError(f"{what} -> {res.returncode}: {res.stderr.strip()[-1500:]}")
    return res.stdout


class Serving:
    """The systemd instance on its port and the same argv by hand on a second port (the only
    difference in argv). Both stay up; the one not under load idles (llama-server blocks)."""

    def __init__(self, work: Path, model: Path, build_id: str, load: Sequence[str]) -> None:
        self.work, self.model, self.build_id, self.load = work, model, build_id, list(load)
        self.sup = open_supervisor(work)
        self.port = self.hand_port = 0
        self.argv: list[str] = []
        self.hand: subprocess.Popen[bytes] | None = None
        self.hand_log = work / "hand-server.log"

    def setup(self) -> None:
        self.sup.nativellm("instance", "rm", NAME)  # a leftover from an interrupted run
        _checked(self.sup.nativellm("instance", "add", NAME, "--model", str(self.model), "--build",
                                    self.build_id, "--ctx", "4096", "--parallel", "4", "--json"),
                 "nativellm instance add")  # fmt: skip
        spec = json.loads(_checked(self.sup.nativellm("instance", "show", NAME, "--json"), "instance show"))
        self.port = int(spec["spec"]["port"])
        # The very argv the unit runs (`nativellm run` executes the same list).
        os.environ["NATIVELLM_HOME"] = str(self.work)
        from nativellm.client import free_port
        from nativellm.paths import resolve_paths
        from nativellm.serve.instances import Instances

        self.argv = Instances(resolve_paths(), None).foreground_argv(NAME)
        self.hand_port = free_port()
        i = self.argv.index("--port")
        self.hand_argv = [*self.argv[: i + 1], str(self.hand_port), *self.argv[i + 2 :]]

    def bench(self, port: int) -> dict[str, Any]:
        res = subprocess.run([sys.executable, "-m", "nativellm", "bench", NAME, "--url", f"http://127.0.0.1:{port}",
                              *self.load, "--json"], capture_output=True, text=True, check=False)  # fmt: skip
        doc: dict[str, Any] = json.loads(_checked(res, "nativellm bench"))
        if any(lv["errors"] for lv in doc["levels"]):
            raise RuntimeError(f"bench saw errors: {doc['levels']}")
        return doc

    def systemd_lifecycle(self) -> dict[str, float]:
        """`nativellm start` to ready and to the first completion; kill -9 to healthy and to a completion."""
        _checked(self.sup.nativellm("stop", NAME, "--json"), "nativellm stop")
        _wait(lambda: not _healthy(self.port), 30, "stop")
        t0 = time.monotonic()
        _checked(self.sup.nativellm("start", NAME, "--json"), "nativellm start")
        out = {"start_to_ready_s": time.monotonic() - t0}
        _first_completion(self.port)
        out["start_to_first_completion_s"] = time.monotonic() - t0
        pid = self.sup.main_pid()
        self.sup.kill9(pid)
        t1 = time.monotonic()
        _wait(
            lambda: self.sup.main_pid() not in (0, pid) and _healthy(self.port), 60, "recovery after kill -9"
        )
        out["kill9_to_healthy_s"] = time.monotonic() - t1
        _first_completion(self.port)
        out["kill9_to_first_completion_s"] = time.monotonic() - t1
        return out

    def hand_lifecycle(self) -> dict[str, float]:
        """Spawn the argv by hand: to /health 200 and to the first completion. Leaves it running."""
        self.stop_hand()
        log = self.hand_log.open("wb")
        t0 = time.monotonic()
        proc = self.hand = subprocess.Popen(self.hand_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}; see {self.hand_log}")
            return _healthy(self.hand_port)

        _wait(up, 300, "llama-server readiness")
        out = {"start_to_ready_s": time.monotonic() - t0}
        _first_completion(self.hand_port)
        out["start_to_first_completion_s"] = time.monotonic() - t0
        return out

    def stop_hand(self) -> None:
        if self.hand is not None:
            self.hand.terminate()
            try:
                self.hand.wait(30)
            except subprocess.TimeoutExpired:
                self.hand.kill()
                self.hand.wait()
            self.hand = None

    def close(self) -> None:
        try:
            self.stop_hand()
            self.sup.nativellm("instance", "rm", NAME)
        finally:
            self.sup.close()


def measure(work: Path, model: Path, build_id: str, rounds: int, load: Sequence[str], lifecycles: int = 3,
            log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """`lifecycles` start/kill -9 measurements, then `rounds` A B B A rounds of load against both."""
    s = Serving(work, model, build_id, load)
    legs: dict[str, list[dict[str, Any]]] = {"systemd": [], "hand": []}
    life: dict[str, list[dict[str, float]]] = {"systemd": [], "hand": []}
    try:
        s.setup()
        log(
            f"serving: {s.sup.where}; ports {s.port} (systemd) and {s.hand_port} (by hand); argv: {shlex.join(s.argv)}"
        )
        for i in range(lifecycles):
            life["systemd"].append(s.systemd_lifecycle())
            life["hand"].append(s.hand_lifecycle())
            log(
                f"  start {i + 1}/{lifecycles}: "
                + ", ".join(f"{m} {k} {v:.2f} s" for m in life for k, v in life[m][-1].items())
            )
        for i in range(rounds):
            for mode in ("systemd", "hand") if i % 2 == 0 else ("hand", "systemd"):
                doc = s.bench(s.port if mode == "systemd" else s.hand_port)
                legs[mode].append({"bench": doc})
                agg = ", ".join(f"c{lv['concurrency']} {lv['aggregate_tps']:.1f} t/s" for lv in doc["levels"])
                log(f"  round {i + 1}/{rounds} {mode}: {agg}")
    finally:
        s.close()
    return {"where": s.sup.where, "argv": s.argv, "hand_port": s.hand_port, "load": list(load), "rounds": rounds,
            "lifecycle": life, **legs}  # fmt: skip


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Per concurrency level: aggregate and per-stream t/s of both ways, and systemd / hand ratios."""
    levels: dict[int, dict[str, Any]] = {}
    for mode in ("systemd", "hand"):
        for leg in doc[mode]:
            for lv in leg["bench"]["levels"]:
                row = levels.setdefault(lv["concurrency"], {"systemd": {}, "hand": {}})
                for key in ("aggregate_tps", "decode_tps_per_stream", "ttft_p50_s"):
                    row[mode].setdefault(key, []).append(lv[key])
    out: dict[str, Any] = {}
    for conc, row in sorted(levels.items()):
        entry: dict[str, Any] = {}
        for key in ("aggregate_tps", "decode_tps_per_stream", "ttft_p50_s"):
            sd, hd = row["systemd"][key], row["hand"][key]
            # Leg i of each way ran next to each other (A B | B A), so their ratio is free of the drift
            # between rounds: the median of those is the figure, the ratio of medians is kept for reference.
            per_round = [a / b for a, b in zip(sd, hd, strict=False) if b]
            entry[key] = {
                "systemd": spread(sd), "hand": spread(hd),
                "ratio": statistics.median(per_round) if per_round else None,
                "ratio_of_medians": statistics.median(sd) / statistics.median(hd) if statistics.median(hd) else None,
                "ratio_spread": spread(per_round),
                "ratio_ci": median_ci(per_round) if per_round else None,
            }  # fmt: skip
        out[str(conc)] = entry
    timing = {}
    for mode in ("systemd", "hand"):
        for key in ("start_to_ready_s", "start_to_first_completion_s", "kill9_to_healthy_s",
                    "kill9_to_first_completion_s"):  # fmt: skip
            values = [one[key] for one in doc.get("lifecycle", {}).get(mode, []) if key in one]
            if values:
                timing[f"{mode}.{key}"] = spread(values)
    return {"levels": out, "timing": timing}


def spread(values: Sequence[float]) -> dict[str, float]:
    return (
        {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}
        if values
        else {}
    )
