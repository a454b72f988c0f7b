"""Issue 5, acceptance 4: a simulated fleet of three hosts compiles once and installs the
artifact everywhere else.

Each host is its own systemd sandbox (its own PID 1, user manager and overlay of /), and the
role runs against each with a local connection. host-a is the builder: its store is the
session's auto build (the one compile; the role's `build --auto` is a cache hit on it), and the
role packs that build and publishes an artifact index in a directory every host sees. host-b
and host-c have stores inside their own sandboxes and `nativellm_artifact_index` set: the role's
`build --auto --from-index` installs the artifact (sha256, requirements, smoke test on the host)
instead of compiling. Every host then serves an instance.

Signatures are on (issue 14): host-a signs the pack and the index with a test key
(`nativellm_signing_key`), the role writes the public key to every host's
/etc/nativellm/trusted-keys (`nativellm_trusted_keys`), and host-b and host-c verify it before
installing. Then host-c is given another key by the role and refuses the same index, unchanged.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nativellm.build.signing import generate_key
from tests.e2e.conftest import CHECKOUT
from tests.e2e.sandbox import Sandbox
from tests.e2e.test_ansible import (
    demo_model,
    free_port,
    needs_ansible,
    role_vars,
    run_playbook,
    write_inventory,
    write_playbook,
)
from tests.helpers import CACHE, borrow_build, cannot_run

HOSTS = ("host-a", "host-b", "host-c")
BUILD_TASK = "Build llama.cpp for this host (or install its artifact from the index)"


@pytest.fixture
def fleet_dir() -> Iterator[Path]:
    d = CACHE / "fleet" / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fleet(sandbox_reason: str | None, fleet_dir: Path) -> Iterator[dict[str, Sandbox]]:
    """Three booted sandboxes (a few seconds and some 100 MB each)."""
    if sandbox_reason:
        cannot_run(f"no systemd sandbox: {sandbox_reason}")
    binds = [b for b in dict.fromkeys([CACHE, CHECKOUT, Path(sys.prefix).resolve()]) if b != Path("/")]
    boxes: dict[str, Sandbox] = {}
    try:
        for host in HOSTS:
            boxes[host] = Sandbox.boot(fleet_dir / "sandboxes" / host, binds=binds)
            boxes[host].start_user_manager()
        yield boxes
    finally:
        for sb in boxes.values():
            sb.kill()


def task_seconds(junit_dir: Path, task: str) -> float:
    """The wall time of one task, from the junit callback's report."""
    total = 0.0
    for report in junit_dir.glob("*.xml"):
        for case in ET.parse(report).iter("testcase"):
            if task in (case.get("name") or ""):
                total += float(case.get("time") or 0)
    return total


def store_builds(root: Path) -> dict[str, dict[str, object]]:
    """{build id: {compiled: has build.log, artifact: manifest's artifact origin}} of one store."""
    out: dict[str, dict[str, object]] = {}
    for d in sorted((root / "data" / "builds").iterdir()):
        manifest = json.loads((d / "manifest.json").read_text())
        out[d.name] = {
            "compiled": (d / "build.log").is_file(),
            "artifact": manifest.get("artifact"),
            "duration_s": manifest.get("duration_s"),
        }
    return out


