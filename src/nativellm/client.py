"""The llama-server HTTP client (httpx): /health and readiness, /completion, OpenAI completions, /metrics,
and a router's model API (/models, /models/load, /models/unload).

Everything in nativellm that talks to a llama-server goes through here (the load generator excepted: it
needs httpx's async streaming and connection limits, and is an HTTP client by nature).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nativellm.errors import InstanceError


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


# -- a router's model API ------------------------------------------------------------------
# llama-server's model states (GET /models status.value); "failed" is unloaded + failed: true.
STATES = ("loaded", "loading", "unloaded", "sleeping", "downloading", "failed")
WAIT_S = 300.0
POLL_S = 0.02  # GET /models is cheap; a coarser poll would add its half to every load


@dataclass(frozen=True)
class ModelState:
    """One model as the router reports it."""

    name: str
    state: str  # one of STATES
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state} | (
            {"exit_code": self.exit_code} if self.exit_code is not None else {}
        )


def parse_models(doc: Any) -> dict[str, ModelState]:
    """GET /models -> name -> state (pure)."""
    out: dict[str, ModelState] = {}
    for item in (doc or {}).get("data") or []:
        status = item.get("status") or {}
        state = str(status.get("value", "unloaded"))
        code = status.get("exit_code")
        if status.get("failed"):
            state = "failed"
        out[str(item.get("id"))] = ModelState(
            str(item.get("id")), state, code if isinstance(code, int) else None
        )
    return out


class RouterClient:
    """The router's HTTP API on loopback, with the instance's API key when it has one."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No keep-alive: the router drops idle connections after a few seconds, and a request sent on
        # one it just closed fails (RemoteProtocolError) though the router is fine.
        limits = httpx.Limits(max_keepalive_connections=0)
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, limits=limits)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise InstanceError(
                f"the router at {self.base_url} did not answer ({type(exc).__name__})",
                "is the instance running? see `nativellm status`",
            ) from exc
        if resp.status_code == 401:
            raise InstanceError(f"the router at {self.base_url} refused the API key", "check --api-key-file")
        try:
            doc = resp.json()
        except ValueError:
            doc = {}
        if resp.status_code >= 400:
            err = doc.get("error") if isinstance(doc, dict) else None
            msg = err.get("message") if isinstance(err, dict) else resp.text[:200]
            raise InstanceError(f"the router refused {path}: {msg}", "see `nativellm logs` for the instance")
        return doc

    def models(self) -> dict[str, ModelState]:
        return parse_models(self._call("GET", "/models"))

    def load(self, model: str) -> None:
        self._call("POST", "/models/load", {"model": model})

    def unload(self, model: str) -> None:
        self._call("POST", "/models/unload", {"model": model})

    def warmup(self, model: str, timeout: float = 120.0) -> float:
        """One real, short request, so the first user request doesn't pay the cold cost (page-in of
        the weights, first graph allocation). Returns its latency in seconds."""
        t0 = time.monotonic()
        try:
            resp = self._http.post(
                "/v1/completions",
                json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise InstanceError(
                f"warm-up of {model} failed ({type(exc).__name__})", "see `nativellm logs`"
            ) from exc
        if resp.status_code != 200:
            raise InstanceError(f"warm-up of {model} failed: HTTP {resp.status_code}", "see `nativellm logs`")
        return time.monotonic() - t0

    def wait_for(
        self,
        model: str,
        want: Sequence[str],
        timeout: float = WAIT_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ModelState:
        """Poll until `model` reaches one of `want`, bounded; a failed load ends the wait at once."""
        deadline = clock() + timeout
        while True:
            state = self.models().get(model)
            if state is not None and state.state in want:
                return state
            if state is not None and state.state == "failed" and "failed" not in want:
                code = f" (exit code {state.exit_code})" if state.exit_code is not None else ""
                raise InstanceError(
                    f"model {model} failed to load{code}", "see `nativellm logs` for the instance's log"
                )
            if clock() >= deadline:
                now = state.state if state else "missing"
                raise InstanceError(
                    f"model {model} did not become {' or '.join(want)} within {timeout:.0f} s (it is {now})",
                    "see `nativellm logs`; a big model may need a longer --timeout",
                )
            sleep(POLL_S)


def timed_request(
    base_url: str, model: str, *, api_key: str | None = None, stream: bool = False, timeout: float = 300.0
) -> float:
    """Seconds until a short completion's first token (stream) or its whole answer: the latency a
    user sees. The prompt and length are fixed, so runs compare."""
    # cache_prompt off: a repeated prompt would otherwise skip its prompt processing, and the
    # "steady" requests would not be the same work as a first one.
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
            "stream": stream, "cache_prompt": False}  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.monotonic()
    try:
        with httpx.stream(
            "POST", f"{base_url}/v1/completions", json=body, headers=headers, timeout=timeout
        ) as r:
            if r.status_code != 200:
                r.read()
                raise RequestFailed(f"{model}: HTTP {r.status_code}: {r.text[:200]}")
            if not stream:
                r.read()
                return time.monotonic() - t0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"text"' in line and line != "data: [DONE]":
                    return time.monotonic() - t0
    except httpx.HTTPError as exc:
        raise RequestFailed(f"{model}: {type(exc).__name__}: {exc}") from exc
    raise RequestFailed(f"{model}: the stream ended without a token")
