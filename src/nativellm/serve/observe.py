"""What a running instance tells about itself: llama-server's error line in its journal, and the few
Prometheus gauges `status` shows from its /metrics."""

from __future__ import annotations

import re

from nativellm import client
from nativellm.serve.healthcheck import OFFLOAD_FAILED

_NOT_SERVER = re.compile(
    r"did not become ready|exited before it was ready|gave no answer at|offload check failed"
)
_ERROR = re.compile(r"\berror\b|\bfailed\b|\bunable\b|\bcannot\b|\bcan't\b|invalid", re.IGNORECASE)


_LLAMA_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [EWIDT] ")
# The most telling llama.cpp lines first: the root cause, not "exiting due to ...".
_TELLING = (re.compile(r"error loading model"), re.compile(r"error while handling argument"),
            re.compile(r"couldn't bind|failed to (open|bind|read|allocate)", re.IGNORECASE))  # fmt: skip


def find_error_line(journal_text: str) -> str | None:
    """llama-server's error line in its own journal output (not nativellm's probe lines):
    the most telling error, else the last line that reads like one, else its last line."""
    lines = [_LLAMA_PREFIX.sub("", ln.strip()) for ln in journal_text.splitlines()]
    lines = [ln for ln in lines if ln and not _NOT_SERVER.search(ln)]
    for pattern in _TELLING:
        hits = [ln for ln in lines if pattern.search(ln)]
        if hits:
            return hits[-1]
    hits = [ln for ln in lines if _ERROR.search(ln)]
    return hits[-1] if hits else (lines[-1] if lines else None)


def offload_failure(journal_text: str) -> str | None:
    """Why the last start failed its offload check (GPU layers asked for, but llama-server found no
    GPU or put no layer on it), from the readiness helper's verdict in the unit's journal; None when
    the journal has none. `status` and `doctor` show it before llama-server's own error line."""
    hits = [
        ln.split(OFFLOAD_FAILED, 1)[1].strip() for ln in journal_text.splitlines() if OFFLOAD_FAILED in ln
    ]
    return hits[-1] if hits else None


_METRICS = {
    "llamacpp:predicted_tokens_seconds": "tokens_per_s",
    "llamacpp:prompt_tokens_seconds": "prompt_tokens_per_s",
    "llamacpp:requests_processing": "requests_processing",
    "llamacpp:requests_deferred": "requests_deferred",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_ratio",
    "llamacpp:n_tokens_max": "n_tokens_max",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The few Prometheus gauges `status` shows, from llama-server's /metrics."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.partition(" ")
        name = key.split("{", 1)[0]
        if name in _METRICS:
            try:
                found[_METRICS[name]] = float(value.split()[0])
            except ValueError:
                continue
    return found


def read_metrics(base_url: str) -> dict[str, float]:
    text = client.metrics_text(base_url)
    return parse_metrics(text) if text is not None else {}
