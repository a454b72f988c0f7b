"""An Ollama blob, imported in place, serves under a systemd instance (model issue, acceptance 3)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from tests.e2e.conftest import InnerCli
from tests.e2e.test_instances import chat, healthy, port_of
from tests.helpers import CACHE, nativellm
from tests.integration.test_models_serve import _ollama_layout


def test_imported_ollama_model_serves_under_an_instance(
    cli: InnerCli, demo_home: Path, llama_source: Path
) -> None:
    # Under the test cache, not /tmp: the sandbox has its own /tmp.
    root = CACHE / "ollama" / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    try:
        src = write_synthetic_llama(root / "m.gguf", find_vocab(llama_source), SynthSize.TINY, seed=5)
        blob = _ollama_layout(root / "models", src, "tinyllama", "1b")
        inode = os.stat(blob).st_ino
        res = nativellm("model", "import-ollama", "tinyllama:1b", "--ollama-dir", str(root / "models"), "--json",
                        home=demo_home)  # fmt: skip
        assert res.returncode == 0, res.stderr
        cli("instance", "add", "oll", "--model", "tinyllama-1b", "--ctx", "512", check=True)
        cli("start", "oll", check=True)
        port = port_of(cli, "oll")
        assert healthy(port)
        assert isinstance(chat(port), str)
        shown = cli.json("instance", "show", "oll")
        assert str(blob) in json.dumps(shown)  # the unit serves Ollama's blob in place, no copy
        assert os.stat(blob).st_ino == inode
    finally:
        cli("instance", "rm", "oll")
        nativellm("model", "rm", "tinyllama-1b", home=demo_home)
        shutil.rmtree(root, ignore_errors=True)
