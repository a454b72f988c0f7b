"""Router instances with the llama-server nativellm built, in the foreground (`nativellm run`, the
unit's own argv): real models routed by name, load/unload/swap through the CLI, eviction at
--models-max, and the bad-input cases leaving the running router as it was."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from nativellm import run
from nativellm.client import RouterClient, free_port, wait_ready
from nativellm.errors import ModelError
from nativellm.paths import Paths, resolve_paths
from nativellm.serve.router import PRESET_NAME, RouterOps
from nativellm.serve.router_fit import load_fit_check
from nativellm.specs import InstanceSpec
from tests.helpers import CliResult, nativellm
from tests.realmodels import gemma3_270m, smollm2_135m_instruct

pytestmark = pytest.mark.slow
MODELS = ("chat", "gemma", "tiny")


def _ok(res: CliResult) -> CliResult:
    assert res.returncode == 0, res.stderr
    return res


@dataclass(frozen=True)
class Router:
    base: str
    proc: run.Process


@pytest.fixture(scope="module")
def running(
    auto_build: CliResult, session_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Router]:
    """`multi`: three registered models (two real), at most two loaded, `chat` loaded at start;
    run in the foreground exactly as its unit would run it."""
    home = session_home
    _ok(nativellm("model", "add", str(smollm2_135m_instruct()), "--name", "chat", home=home))
    _ok(nativellm("model", "add", str(gemma3_270m()), "--name", "gemma", home=home))
    _ok(nativellm("model", "demo", "--name", "tiny", home=home))
    port = free_port()
    _ok(nativellm("instance", "add", "multi", "--router", "--models", ",".join(MODELS), "--models-max", "2",
                  "--load-on-start", "chat", "--ctx", "512", "--threads", "2", "--port", str(port),
                  "--model-opt", "gemma:ctx-size=1024", "--no-systemd", home=home))  # fmt: skip
    log = tmp_path_factory.mktemp("router") / "router.log"
    proc = run.Process([sys.executable, "-m", "nativellm", "run", "multi"], log_file=log,
                       env={"NATIVELLM_HOME": str(home)})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        h = wait_ready(base, 120, alive=lambda: proc.poll() is None)
        assert h.status == "ok", proc.output()[-3000:]
        with RouterClient(base) as client:
            client.wait_for("chat", ("loaded",), 120)
        yield Router(base, proc)
    finally:
        proc.stop()
        # session_home is shared with the e2e tier, which adds its own `multi`.
        nativellm("instance", "rm", "multi", "--no-systemd", home=home)


@pytest.fixture()
def router(running: Router) -> str:
    return running.base


def _states(base: str) -> dict[str, str]:
    with RouterClient(base) as client:
        return {m: s.state for m, s in client.models().items()}


def _chat(base: str, model: str, question: str) -> tuple[str, str]:
    resp = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
              "max_tokens": 16},
        timeout=120,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    return str(doc["model"]), str(doc["choices"][0]["message"]["content"])


def test_router_serves_exactly_its_models_with_their_settings(router: str, session_home: Path) -> None:
    assert _states(router) == {"chat": "loaded", "gemma": "unloaded", "tiny": "unloaded"}
    preset = resolve_paths_for(session_home).units / "llama@multi.service.d" / PRESET_NAME
    assert "[gemma]" in preset.read_text() and "ctx-size = 1024" in preset.read_text()
    model, answer = _chat(router, "chat", "What is the capital of France? Answer with one word.")
    assert model == "chat" and "Paris" in answer, answer


def test_load_unload_swap_and_eviction(router: str, session_home: Path) -> None:
    home = session_home
    res = _ok(nativellm("model", "load", "gemma", "--on", "multi", "--json", home=home)).json()
    assert res["data"]["warmup_seconds"] is not None  # warmed up by default
    assert _states(router) == {"chat": "loaded", "gemma": "loaded", "tiny": "unloaded"}
    model, _ = _chat(router, "gemma", "Hello")
    assert model == "gemma"

    # --models-max 2: loading a third unloads the least recently used one (chat: gemma served last).
    _ok(nativellm("model", "load", "tiny", "--on", "multi", "--no-warmup", home=home))
    assert _states(router) == {"chat": "unloaded", "gemma": "loaded", "tiny": "loaded"}

    _ok(nativellm("model", "swap", "tiny", "chat", "--on", "multi", home=home))
    assert _states(router) == {"chat": "loaded", "gemma": "loaded", "tiny": "unloaded"}
    _ok(nativellm("model", "unload", "gemma", "--on", "multi", home=home))
    assert _states(router) == {"chat": "loaded", "gemma": "unloaded", "tiny": "unloaded"}


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (("model", "load", "nope", "--on", "multi"), 3, "'nope' is not one of router multi's models"),
        (("model", "load", "chat", "--on", "multi"), 10, "model chat is already loaded on multi"),
        (("model", "unload", "tiny", "--on", "multi"), 10, "model tiny is not loaded on multi"),
        (("model", "swap", "tiny", "gemma", "--on", "multi"), 10, "model tiny is not loaded"),
        (("instance", "edit", "multi", "--model-opt", "gemma:no-such-option=1", "--no-systemd"), 10,
         "has no option --no-such-option"),
        (("instance", "edit", "multi", "--models-max", "1", "--load-on-start", "chat,gemma", "--no-systemd"), 2,
         "--models-max 1 is smaller than the 2 models to load at start"),
    ],
)  # fmt: skip
def test_bad_input_leaves_the_running_router_unchanged(
    router: str, session_home: Path, argv: tuple[str, ...], code: int, words: str
) -> None:
    before = _states(router)
    spec_file = resolve_paths_for(session_home).config / "instances" / "multi.toml"
    spec_before = spec_file.read_bytes()
    res = nativellm(*argv, home=session_home)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and words in lines[0] and "hint:" in lines[1]
    assert "Traceback" not in res.stderr
    assert _states(router) == before
    assert spec_file.read_bytes() == spec_before


def test_a_load_that_does_not_fit_never_reaches_the_router(running: Router, session_home: Path) -> None:
    """The fit check with the RAM left injected (the one thing this host can't be made short of):
    refused with the numbers, and the router never hears of it (no spawn in its log)."""
    from nativellm.hardware import detect_host

    paths = resolve_paths_for(session_home)
    spec = InstanceSpec.from_toml((paths.config / "instances" / "multi.toml").read_text())
    check = load_fit_check(paths, lambda: detect_host(verify=False), available=lambda: 64 << 20)
    ops = RouterOps(spec, fit_check=check)
    before, log_before = _states(running.base), running.proc.output()
    with pytest.raises(
        ModelError, match=r"loading gemma on multi needs about 0\.\d\d GiB of RAM, but 0\.06 GiB"
    ):
        ops.load("gemma")
    assert _states(running.base) == before
    assert "name=gemma" not in running.proc.output()[len(log_before) :]
    ops.load("gemma", force=True, warmup=False)  # --force: sent, and the router spawns it
    assert "spawning server instance with name=gemma" in running.proc.output()[len(log_before) :]
    ops.unload("gemma")
    ops.client.close()


def resolve_paths_for(home: Path) -> Paths:
    old = os.environ.get("NATIVELLM_HOME")
    os.environ["NATIVELLM_HOME"] = str(home)
    try:
        return resolve_paths()
    finally:
        if old is None:
            del os.environ["NATIVELLM_HOME"]
        else:
            os.environ["NATIVELLM_HOME"] = old
