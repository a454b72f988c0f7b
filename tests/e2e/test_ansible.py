"""Issue 5, acceptance 3: the Ansible role converges under the real systemd, a second run of the
same playbook reports changed=0 (Molecule's idempotence step), the instance serves, and
ansible-lint passes on the role and the example playbook.

ansible-core and ansible-lint come from PyPI (the `test` extra). ansible-playbook runs *inside*
the systemd sandbox with `connection: local`; the role installs nativellm into a venv from the
wheelhouse the controller built from this checkout (`nativellm_pip_spec`, offline) and builds with `--auto`, which is a cache hit on the session's
auto build (borrowed into the role's NATIVELLM_HOME), so no compile happens here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import CHECKOUT, USER_UNIT_DIR
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE, cannot_run, nativellm

BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"
ROLES = CHECKOUT / "ansible" / "roles"
PLAYBOOK = CHECKOUT / "ansible" / "playbook.yml"


needs_ansible = pytest.mark.usefixtures("ansible_installed")  # the fixture is in tests/e2e/conftest.py

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class PlaybookRun:
    rc: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP per host: {host: {ok, changed, unreachable, failed}}."""
        text = self.output.rsplit("PLAY RECAP", 1)[-1]
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(text)
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_model(home: Path) -> dict[str, Any]:
    """The session's demo model record (path and sha256)."""
    res = nativellm("model", "list", "--json", home=home)
    assert res.returncode == 0, res.stderr
    models = {m["name"]: m for m in res.json()["models"]}
    return models["demo"]  # type: ignore[no-any-return]


def write_inventory(workdir: Path, groups: dict[str, list[str]]) -> Path:
    lines = []
    for group, hosts in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{h} ansible_connection=local ansible_python_interpreter={sys.executable}" for h in hosts]
    inventory = workdir / "inventory.ini"
    inventory.write_text("\n".join(lines) + "\n")
    return inventory


def role_vars(home: Path, venv: str, wheelhouse: Path, **extra: Any) -> dict[str, Any]:
    """The role's variables for a fleet test host: state under `home`, no system packages (the
    sandbox shares this machine's), and nativellm from the controller's wheelhouse, offline."""
    return {
        "nativellm_home": str(home),
        "nativellm_environment": {"NATIVELLM_UNIT_DIR": USER_UNIT_DIR},
        "nativellm_manage_system_packages": False,
        "nativellm_python": sys.executable,
        "nativellm_venv": venv,
        "nativellm_wheelhouse": str(wheelhouse),
        **extra,
    }


