"""A router instance under a real systemd (issue 16, acceptance 1, 2 and 5): three models, two of
them real (SmolLM2-135M-Instruct with its chat template, Gemma 3 270M with sliding-window
attention), routed by the `model` field through the official openai client; load, unload and swap
through the CLI with the instance's API key; eviction at --models-max; kill -9 recovery back to the
start-up model; and `bench swap` against a systemd restart of a single-model instance."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import InnerCli
from tests.e2e.sandbox import Sandbox
from tests.e2e.test_instances import port_of, unit, wait_until
from tests.helpers import CACHE, nativellm
from tests.realmodels import gemma3_270m, smollm2_135m_instruct

pytestmark = pytest.mark.slow
ROUNDS = int(os.environ.get("NATIVELLM_BENCH_SWAP_ROUNDS", "2"))  # more for a measuring run


@pytest.fixture(scope="module")
def router(cli: InnerCli, demo_home: Path) -> Iterator[tuple[int, str]]:
    for path, name in ((smollm2_135m_instruct(), "chat"), (gemma3_270m(), "gemma")):
        res = nativellm("model", "add", str(path), "--name", name, home=demo_home)
        assert res.returncode == 0, res.stderr
    key_file = CACHE / "keys" / f"router-{uuid.uuid4().hex[:8]}"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = uuid.uuid4().hex
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    cli("instance", "add", "multi", "--router", "--models", "chat,gemma,demo", "--models-max", "2",
        "--load-on-start", "chat", "--ctx", "512", "--threads", "2", "--api-key-file", str(key_file),
        check=True)  # fmt: skip
    try:
        cli("start", "multi", check=True, timeout=900)
        yield port_of(cli, "multi"), key
    finally:
        cli("instance", "rm", "multi")
        key_file.unlink(missing_ok=True)


def _models(cli: InnerCli) -> dict[str, str]:
    doc = cli.json("status", "multi")
    row = doc["instances"][0]
    assert row["router"] is True and row["model"] is None
    return {m["name"]: m["state"] for m in row["models"]}


def _ask(port: int, key: str, model: str, question: str) -> tuple[str, str]:
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, timeout=120, max_retries=0)
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0
    )
    return resp.model, resp.choices[0].message.content or ""


def test_router_routes_by_model_and_changes_state_on_command(
    cli: InnerCli, sandbox: Sandbox, router: tuple[int, str]
) -> None:
    port, key = router
    # Ready means the start-up model is loaded and warmed up: no request needed to get there.
    assert _models(cli) == {"chat": "loaded", "gemma": "unloaded", "demo": "unloaded"}
    model, answer = _ask(port, key, "chat", "What is the capital of France? Answer with one word.")
    assert model == "chat" and "Paris" in answer, answer
    model, answer = _ask(port, key, "chat", "What is the capital of Japan? Answer with one word.")
    assert "Tokyo" in answer, answer
    # A request for another model loads it (autoload): the random-weight demo answers as itself.
    model, _ = _ask(port, key, "demo", "hello")
    assert model == "demo"
    assert _models(cli) == {"chat": "loaded", "gemma": "unloaded", "demo": "loaded"}

    # --models-max 2: a third model evicts the least recently used one (chat, asked before demo).
    res = cli.json("model", "load", "gemma", "--on", "multi")
    assert res["data"]["warmup_seconds"] is not None
    assert _models(cli) == {"chat": "unloaded", "gemma": "loaded", "demo": "loaded"}
    model, _ = _ask(port, key, "gemma", "The capital of France is")
    assert model == "gemma"

    cli("model", "swap", "demo", "chat", "--on", "multi", check=True)
    assert _models(cli) == {"chat": "loaded", "gemma": "loaded", "demo": "unloaded"}
    cli("model", "unload", "gemma", "--on", "multi", check=True)
    assert _models(cli) == {"chat": "loaded", "gemma": "unloaded", "demo": "unloaded"}

    # Bad input: one line, its exit code, the router as it was.
    for argv, code in ((("model", "load", "chat"), 10), (("model", "unload", "demo"), 10),
                       (("model", "load", "nope"), 3)):  # fmt: skip
        bad = cli(*argv, "--on", "multi")
        assert bad.returncode == code and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert _models(cli) == {"chat": "loaded", "gemma": "unloaded", "demo": "unloaded"}

    # `instance edit` re-renders the preset and restarts the running router: the new setting applies.
    edited = cli.json("instance", "edit", "multi", "--model-opt", "gemma:ctx-size=1024")
    assert edited["data"]["restarted"] is True
    assert _models(cli)["chat"] == "loaded"  # back with its start-up model
    cli("model", "load", "gemma", "--on", "multi", "--no-warmup", check=True)
    listed = httpx.get(
        f"http://127.0.0.1:{port}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    args = next(m["status"]["args"] for m in listed.json()["data"] if m["id"] == "gemma")
    assert args[args.index("--ctx-size") + 1] == "1024", args
    cli("model", "unload", "gemma", "--on", "multi", check=True)

    # --models-max 1: one model at a time; loading another unloads the one loaded (README).
    cli("instance", "edit", "multi", "--models-max", "1", check=True)
    assert _models(cli) == {"chat": "loaded", "gemma": "unloaded", "demo": "unloaded"}
    cli("model", "load", "gemma", "--on", "multi", "--no-warmup", check=True)
    assert _models(cli) == {"chat": "unloaded", "gemma": "loaded", "demo": "unloaded"}
    model, _ = _ask(port, key, "demo", "hello")  # a request for another model evicts too
    assert model == "demo" and _models(cli) == {"chat": "unloaded", "gemma": "unloaded", "demo": "loaded"}
    cli("instance", "edit", "multi", "--models-max", "2", check=True)

    # Without the key the router refuses (the lifecycle commands above used the instance's key file).
    no_key = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", timeout=30, max_retries=0)
    with pytest.raises(Exception, match="401|Invalid API Key"):
        no_key.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def test_router_recovers_from_kill_9_with_its_start_up_model(
    cli: InnerCli, sandbox: Sandbox, router: tuple[int, str]
) -> None:
    port, key = router
    before = unit(sandbox, "multi")
    pid = int(before["MainPID"])
    sandbox.exec(["kill", "-9", str(pid)])
    back = wait_until(
        lambda: (
            int(unit(sandbox, "multi")["MainPID"]) not in (0, pid)
            and unit(sandbox, "multi")["ActiveState"] == "active"
        ),
        120,
        0.5,
    )
    assert back, unit(sandbox, "multi")
    assert int(unit(sandbox, "multi")["NRestarts"]) == int(before["NRestarts"]) + 1
    # Active means ExecStartPost passed: the start-up model is loaded again.
    assert _models(cli)["chat"] == "loaded"
    _, answer = _ask(port, key, "chat", "What is the capital of France? Answer with one word.")
    assert "Paris" in answer


def test_bench_swap_against_a_restart(cli: InnerCli, router: tuple[int, str]) -> None:
    """Acceptance 2 and 5, measured in one run (figures printed; the README and notes quote them)."""
    cli("instance", "add", "chat-single", "--model", "chat", "--ctx", "512", "--threads", "2", check=True)
    try:
        cli("start", "chat-single", check=True)
        doc = cli.json("bench", "swap", "--on", "multi", "--from", "demo", "--to", "chat", "--restart",
                       "chat-single", "-r", str(ROUNDS), timeout=1800)  # fmt: skip
        print("bench swap:", json.dumps(doc))
        if os.environ.get("NATIVELLM_BENCH_SWAP_OUT"):  # a measuring run keeps its figures
            Path(os.environ["NATIVELLM_BENCH_SWAP_OUT"]).write_text(json.dumps(doc, indent=2) + "\n")
        assert doc["schema"] == "nativellm.bench-swap/1" and doc["rounds"] == ROUNDS
        assert all(x > 0 for x in doc["swap_s"] + doc["restart_s"] + doc["warm_first_s"])
        ratios = doc["ratios"]
        assert ratios["swap_vs_restart"] > 0 and ratios["warm_first_vs_steady"] > 0
        # The router is left as the bench found it: demo loaded (the --from model), chat not.
        assert _models(cli)["demo"] == "loaded" and _models(cli)["chat"] == "unloaded"
    finally:
        cli("instance", "rm", "chat-single")
