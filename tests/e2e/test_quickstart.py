"""The README's quickstart, followed literally on a clean machine (issue 13), which is also the
default source proven end to end (issue 12): the pinned llama.cpp tag is built with no source flag.

The commands are read from README.md's "Quickstart" block, not copied here. They run in a fresh
systemd sandbox of their own (an empty store, no instances, a real user manager), as root with a
plain system PATH. Two things a test machine lacks are stood in for, and nothing else:
- `<repository URL>`: this checkout (its committed HEAD), cloned with git;
- the internet: the llama.cpp repository is a git repository made from the tree the suite builds,
  tagged with nativellm's pinned tag and served by `git daemon` on loopback; `NATIVELLM_LLAMA_REPO`
  (documented mirror setting) points nativellm's default repository at it.
The sandbox moves this test's compile cache (ccache) back to the host, so later runs are warm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nativellm.build.source import DEFAULT_REF, REPO_ENV
from nativellm.client import free_port, port_in_use
from tests.e2e.conftest import CHECKOUT, booted_sandbox
from tests.e2e.sandbox import Sandbox
from tests.helpers import CACHE, cannot_run, git_daemon

README = CHECKOUT / "README.md"
GIT_PORT = 9418  # git's own port: a stable URL keeps the sandbox's source path, so ccache hits next run
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CCACHE = Path(os.environ.get("CCACHE_DIR", Path.home() / ".cache" / "ccache"))
# The web UI's `npm ci` downloads, shared like ccache.
NPM_CACHE = Path(os.environ.get("NPM_CONFIG_CACHE", Path.home() / ".npm"))


def quickstart_commands(text: str) -> list[str]:
    """The shell lines of the first ```sh block under the '## Quickstart' heading."""
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README.md's Quickstart section has no ```sh block"
    return [
        line for line in match.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_quickstart_block_is_what_this_test_expects() -> None:
    """The block names the pinned tag and ends with a request to the instance it added."""
    lines = quickstart_commands(README.read_text())
    assert lines[0].startswith("git clone <repository URL>")
    assert "scripts/install.sh" in lines and lines[-1].startswith("curl ")
    assert f"llama.cpp **{DEFAULT_REF}**" in README.read_text()


def _git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "nativellm tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
           "GIT_COMMITTER_NAME": "nativellm tests", "GIT_COMMITTER_EMAIL": "tests@localhost",
           "GIT_AUTHOR_DATE": "2026-10-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-10-01T00:00:00Z"}  # fmt: skip
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def llama_mirror(llama_source: Path) -> Iterator[str]:
    """git://127.0.0.1/llama.cpp: the suite's tree at the pinned tag, served by a real git daemon."""
    base = CACHE / "git-mirror"
    repo = base / "llama.cpp"
    if (
        not (repo / "refs" / "tags" / DEFAULT_REF).exists()
        and not (repo / ".git" / "refs" / "tags" / DEFAULT_REF).exists()
    ):
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        work = base / f".work-{uuid.uuid4().hex[:6]}"
        # The sdist tree carries a submodule gitfile (.git) that points outside it: not copied.
        shutil.copytree(llama_source, work, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        try:
            _git("init", "-q", "-b", "master", cwd=work)
            _git("add", "-A", "-f", cwd=work)
            _git("commit", "-q", "-m", f"llama.cpp {DEFAULT_REF}", cwd=work)
            _git("tag", DEFAULT_REF, cwd=work)
            _git("clone", "-q", "--bare", str(work), str(repo), cwd=base)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    port = GIT_PORT if not port_in_use(GIT_PORT) else free_port()
    with git_daemon(base, port) as root:
        yield f"{root}/llama.cpp"


@pytest.fixture(scope="module")
def clean_machine() -> Iterator[Sandbox]:
    """A fresh systemd sandbox of its own: an empty store and unit directory, a real user manager.
    Its ccache and npm cache writes go to the host's caches, so the next run is warm."""
    CCACHE.mkdir(parents=True, exist_ok=True)
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    with booted_sandbox("qs-", [CCACHE, NPM_CACHE]) as sb:
        yield sb


def test_readme_quickstart_ends_with_a_completion(clean_machine: Sandbox, llama_mirror: str) -> None:
    if port_in_use(8080):
        cannot_run("port 8080 is in use on this machine, and the README's quickstart curls 8080")
    lines = quickstart_commands(README.read_text())
    script = "\n".join(lines).replace("<repository URL>", str(CHECKOUT))
    home = f"/root/quickstart-{uuid.uuid4().hex[:6]}"
    clean_machine.exec(["mkdir", "-p", home])
    script = f"cd {home}\n{script}"  # nsenter's --wd resolves on the host, so cd inside
    t0 = time.monotonic()
    res = clean_machine.exec(
        ["bash", "-euo", "pipefail", "-c", script],
        env={"PATH": SYSTEM_PATH, REPO_ENV: llama_mirror, "CCACHE_DIR": str(CCACHE), "NPM_CONFIG_CACHE": str(NPM_CACHE)},
        check=False, timeout=3600,
    )  # fmt: skip
    seconds = time.monotonic() - t0
    print(f"\n[timing] README quickstart, clone to completion: {seconds:.0f}s")
    assert res.returncode == 0, (
        f"quickstart failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    )
    reply = json.loads(res.stdout.rstrip().rsplit("\n", 1)[-1])
    assert reply["choices"][0]["message"]["content"] is not None, reply
    assert reply["usage"]["completion_tokens"] > 0, reply
    # The build really came from the pinned tag of the default repository (the mirror), with no
    # source flag, and it is current.
    builds = clean_machine.exec([f"{home}/nativellm/.venv/bin/nativellm", "builds", "list", "--json"])
    (current,) = [b for b in json.loads(builds.stdout)["builds"] if b["current"]]
    assert current["source"]["kind"] == "git" and current["source"]["ref"] == DEFAULT_REF, current["source"]
    assert current["source"]["repo"] == llama_mirror
