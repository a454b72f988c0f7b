"""GPU memory per instance and the fit inventory, with the real llama-server nativellm built and the
real NVML binding on a host without the NVIDIA driver.

The buffer parser reads llama-server's load log: here a real CPU server's (its buffers are all
host buffers, so it holds no GPU memory); the Vulkan0 lines are checked on the real Vulkan
instance in the e2e tier.
"""

from __future__ import annotations

import ctypes.util
import json
from pathlib import Path

import pytest

from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from nativellm.client import complete
from nativellm.serve.observe import gpu_memory_from_log, parse_buffer_sizes
from tests.helpers import CliResult, nativellm
from tests.integration.test_models_serve import serving

FIXTURES = Path(__file__).parent.parent / "fixtures"
MiB = 1 << 20


@pytest.mark.slow
def test_buffers_from_a_real_llama_server_load_log(
    auto_build: CliResult, session_home: Path, llama_source: Path, tmp_path: Path
) -> None:
    model = write_synthetic_llama(tmp_path / "m.gguf", find_vocab(llama_source), SynthSize.TINY)
    # -lv 4: this llama.cpp prints llama's INFO lines (the buffer sizes among them) only at TRACE.
    with serving(session_home, model, tmp_path / "lv4.log", "-c", "512", "--log-verbosity", "4") as (
        base,
        proc,
    ):
        complete(base, "Hello", n_predict=2)
        text = proc.output()
    buffers = parse_buffer_sizes(text)
    kinds = {b.kind for b in buffers}
    print("llama-server buffers:", [(b.buffer, b.kind, round(b.bytes / MiB, 2)) for b in buffers])
    assert {"model", "KV", "compute"} <= kinds, text[-3000:]
    assert all(b.buffer.startswith("CPU") and not b.on_gpu for b in buffers)
    assert all(b.bytes > 0 for b in buffers if b.kind in ("model", "KV", "compute"))
    assert gpu_memory_from_log(text) == []  # a CPU server holds no GPU memory
    # The same server at the default verbosity: whether this tree prints the lines there (it
    # decides whether a unit needs --log-verbosity 4 for the journal source).
    with serving(session_home, model, tmp_path / "default.log", "-c", "512") as (base, proc):
        default_text = proc.output()
    print(f"buffer lines at the default verbosity: {len(parse_buffer_sizes(default_text))}")


def test_no_libnvidia_ml_degrades_to_unknown(tmp_path: Path, llama_source: Path) -> None:
    """The real nvidia-ml-py on a host without the driver: `model fit` and `status` work, no
    traceback, and the GPUs of a profile are compared by their total memory."""
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("libnvidia-ml is installed here; this checks a host without it")
    import pynvml

    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()
    home = tmp_path / "home"
    model = write_synthetic_llama(tmp_path / "m.gguf", find_vocab(llama_source), SynthSize.TINY)
    assert nativellm("model", "add", str(model), "--name", "m", home=home).returncode == 0

    here = nativellm("model", "fit", "m", "--ctx", "512", "--gpu-layers", "99", "--json", home=home)
    assert here.returncode == 0 and "Traceback" not in here.stderr, here.stderr
    assert "gpus" not in here.json()  # no GPU here: the CPU-only report keeps its shape

    h100 = FIXTURES / "profiles" / "2x-h100.json"
    fit = nativellm("model", "fit", "m", "--ctx", "512", "--gpu-layers", "99", "--profile", str(h100), "--json",
                    home=home)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    doc = fit.json()
    total = [g["memory_bytes"] for g in json.loads(h100.read_text())["gpus"]]
    assert [(g["index"], g["total_bytes"], g["free_bytes"], g["source"]) for g in doc["gpus"]] == [
        (i, t, None, "profile") for i, t in enumerate(total)
    ]
    assert doc["available_vram_bytes"] == total

    status = nativellm("status", "--json", home=home)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr


def test_the_parser_follows_the_trees_buffer_formats(llama_source: Path) -> None:
    """The printf formats the parser was written against, found in the pinned tree, rendered as
    llama-server prints them for a Vulkan device and parsed back."""
    src = llama_source / "src"
    formats = {
        "llama-model.cpp": ("%s: %12s model buffer size = %8.2f MiB", "load_tensors", "model"),
        "llama-kv-cache.cpp": ("%s: %10s KV buffer size = %8.2f MiB", "llama_kv_cache", "KV"),
        "llama-context.cpp": ("%s: %10s compute buffer size = %8.2f MiB", "sched_reserve", "compute"),
    }
    lines = []
    for file, (fmt, fn, _) in formats.items():
        assert f'"{fmt}\\n"' in (src / file).read_text(), f"{file} no longer prints {fmt!r}"
        lines.append("0.00.118.971 I " + fmt % (fn, "Vulkan0", 12.5))
    buffers = parse_buffer_sizes("\n".join(lines))
    assert [(b.buffer, b.kind, b.bytes) for b in buffers] == [
        ("Vulkan0", kind, round(12.5 * MiB)) for _, _, kind in formats.values()
    ]
    assert 'GGML_VK_NAME "Vulkan"' in (llama_source / "ggml" / "include" / "ggml-vulkan.h").read_text()
