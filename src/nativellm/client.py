"""httpx client for a llama-server: /health, /completion, /metrics, /v1/models, wait_ready."""

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


def complete(base_url: str, prompt: str, n_predict: int, timeout: float = 120.0) -> dict[str, Any]:
    """One /completion request; raises httpx errors to the caller."""
    r = httpx.post(
        f"{base_url}/completion",
        json={"prompt": prompt, "n_predict": n_predict, "temperature": 0, "cache_prompt": False},
        timeout=timeout,
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data
