"""The model commands through the real CLI: --json envelopes, idempotence, exit codes, rm guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ggufs import write_gguf

from tests.helpers import nativellm


def test_add_list_inspect_verify_rm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = write_gguf(tmp_path / "Tiny-F16.gguf")
    add = nativellm("model", "add", str(model), "--json", home=home)
    assert add.returncode == 0, add.stderr
    doc = add.json()
    assert doc["schema"] == "nativellm.result/1" and doc["command"] == "model add" and doc["changed"] is True
    assert doc["data"]["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert nativellm("model", "add", str(model), "--json", home=home).json()["changed"] is False

    listed = nativellm("model", "list", "--json", home=home).json()
    assert [m["name"] for m in listed["models"]] == ["Tiny-F16"]
    human = nativellm("model", "list", home=home)
    assert "Tiny-F16" in human.stdout and "llama" in human.stdout

    inspect = nativellm("model", "inspect", "Tiny-F16", home=home)
    for label in ("architecture", "parameters", "file type", "context length", "layers", "KV heads",
                  "embedding size", "tensors", "size on disk", "chat template"):  # fmt: skip
        assert label in inspect.stdout, inspect.stdout
    facts = nativellm("model", "inspect", "Tiny-F16", "--json", home=home).json()["model"]["facts"]
    assert facts["head_count_kv"] == 2 and facts["has_chat_template"] is True

    assert nativellm("model", "verify", "Tiny-F16", home=home).returncode == 0
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x40
    model.write_bytes(bytes(data))
    bad = nativellm("model", "verify", "Tiny-F16", home=home)
    assert bad.returncode == 9 and "has sha256" in bad.stderr and "Traceback" not in bad.stderr

    inst = home / "config" / "instances"
    inst.mkdir(parents=True)
    (inst / "q4.toml").write_text('model = "Tiny-F16"\n')
    refused = nativellm("model", "rm", "Tiny-F16", "--json", home=home)
    assert refused.returncode == 9 and "used by instance(s) q4" in refused.json()["error"]["message"]
    forced = nativellm("model", "rm", "Tiny-F16", "--force", "--json", home=home)
    assert forced.returncode == 0 and forced.json()["changed"] is True
    assert model.exists()
    assert nativellm("model", "rm", "Tiny-F16", home=home).returncode == 3


def test_import_ollama_all_via_cli(tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    (root / "blobs").mkdir(parents=True)
    for name in ("alpha", "beta"):
        data = write_gguf(tmp_path / f"{name}.gguf", name=name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
        manifest.parent.mkdir(parents=True)
        layer = {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": f"sha256:{digest}",
            "size": len(data),
        }
        manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    home = tmp_path / "home"
    res = nativellm("model", "import-ollama", "--all", "--ollama-dir", str(root), "--json", home=home)
    assert res.returncode == 0, res.stderr
    assert sorted(res.json()["data"]["imported"]) == ["alpha", "beta"]
    again = nativellm("model", "import-ollama", "--all", "--ollama-dir", str(root), "--json", home=home)
    assert again.json()["changed"] is False
    missing = nativellm("model", "import-ollama", "gamma", "--ollama-dir", str(root), home=home)
    assert missing.returncode == 3 and "Ollama has no model gamma:latest" in missing.stderr


def test_bad_names_and_usage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = write_gguf(tmp_path / "m.gguf")
    res = nativellm("model", "add", str(model), "--name", "../evil", home=home)
    assert res.returncode == 2 and "invalid model name" in res.stderr
    res = nativellm("model", "add", str(model), "--link", "--copy", home=home)
    assert res.returncode == 2
    res = nativellm("model", "add", str(tmp_path / "nope.gguf"), home=home)
    assert res.returncode == 3
    res = nativellm("model", "fit", "nope", home=home)
    assert res.returncode == 3 and "nativellm model list" in res.stderr


def test_demo_falls_back_to_a_source_tree_vocab(llama_source: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"  # no build here: the tokenizer must come from --vocab
    missing = nativellm("model", "demo", home=home)
    assert missing.returncode == 3 and "--vocab" in missing.stderr
    res = nativellm("model", "demo", "--vocab", str(llama_source), "--json", home=home)
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    assert rec["metadata"]["vocab"] == str(llama_source / "models" / "ggml-vocab-llama-spm.gguf")
    assert rec["facts"]["vocab_size"] == 32000 and rec["facts"]["architecture"] == "llama"
    assert nativellm("model", "verify", "demo", home=home).returncode == 0
