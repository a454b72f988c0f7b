"""The llama-server HTTP client (httpx): /health and readiness, /completion, OpenAI completions, /metrics.

Everything in nativellm that talks to a llama-server goes through here (the load generator excepted: it
needs httpx's async streaming and connection limits, and is an HTTP client by nature).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Health:
    status: str  # ok | loading | down
    code: int | None
    detail: str = ""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def health(base_url: str, timeout: float = 2.0) -> Health:
    try:
        r = httpx.get(f"{base_url}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return Health("down", None, type(exc).__name__)
    if r.status_code == 200:
        return Health("ok", 200)
    if r.status_code == 503:
        return Health("loading", 503)
    return Health("down", r.status_code, r.text[:200])


def wait_ready(
    base_url: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.1,
) -> Health:
    """Poll /health until 200, the deadline passes, or `alive()` says the process died."""
    deadline = time.monotonic() + timeout
    last = Health("down", None, "not polled")
    while time.monotonic() < deadline:
        if not alive():
            return Health("down", None, "process exited")
        last = health(base_url)
        if last.status == "ok":
            return last
        time.sleep(interval)
    return last


class RequestFailed(Exception):
    """A request to llama-server failed: no connection, a timeout, or a non-2xx answer."""


def complete(base_url: str, prompt: str, n_predict: int, timeout: float = 120.0) -> dict[str, Any]:
    """One /completion request; raises RequestFailed."""
    try:
        r = httpx.post(
            f"{base_url}/completion",
            json={"prompt": prompt, "n_predict": n_predict, "temperature": 0, "cache_prompt": False},
            timeout=timeout,
        )
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
    data: dict[str, Any] = r.json()
    return data


def openai_completion_problem(base_url: str, api_key: str | None, timeout: float = 120.0) -> str | None:
    """A real OpenAI-style completion; None when it worked, else why not."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
    try:
        r = httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"the completion request failed: {exc}"
    if r.status_code != 200:
        return f"the completion answered HTTP {r.status_code}: {r.text[:200]}"
    try:
        doc = r.json()
    except ValueError:
        return "the completion answer was not JSON"
    return completion_answer_problem(doc)


def completion_answer_problem(doc: Any) -> str | None:
    """Pure: why a /v1/completions answer is not a real completion (None: it is). Servers from
    December 2024 on answer OpenAI-style (`choices`); older ones answered in the native
    /completion shape (`content`, `tokens_predicted`), and a pinned old tag still does."""
    if not isinstance(doc, dict):
        return "the completion answer was not a JSON object"
    if "choices" in doc:
        return None if doc["choices"] else "the completion returned no choices"
    if "tokens_predicted" in doc and "content" in doc:
        return None if doc["tokens_predicted"] else "the completion returned no tokens"
    return "the completion answer was neither OpenAI-shaped nor llama-server's own shape"


def metrics_text(base_url: str, timeout: float = 2.0) -> str | None:
    """The Prometheus text of /metrics, None when the server doesn't answer it (metrics off)."""
    try:
        r = httpx.get(f"{base_url}/metrics", timeout=timeout)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None
