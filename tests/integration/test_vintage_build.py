"""The oldest vintage, all the way: compile llama.cpp of November 2024 (llama-cpp-python 0.3.2's tree)
with the plan adapted to it, smoke-test it, make it current and serve a completion from it.

Cold, this compiles a whole llama.cpp (~10 min on 2 cores); ccache makes later runs cheap, because the
store sits at the same depth as every session's (see `session_home`). Marked `vintage`:
`scripts/test.sh -m "not vintage"` leaves it out, `scripts/test.sh -m vintage` runs only it."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nativellm.build.smoke import server_knows
from nativellm.client import free_port, wait_ready
from tests.helpers import CACHE, _fetch_sdist, nativellm
from tests.integration.test_vintages import VINTAGES

pytestmark = [pytest.mark.slow, pytest.mark.vintage]
OLDEST = min(VINTAGES, key=lambda v: v.released)


@pytest.fixture
def vintage_home() -> Iterator[Path]:
    """Its own store (building here must not change the session's current build), at the same depth
    as `session_home`, so ccache's relative paths match across runs."""
    home = CACHE / "sessions" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_oldest_vintage_builds_smoke_tests_and_serves(vintage_home: Path) -> None:
    tree = _fetch_sdist(OLDEST.sdist)
    res = nativellm("build", "--auto", "--source", str(tree), "--json", home=vintage_home, timeout=3600)
    assert res.returncode == 0, f"{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
    doc = res.json()
    assert doc["ok"] and doc["data"]["activated"], doc
    current = (vintage_home / "data" / "current").resolve()
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["smoke_test"]["passed"] is True
    source = manifest["plan"]["source"]
    assert source["commit"] == OLDEST.commit
    assert OLDEST.adapted <= set(source["adapted"])
    assert manifest["cmake"]["cache"]["LLAMA_BUILD_EXAMPLES"] == "ON"  # the server is in examples/ here

    server = current / "bin" / "llama-server"
    help_text = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=60)
    assert not server_knows(help_text.stdout + help_text.stderr, "--no-webui")  # why the smoke test adapts
    model = next((vintage_home / "data" / "work" / "smoke-cache").rglob("smoke-tiny-f16.gguf"))
    port = free_port()
    proc = subprocess.Popen(
        [str(server), "-m", str(model), "--port", str(port), "-c", "256", "-t", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        health = wait_ready(base, 120, alive=lambda: proc.poll() is None)
        assert health.status == "ok", f"llama-server not ready: {health}; rc={proc.poll()}"
        r = httpx.post(f"{base}/completion", json={"prompt": "Hello", "n_predict": 6}, timeout=120)
        r.raise_for_status()
        assert r.json()["tokens_predicted"] == 6
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
