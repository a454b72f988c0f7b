"""What the MLX engine's integration and e2e tests share: the pinned mlx/mlx-lm wheels, downloaded
once from PyPI into the test cache (so the tiers install the runtime offline, with one download),
and a tiny random-weight llama in MLX format whose tokenizer is built from the llama SPM vocabulary
of the GGUF the suite already uses (the sdist's models/ggml-vocab-llama-spm.gguf)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nativellm.build.synth import find_vocab
from nativellm.mlx import runtime as rt
from tests.helpers import CACHE, _fetch_sdist

# An older mlx-lm than the lock's: a second runtime, for the rollback test.
OLDER_MLX_LM = "0.32.1"
WHEELS = CACHE / "mlx-wheels" / f"mlx{rt.MLX_VERSION}-lm{rt.MLX_LM_VERSION}-lm{OLDER_MLX_LM}"
TINYMODEL = Path(rt.__file__).with_name("tinymodel.py")


def mlx_wheels() -> Path:
    """A directory of every wheel both pin sets need (pip download), made once per cache."""
    if (WHEELS / ".complete").is_file():
        return WHEELS
    WHEELS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WHEELS.parent) as tmp:
        for lm in (rt.MLX_LM_VERSION, OLDER_MLX_LM):
            reqs = rt.requirements(mlx_lm_version=lm)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", tmp, *reqs], check=True)
        (Path(tmp) / ".complete").write_text("")
        shutil.rmtree(WHEELS, ignore_errors=True)
        os.replace(tmp, WHEELS)
        Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    return WHEELS


def spm_vocab_json(dest: Path) -> Path:
    """[token, score] pairs of the llama SPM vocabulary GGUF (32000 tokens), as tinymodel.py reads them."""
    import gguf

    reader = gguf.GGUFReader(str(find_vocab(_fetch_sdist())))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    dest.write_text(json.dumps([[t, float(s)] for t, s in zip(tokens, scores, strict=True)]))
    return dest


def write_tiny_mlx(dest: Path, python: Path) -> Path:
    """The tiny llama in MLX format, written by the runtime's own mlx and tokenizers."""
    vocab = spm_vocab_json(dest.parent / f"{dest.name}.vocab.json")
    subprocess.run([str(python), "-I", str(TINYMODEL), "write", str(dest), "--vocab", str(vocab)], check=True)
    vocab.unlink()
    return dest
