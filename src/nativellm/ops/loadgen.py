"""Load generator for a running llama-server: streaming chat completions over httpx.

Token counts and prompt throughput come from the server's own `timings` and
`usage` fields, so the client never tokenises anything and its cost stays off
the measurement. Requests are bounded by count and by time: it always stops.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx

from nativellm import validate
from nativellm.errors import InstanceError, UsageError


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    total_s: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    prompt_tps: float | None = None  # from the server's timings
    error: str = ""
    retried: bool = False  # sent again after the server closed a kept-alive connection
    server_decode_tps: float | None = None  # the server's own figure (timings.predicted_per_second)

    @property
    def decode_tps(self) -> float:
        """Per-stream decode speed. The server's own timing where it reports one: tokens reach the client
        in bursts (a short stream can arrive in one read), which makes a client-side span meaningless.
        Otherwise tokens after the first over the time after the first, as the client saw them."""
        if self.server_decode_tps:
            return self.server_decode_tps
        span = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / span if self.completion_tokens > 1 and span > 0 else 0.0


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int  # all requests together
    retried: int  # requests sent again on a new connection (see _one)
    ttft_p50_s: float
    ttft_p95_s: float
    decode_tps_per_stream: float  # median over requests
    aggregate_tps: float  # all completion tokens / wall time
    prompt_tps: float  # median of the server-reported prompt speed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadReport:
    url: str
    warmup: RequestResult
    levels: tuple[LevelResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "warmup": asdict(self.warmup),
            "levels": [lv.to_dict() for lv in self.levels],
        }


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def make_prompt(n_tokens: int) -> str:
    # Common short words are about one token each in llama-style vocabularies.
    words = ("the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran")
    return " ".join(words[i % len(words)] for i in range(max(1, n_tokens)))


async def _one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    """One streamed request. llama-server's HTTP library may close a kept-alive connection just
    as the next request goes out on it ("Server disconnected without sending a response"); the
    server never saw that request, so it is sent once more on a new connection, as browsers do."""
    first = await _stream_one(client, url, body, headers)
    # Only that case: a server that dies mid-stream ("incomplete chunked read") is an error.
    if first.error.startswith("RemoteProtocolError") and "without sending a response" in first.error:
        again = await _stream_one(client, url, body, headers)
        return replace(again, retried=True)
    return first


async def _stream_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    t0 = time.perf_counter()
    ttft = 0.0
    tokens = 0
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return RequestResult(False, error=f"HTTP {resp.status_code}: {resp.text[:120]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        tokens += 1
                        if ttft == 0.0:
                            ttft = time.perf_counter() - t0
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    total = time.perf_counter() - t0
    return RequestResult(
        ok=tokens > 0,
        ttft_s=ttft,
        total_s=total,
        completion_tokens=int(usage.get("completion_tokens", tokens)),
        prompt_tokens=int(usage.get("prompt_tokens", timings.get("prompt_n", 0))),
        prompt_tps=float(timings["prompt_per_second"]) if "prompt_per_second" in timings else None,
        server_decode_tps=float(timings["predicted_per_second"])
        if "predicted_per_second" in timings
        else None,
        error="" if tokens > 0 else "no tokens",
    )


async def _level(
    url: str, concurrency: int, requests: int, duration: float, body: dict[str, Any], headers: dict[str, str]
) -> LevelResult:
    results: list[RequestResult] = []
    started = time.perf_counter()
    deadline = started + duration
    issued = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            results.append(await _one(client, url, body, headers))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(duration + 60), limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    good = [r for r in results if r.ok]
    prompt = [r.prompt_tps for r in good if r.prompt_tps]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(good),
        wall_s=wall,
        completion_tokens=sum(r.completion_tokens for r in good),
        retried=sum(1 for r in results if r.retried),
        ttft_p50_s=_percentile([r.ttft_s for r in good], 0.5),
        ttft_p95_s=_percentile([r.ttft_s for r in good], 0.95),
        decode_tps_per_stream=statistics.median([r.decode_tps for r in good]) if good else 0.0,
        aggregate_tps=sum(r.completion_tokens for r in good) / wall if wall > 0 else 0.0,
        prompt_tps=statistics.median(prompt) if prompt else 0.0,
    )


def check_url(url: str, what: str = "--url") -> str:
    """An http:// or https:// URL with a host: what the load generator can talk to."""
    validate.no_control(url, what)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(
            f"{what} {url!r} is not an http:// or https:// URL",
            "give llama-server's base URL, e.g. http://127.0.0.1:8080",
        )
    return url


def _all_failed(target: str, warmup: RequestResult, levels: Sequence[LevelResult]) -> InstanceError:
    """Every request failed: there is nothing to report, and exit 0 would say the benchmark ran."""
    count = 1 + sum(lv.requests for lv in levels)
    return InstanceError(
        f"every request to {target} failed ({count} sent; the first: {warmup.error or 'no tokens'})",
        "check that llama-server is running and answers there (`nativellm instance status NAME`), "
        "or pass the right --url",
    )


def run_load(
    url: str,
    *,
    concurrency: Sequence[int] = (1, 4, 8),
    prompt_tokens: int = 128,
    max_tokens: int = 64,
    requests: int = 16,
    duration: float = 120.0,
    api_key: str | None = None,
    target: str | None = None,
) -> LoadReport:
    """Warm up once, then run each concurrency level; bounded by `requests` and `duration` per level.

    Some failed requests are part of the report (`errors` per level). When every request failed,
    or the warm-up could not connect at all, there is no measurement: InstanceError, naming
    `target` (the instance, or the URL) and the first failure.
    """
    check_url(url)
    if not concurrency or min(concurrency) < 1:
        raise UsageError("--concurrency needs positive integers", "pass e.g. --concurrency 1,4,8")
    if requests < 1 or duration <= 0:
        raise UsageError("--requests and --duration must be positive", "pass --requests 16 --duration 60")
    body = {
        "messages": [{"role": "user", "content": make_prompt(prompt_tokens)}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def main() -> LoadReport:
        async with httpx.AsyncClient(timeout=httpx.Timeout(duration + 60)) as client:
            warm = await _one(client, url, body, headers)
        if not warm.ok and warm.error.startswith(("ConnectError", "ConnectTimeout")):
            raise _all_failed(target or url, warm, ())  # nothing listens there: no level can do better
        levels = [await _level(url, c, requests, duration, body, headers) for c in concurrency]
        if not warm.ok and all(lv.errors == lv.requests for lv in levels):
            raise _all_failed(target or url, warm, levels)
        return LoadReport(url, warm, tuple(levels))

    return asyncio.run(main())