def run_playbook(
    sb: Sandbox,
    playbook: Path,
    inventory: Path,
    extra_vars: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> PlaybookRun:
    vars_file = inventory.parent / f"vars-{uuid.uuid4().hex[:6]}.json"
    vars_file.write_text(json.dumps(extra_vars))
    env = {
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": "/root/.ansible/tmp",
        "ANSIBLE_REMOTE_TEMP": "/root/.ansible/tmp",
        **(env or {}),
    }
    # Sandbox.exec's nsenter --wd leaves the cwd on a host dentry outside the sandbox's root,
    # where getcwd() fails (ansible calls it); cd inside first.
    argv = ["sh", "-c", 'cd / && exec "$@"', "sh", str(ANSIBLE_PLAYBOOK), "-i", str(inventory),
            "-e", f"@{vars_file}", str(playbook)]  # fmt: skip
    t0 = time.monotonic()
    res = sb.exec(argv, env=env, check=False, timeout=timeout)
    return PlaybookRun(res.returncode, res.stdout + res.stderr, time.monotonic() - t0)


def write_playbook(workdir: Path, hosts: str = "all") -> Path:
    playbook = workdir / "site.yml"
    playbook.write_text(
        f"- name: nativellm\n  hosts: {hosts}\n  gather_facts: false\n  roles:\n    - role: nativellm\n"
    )
    return playbook


@pytest.fixture
def workdir() -> Any:
    """Outside /tmp: the sandbox has a fresh /tmp, and sees CACHE through a bind mount."""
    d = CACHE / "ansible" / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


DEFAULT_DATA = "/root/.local/share/nativellm"  # the user scope's data home inside the sandbox


@needs_ansible
def test_role_with_default_variables_installs_and_serves(
    sandbox: Sandbox, demo_home: Path, llama_source: Path, workdir: Path, wheelhouse: Path
) -> None:
    """Issue 13: the role's *default* install path. Only what has no default, or needs the internet
    (the llama.cpp source: the default clones GitHub), is set. System packages are installed
    (pystemd's build dependencies included; all present here, so the apt task changes nothing),
    nativellm comes from the wheelhouse beside the playbook (`{{ playbook_dir }}/wheelhouse`), state
    and units go to the user scope's normal places, and a second run reports changed=0."""
    (workdir / "wheelhouse").symlink_to(wheelhouse)
    # The host already holds the session's build in its default store (no compile here): the
    # role's `build --auto` must find it and change nothing.
    current = (demo_home / "data" / "current").resolve()
    sandbox.exec(["sh", "-c", f'mkdir -p {DEFAULT_DATA}/builds && ln -sfn "$1" {DEFAULT_DATA}/builds/{current.name}'
                  f" && ln -sfn builds/{current.name} {DEFAULT_DATA}/current", "sh", str(current)])  # fmt: skip
    model = demo_model(demo_home)
    port = free_port()
    extra = {
        "nativellm_build_source": str(llama_source),
        "nativellm_models": [
            {"name": "tiny", "source": model["path"], "sha256": model["sha256"]},
            {"name": "never-added", "state": "absent"},
        ],
        "nativellm_instances": [
            {"name": "ansq", "model": "tiny", "port": port, "ctx": 512, "threads": 1, "enabled": True}
        ],
    }
    inventory = write_inventory(workdir, {"llm": ["node1"]})
    inner_env = {"PYTHONPATH": str(CHECKOUT / "src")}
    try:
        first = run_playbook(sandbox, write_playbook(workdir), inventory, extra)
        assert first.rc == 0, first.output[-6000:]
        assert first.recap()["node1"]["changed"] > 0, first.output[-3000:]
        second = run_playbook(sandbox, write_playbook(workdir), inventory, extra)
        assert second.rc == 0, second.output[-6000:]
        recap = second.recap()["node1"]
        assert recap["changed"] == 0 and recap["failed"] == 0, second.output[-6000:]
        print(f"\nplaybook: first run {first.seconds:.1f}s, second (idempotent) run {second.seconds:.1f}s")

        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        state = sandbox.show("llama@ansq.service", "ActiveState", "UnitFileState", "FragmentPath")
        assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
        # nativellm was installed from the wheelhouse into the default venv, not from the checkout.
        venv_py = "/opt/nativellm/venv/bin/python"
        where = sandbox.exec([venv_py, "-c", "import nativellm, pystemd; print(nativellm.__file__)"])
        assert where.stdout.startswith("/opt/nativellm/venv/lib/"), where.stdout
        assert (
            sandbox.exec(
                ["test", "-f", "/opt/nativellm/wheelhouse/" + next(wheelhouse.glob("nativellm-*.whl")).name]
            ).returncode
            == 0
        )
        # The build step was a cache hit (nothing compiled) and the spec the role rendered is the
        # one the CLI reads back from the default config home.
        builds = sandbox.exec(["ls", f"{DEFAULT_DATA}/builds"]).stdout.split()
        assert builds == [current.name]
        res = sandbox.exec(["/opt/nativellm/venv/bin/nativellm", "instance", "list", "--json"])
        (spec,) = json.loads(res.stdout)["instances"]
        assert (spec["name"], spec["model"], spec["port"], spec["ctx"]) == ("ansq", "tiny", port, 512)
    finally:
        sandbox.exec(
            ["/opt/nativellm/venv/bin/nativellm", "instance", "rm", "ansq"], env=inner_env, check=False
        )


@needs_ansible
def test_role_refuses_a_missing_wheelhouse(sandbox: Sandbox, workdir: Path) -> None:
    inventory = write_inventory(workdir, {"llm": ["node1"]})
    run = run_playbook(
        sandbox, write_playbook(workdir), inventory, {"nativellm_manage_system_packages": False}
    )
    assert run.rc != 0 and run.recap()["node1"]["failed"] == 1, run.output[-3000:]
    assert f"{workdir}/wheelhouse must hold exactly one nativellm-*.whl (found 0)" in run.output, run.output[
        -3000:
    ]
    assert "scripts/wheelhouse.sh" in run.output


def test_ansible_lint_is_clean() -> None:
    if not ANSIBLE_LINT.exists():
        cannot_run("ansible-lint is not installed (pip install -e '.[test]')")
    res = subprocess.run(
        [str(ANSIBLE_LINT), "--profile", "production", "--nocolor", "roles/nativellm", "playbook.yml"],
        cwd=CHECKOUT / "ansible",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"


def test_role_filters_mirror_the_cli() -> None:
    """The argv the role runs: instance and model dicts map onto the CLI's options."""
    spec = importlib.util.spec_from_file_location(
        "nativellm_role_filters", ROLES / "nativellm" / "filter_plugins" / "nativellm.py"
    )
    assert spec is not None and spec.loader is not None
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    inst = {"name": "q4", "model": "m", "port": 8080, "gpus": [0, 1], "mlock": False, "enabled": True,
            "insecure_no_api_key": True, "linger": True, "extra_args": ["--jinja"], "state": "started"}  # fmt: skip
    assert filters.nativellm_instance_argv(inst, "nl", [], False) == [
        "nl", "instance", "add", "q4", "--model", "m", "--port", "8080", "--gpus", "0,1",
        "--no-mlock", "--enable", "--insecure-no-api-key", "--linger", "--json", "--", "--jinja",
    ]  # fmt: skip
    assert filters.nativellm_instance_argv({"name": "q4", "ctx": 512}, "nl", ["--system"], True) == [
        "nl", "instance", "edit", "q4", "--ctx", "512", "--system", "--json",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="ctx_size"):
        filters.nativellm_instance_argv({"name": "q4", "ctx_size": 512}, "nl", [], False)
    assert filters.nativellm_model_argv({"name": "m", "source": "hf:o/r:Q4_K_M"}, "nl", []) == [
        "nl", "model", "pull", "hf:o/r:Q4_K_M", "--name", "m", "--json",
    ]  # fmt: skip
    assert filters.nativellm_model_argv({"name": "m", "source": "/m.gguf", "sha256": "ab"}, "nl", []) == [
        "nl", "model", "add", "/m.gguf", "--name", "m", "--sha256", "ab", "--json",
    ]  # fmt: skip
    assert filters.nativellm_health_url({"host": "0.0.0.0", "port": 9}) == "http://127.0.0.1:9/health"


def test_model_add_checks_sha256(llama_source: Path, tmp_path: Path) -> None:
    """`model add PATH --sha256` (what the role runs for a path): a wrong hash registers nothing."""
    made = nativellm("model", "demo", "--vocab", str(llama_source), "--json", home=tmp_path / "a")
    assert made.returncode == 0, made.stderr
    rec = made.json()["data"]["model"]
    home = tmp_path / "b"
    wrong = nativellm("model", "add", rec["path"], "--name", "m", "--sha256", "0" * 64, "--json", home=home)
    assert wrong.returncode == 9 and not wrong.json()["ok"], wrong.stdout
    assert nativellm("model", "list", "--json", home=home).json()["models"] == []
    right = ("model", "add", rec["path"], "--name", "m", "--sha256", rec["sha256"], "--json")
    first, again = nativellm(*right, home=home), nativellm(*right, home=home)
    assert (first.json()["changed"], again.json()["changed"]) == (True, False), first.stdout
    other = nativellm("model", "add", rec["path"], "--name", "m", "--sha256", "f" * 64, "--json", home=home)
    assert other.returncode == 9, other.stdout