@needs_ansible
def test_fleet_compiles_once(
    fleet: dict[str, Sandbox], fleet_dir: Path, demo_home: Path, llama_source: Path, wheelhouse: Path
) -> None:
    share = fleet_dir / "artifacts"
    keys = fleet_dir / "keys"
    keys.mkdir()
    fleet_key = generate_key(keys / "fleet", "test fleet")  # in CACHE: every sandbox sees it
    model = demo_model(demo_home)
    builder_home = fleet_dir / "host-a-home"
    borrow_build(demo_home, builder_home)
    # host-b and host-c keep their stores inside their own sandboxes: nothing shared but the index.
    homes = {
        "host-a": builder_home,
        "host-b": Path("/var/lib/fleet-home"),
        "host-c": Path("/var/lib/fleet-home"),
    }
    ports = {host: free_port() for host in HOSTS}
    timings: dict[str, dict[str, float]] = {}
    for host in HOSTS:
        sb = fleet[host]
        hostdir = fleet_dir / host
        hostdir.mkdir()
        publish = (
            {"nativellm_artifact_publish_dir": str(share), "nativellm_signing_key": str(fleet_key.private)}
            if host == "host-a"
            else {}
        )
        index = {} if host == "host-a" else {"nativellm_artifact_index": str(share)}
        extra = role_vars(
            homes[host], "/opt/nativellm/venv", wheelhouse,
            nativellm_build_source=str(llama_source),
            nativellm_models=[{"name": "tiny", "source": model["path"], "sha256": model["sha256"]}],
            nativellm_instances=[{"name": "fleet", "model": "tiny", "port": ports[host], "ctx": 256,
                                  "threads": 1}],
            nativellm_trusted_keys=[fleet_key.public_line],
            **publish, **index,
        )  # fmt: skip
        inventory = write_inventory(hostdir, {"llm": [host]})
        junit = hostdir / "junit"
        env = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.junit", "JUNIT_OUTPUT_DIR": str(junit)}
        run = run_playbook(sb, write_playbook(hostdir), inventory, extra, env=env)
        assert run.rc == 0, f"{host}:\n{run.output[-6000:]}"
        assert run.recap()[host]["failed"] == 0
        timings[host] = {"playbook_s": run.seconds, "build_task_s": task_seconds(junit, BUILD_TASK)}
        if host == "host-a":
            assert json.loads((share / "index.json").read_text())["artifacts"], "host-a published nothing"
            sigs = sorted(p.name for p in share.glob("*.sig"))
            assert len(sigs) == 2 and "index.json.sig" in sigs, sigs  # the artifact and the index
        if host == "host-b":  # the artifact path is idempotent too
            again = run_playbook(sb, write_playbook(hostdir), inventory, extra)
            assert again.rc == 0, again.output[-6000:]
            assert again.recap()[host]["changed"] == 0, again.output[-6000:]
            timings[host]["second_run_s"] = again.seconds

    stores = {host: store_builds(fleet[host].host_path(homes[host]) if host != "host-a" else builder_home)
              for host in HOSTS}  # fmt: skip
    (compiled_id,) = stores["host-a"]
    # One compile in the whole fleet: only host-a's build has a build log, and the others hold the
    # same build id, installed from the artifact (its manifest says so), never compiled.
    compiles = [(h, b) for h, builds in stores.items() for b, info in builds.items() if info["compiled"]]
    assert compiles == [("host-a", compiled_id)], stores
    for host in ("host-b", "host-c"):
        assert list(stores[host]) == [compiled_id], stores[host]
        artifact = stores[host][compiled_id]["artifact"]
        assert isinstance(artifact, dict) and artifact, stores[host]
        root = fleet[host].host_path(homes[host])
        assert not any((root / "data" / "work").glob("*/build")), f"{host} has a compile dir"
    for host, port in ports.items():
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200, host
    keyfile = fleet["host-b"].host_path("/etc/nativellm/trusted-keys")
    assert fleet_key.public_line in keyfile.read_text().splitlines()
    assert keyfile.stat().st_mode & 0o777 == 0o644 and keyfile.stat().st_uid == 0

    # A host whose trusted key is another one refuses the index, and nothing on it changes.
    other = generate_key(keys / "other", "not the fleet's")
    wrong = role_vars(
        homes["host-c"], "/opt/nativellm/venv", wheelhouse, nativellm_build_source=str(llama_source),
        nativellm_artifact_index=str(share), nativellm_trusted_keys=[other.public_line],
    )  # fmt: skip
    hostdir = fleet_dir / "host-c"
    refused = run_playbook(fleet["host-c"], write_playbook(hostdir), write_inventory(hostdir, {"llm": ["host-c"]}),
                           wrong)  # fmt: skip
    assert refused.rc != 0 and refused.recap()["host-c"]["failed"] == 1, refused.output[-6000:]
    assert "which is not a trusted key" in refused.output, refused.output[-6000:]
    assert store_builds(fleet["host-c"].host_path(homes["host-c"])) == stores["host-c"]
    assert httpx.get(f"http://127.0.0.1:{ports['host-c']}/health", timeout=5).status_code == 200

    compile_s = stores["host-a"][compiled_id]["duration_s"]
    print(f"\nfleet: compile on host-a (session build, manifest duration) {compile_s}s")
    for host, t in timings.items():
        print(f"fleet: {host}: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
