"""What a running instance tells about itself: llama-server's error line in its journal, the
few Prometheus gauges `status` shows from its /metrics, and the buffers it allocated on each
device (its load log)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nativellm import client
from nativellm.hardware.vram import GpuMemory
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


# --------------------------------------------------------------------------- buffers from the load log
# The formats, from the llama.cpp tree (printf widths vary, so whitespace is loose):
#   src/llama-model.cpp     "%s: %12s model buffer size = %8.2f MiB"   (load_tensors; older trees:
#                           "llm_load_tensors: %10s buffer size = ...", without "model")
#   src/llama-kv-cache.cpp  "%s: %10s KV buffer size = %8.2f MiB"      (llama_kv_cache)
#   src/llama-context.cpp   "%s: %10s  output buffer size = ..." and "%s: %10s compute buffer size = ..."
#   also "RS" (recurrent state), "LoRA" and "DSV4 <name> state" buffers.
# The name is the ggml buffer (type) name: Vulkan0, CUDA0, ROCm0 (HIP builds keep the CUDA code
# with GGML_CUDA_NAME "ROCm"), MUSA0, SYCL0 on a device; CPU, CPU_Mapped, CPU_REPACK, CUDA_Host,
# Vulkan_Host in host memory. A mismatch warning ("compute buffer size of ...") has no "=".
_BUFFER = re.compile(
    r"(?P<fn>\w+):\s+(?P<buf>[A-Za-z][\w.-]*)\s+(?:(?P<kind>[A-Za-z][\w ]*?)\s+)?buffer size = *(?P<mib>[0-9.]+) MiB"
)
_GPU_BUFFER = re.compile(r"(?P<backend>CUDA|ROCm|MUSA|Vulkan|SYCL|CANN|OpenCL|MTL)(?P<index>\d+)")
# llama-server's own line before each load ("srv    load_model: loading model '...'"): the
# journal keeps every start of the unit, and only the last load is the running one.
_LOAD_START = re.compile(r"\bloading model\b")


@dataclass(frozen=True)
class BufferSize:
    """One buffer llama.cpp reported allocating: its buffer name, what it holds, its size."""

    buffer: str
    kind: str  # model | KV | compute | output | RS | LoRA | ...
    bytes: int

    @property
    def on_gpu(self) -> bool:
        return _GPU_BUFFER.fullmatch(self.buffer) is not None


def parse_buffer_sizes(log_text: str) -> list[BufferSize]:
    """The buffers of the last model load in `log_text` (llama-server's journal or stderr).

    A load prints its model buffers first, then KV, output and compute; a model line after those
    starts another pass over the model (a trial load by an older fit step), which replaces what
    came before, so nothing is counted twice.
    """
    lines = log_text.splitlines()
    starts = [i for i, ln in enumerate(lines) if _LOAD_START.search(ln)]
    found: list[BufferSize] = []
    past_model = False
    for line in lines[starts[-1] if starts else 0 :]:
        m = _BUFFER.search(line)
        if m is None:
            continue
        kind = (m.group("kind") or "model").strip()
        if kind == "model" and past_model:
            found, past_model = [], False
        past_model = past_model or kind != "model"
        found.append(BufferSize(m.group("buf"), kind, round(float(m.group("mib")) * (1 << 20))))
    return found


def gpu_memory_from_log(log_text: str, gpus: Sequence[int] | None = None) -> list[GpuMemory]:
    """GPU memory per device, summed over llama-server's buffers on it (model, KV, compute...).

    llama-server numbers the devices it sees; `gpus` (the instance's --gpus, which sets
    CUDA_VISIBLE_DEVICES/HIP_VISIBLE_DEVICES) maps that numbering back to the host's.
    """
    totals: dict[str, int] = {}
    for b in parse_buffer_sizes(log_text):
        if b.on_gpu:
            totals[b.buffer] = totals.get(b.buffer, 0) + b.bytes
    out = []
    for name, size in totals.items():
        m = _GPU_BUFFER.fullmatch(name)
        if m is None:  # on_gpu said it matches
            continue
        local = int(m.group("index"))
        index = gpus[local] if gpus and local < len(gpus) else local
        out.append(GpuMemory(name, index, size, "llama-server"))
    return sorted(out, key=lambda g: (g.index if g.index is not None else -1, g.device))
