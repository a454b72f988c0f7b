"""The model store on real GGUF files: add, copy, rm, verify, inspect, Ollama import, demo, names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from ggufs import write_gguf, write_split, write_vocab

from nativellm.errors import ModelError, NotFoundError, UsageError
from nativellm.hardware.profile import CpuInfo, HostProfile
from nativellm.models.fit import kv_cache_bytes
from nativellm.models.registry import (
    ModelRecord,
    ModelRegistry,
    add_model,
    fit_model,
    import_ollama,
    import_ollama_all,
    inspect_model,
    instances_using,
    name_from_file,
    remove_model,
    validate_name,
    verify_model,
    write_demo_model,
)
from nativellm.paths import Paths, resolve_paths


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("NATIVELLM_HOME", str(tmp_path / "home"))
    return resolve_paths()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "files" / "Tiny-Llama-F16.gguf")


def test_add_references_the_file_by_default(paths: Paths, model: Path) -> None:
    rec, changed = add_model(paths, model)
    assert changed
    assert rec.name == "Tiny-Llama-F16"
    assert rec.path == model.resolve()
    assert rec.source == "file"
    assert rec.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert rec.size == model.stat().st_size
    assert rec.facts["architecture"] == "llama"
    assert rec.added.endswith("+00:00")
    assert not (paths.models / "files").exists()  # nothing copied
    again, changed = add_model(paths, model)
    assert not changed and again == rec
    assert ModelRegistry(paths).get("Tiny-Llama-F16") == rec


def test_index_is_versioned_json(paths: Paths, model: Path) -> None:
    add_model(paths, model, name="m")
    doc = json.loads((paths.models / "index.json").read_text())
    assert doc["schema"] == "nativellm.models/1"
    rec = ModelRecord.from_dict(doc["models"]["m"])
    assert rec == ModelRegistry(paths).get("m")


def test_add_copy_puts_the_file_in_the_store(paths: Paths, model: Path) -> None:
    rec, changed = add_model(paths, model, name="copied", copy=True)
    assert changed
    assert rec.path.parent == paths.models / "files" / "copied"
    assert rec.path.read_bytes() == model.read_bytes()
    assert os.stat(rec.path).st_ino != os.stat(model).st_ino
    assert not list(rec.path.parent.glob("*.part"))
    remove_model(paths, "copied")
    assert not rec.path.exists() and model.exists()


def test_broken_file_is_not_registered(paths: Paths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello")
    with pytest.raises(ModelError, match="text file"):
        add_model(paths, bad)
    with pytest.raises(ModelError):
        add_model(paths, bad, copy=True)
    assert ModelRegistry(paths).list() == []
    assert not (paths.models / "files").exists()


def test_name_conflict_is_refused(paths: Paths, model: Path, tmp_path: Path) -> None:
    add_model(paths, model, name="m")
    other = write_gguf(tmp_path / "other.gguf", n_layer=3)
    with pytest.raises(ModelError, match="already registered") as exc:
        add_model(paths, other, name="m")
    assert "--name" in exc.value.hint


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "../x", "a b", "x" * 65, "-dash", "ü"])
def test_names_are_validated(bad: str) -> None:
    with pytest.raises(UsageError):
        validate_name(bad)


@pytest.mark.parametrize("good", ["demo", "llama3.2-3b", "Q4_K_M", "a" * 64, "7b"])
def test_good_names(good: str) -> None:
    assert validate_name(good) == good


def test_default_names_are_safe() -> None:
    assert name_from_file(Path("Qwen2.5 7B Instruct (Q4_K_M).gguf")) == "Qwen2.5-7B-Instruct-Q4_K_M"
    assert name_from_file(Path("big-00001-of-00003.gguf")) == "big"
    assert name_from_file(Path(".gguf")) == "model"


def test_rm_refuses_while_an_instance_uses_it(paths: Paths, model: Path) -> None:
    add_model(paths, model, name="m")
    inst = paths.config / "instances"
    inst.mkdir(parents=True)
    (inst / "q4.toml").write_text('model = "m"\nport = 8080\n')
    (inst / "other.toml").write_text('model = "n"\n')
    (inst / "broken.toml").write_text("model = \n")
    (inst / "router.toml").write_text('model = ""\nmodels = ["n", "m"]\nport = 8090\n')
    assert instances_using(paths, "m") == ["q4", "router"]  # a router serving it counts too
    with pytest.raises(ModelError, match="used by instance") as exc:
        remove_model(paths, "m")
    assert "--force" in exc.value.hint
    assert ModelRegistry(paths).find("m") is not None
    remove_model(paths, "m", force=True)
    assert ModelRegistry(paths).find("m") is None
    assert model.exists()  # a referenced file is never deleted


def test_get_missing_points_at_list(paths: Paths) -> None:
    with pytest.raises(NotFoundError) as exc:
        ModelRegistry(paths).get("nope")
    assert "nativellm model list" in exc.value.hint
    assert exc.value.exit_code == 3


def test_verify_catches_a_changed_file(paths: Paths, model: Path) -> None:
    add_model(paths, model, name="m")
    assert verify_model(paths, "m").ok
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF  # a flipped weight bit: still valid GGUF, wrong hash
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="has sha256"):
        verify_model(paths, "m")
    model.unlink()
    with pytest.raises(ModelError, match="is missing"):
        verify_model(paths, "m")


def test_split_model_is_one_record(paths: Paths, tmp_path: Path) -> None:
    parts = write_split(tmp_path / "split", "big", 3)
    rec, _ = add_model(paths, parts[0])
    assert rec.name == "big"
    assert rec.path == parts[0].resolve()
    assert rec.parts == tuple(p.resolve() for p in parts)
    assert rec.size == sum(p.stat().st_size for p in parts)
    assert len(rec.metadata["part_sha256"]) == 3
    assert verify_model(paths, "big").ok
    with pytest.raises(UsageError, match="not the first part"):
        add_model(paths, parts[1])
    parts[2].unlink()
    with pytest.raises(ModelError, match="missing"):
        add_model(paths, parts[0], name="big2")


def test_inspect_by_name_and_by_path(paths: Paths, model: Path) -> None:
    add_model(paths, model, name="m")
    assert inspect_model(paths, "m").facts["head_count_kv"] == 2
    assert inspect_model(paths, str(model)).facts["block_count"] == 2
    with pytest.raises(NotFoundError):
        inspect_model(paths, "nope")


# --------------------------------------------------------------------------- Ollama
def _ollama_store(root: Path, model: Path, name: str = "tinyllama", tag: str = "latest") -> str:
    """Ollama's real layout: manifests/registry.ollama.ai/library/NAME/TAG plus sha256-named blobs."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, media: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    layers = [
        blob(model.read_bytes(), "application/vnd.ollama.image.model"),
        blob(b"{{ .System }} {{ .Prompt }}", "application/vnd.ollama.image.template"),
        blob(
            json.dumps({"stop": ["</s>"], "temperature": 0.7}).encode(), "application/vnd.ollama.image.params"
        ),
        blob(b"Apache License 2.0", "application/vnd.ollama.image.license"),
    ]
    config = blob(b'{"model_format":"gguf"}', "application/vnd.docker.container.image.v1+json")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config,
                "layers": layers,
            }
        )
    )
    return str(layers[0]["digest"]).removeprefix("sha256:")


def test_import_ollama_registers_the_blob_in_place(paths: Paths, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    digest = _ollama_store(root, model, tag="1b")
    rec, changed = import_ollama(paths, "tinyllama:1b", ollama_dir=root)
    assert changed
    assert rec.name == "tinyllama-1b"
    blob = root / "blobs" / f"sha256-{digest}"
    assert rec.path == blob
    assert os.stat(rec.path).st_ino == os.stat(blob).st_ino
    assert rec.sha256 == digest
    assert rec.source == "ollama"
    assert rec.metadata["template"] == "{{ .System }} {{ .Prompt }}"
    assert rec.metadata["params"] == {"stop": ["</s>"], "temperature": 0.7}
    assert rec.metadata["license"] == "Apache License 2.0"
    assert not (paths.models / "files").exists()
    assert import_ollama(paths, "tinyllama:1b", ollama_dir=root) == (rec, False)
    remove_model(paths, "tinyllama-1b")
    assert blob.exists()  # Ollama's blob is never deleted


def test_import_ollama_all_and_env_dir(
    paths: Paths, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ollama"
    _ollama_store(root, model, "a")
    _ollama_store(root, write_gguf(tmp_path / "b.gguf", n_layer=3), "b", "q4")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    results = import_ollama_all(paths)
    assert sorted(r.name for r, c in results if c) == ["a", "b-q4"]
    assert [c for _, c in import_ollama_all(paths)] == [False, False]


def test_import_ollama_refuses_a_corrupt_blob(paths: Paths, model: Path, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    digest = _ollama_store(root, model)
    blob = root / "blobs" / f"sha256-{digest}"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its digest"):
        import_ollama(paths, "tinyllama", ollama_dir=root)
    blob.write_bytes(bytes(data[:-500]))
    with pytest.raises(ModelError, match="truncated"):
        import_ollama(paths, "tinyllama", ollama_dir=root)
    assert ModelRegistry(paths).list() == []


def test_import_ollama_takes_the_blob_file_spelling_of_a_digest(
    paths: Paths, model: Path, tmp_path: Path
) -> None:
    """Ollama names blob files sha256-<hex>; a manifest that spells digests that way is still its own."""
    root = tmp_path / "ollama"
    digest = _ollama_store(root, model)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest"
    manifest.write_text(manifest.read_text().replace('"sha256:', '"sha256-'))
    rec, changed = import_ollama(paths, "tinyllama", ollama_dir=root)
    assert changed and rec.sha256 == digest and rec.metadata["template"] == "{{ .System }} {{ .Prompt }}"


def test_import_ollama_missing(paths: Paths, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no Ollama model store"):
        import_ollama(paths, "x", ollama_dir=tmp_path / "none")
    (tmp_path / "o" / "manifests").mkdir(parents=True)
    with pytest.raises(NotFoundError, match="Ollama has no model x:latest"):
        import_ollama(paths, "x", ollama_dir=tmp_path / "o")
    with pytest.raises(UsageError):
        import_ollama(paths, "../x", ollama_dir=tmp_path / "o")


# --------------------------------------------------------------------------- demo
def test_demo_from_a_vocab_file(paths: Paths, tmp_path: Path) -> None:
    vocab = write_vocab(tmp_path / "vocab.gguf")
    rec, changed = write_demo_model(paths, "demo", "tiny", vocab)
    assert changed and rec.source == "demo"
    assert rec.path.parent == paths.models / "files" / "demo"
    assert rec.facts["vocab_size"] == 300
    assert rec.facts["has_chat_template"]
    assert write_demo_model(paths, "demo", "tiny", vocab) == (rec, False)
    with pytest.raises(ModelError, match="already registered"):
        write_demo_model(paths, "demo", "small", vocab)


def test_demo_takes_the_vocab_from_the_current_build(paths: Paths, tmp_path: Path) -> None:
    build = paths.builds / "b1"
    (build / "share" / "nativellm").mkdir(parents=True)
    write_vocab(build / "share" / "nativellm" / "ggml-vocab-llama-spm.gguf")
    (build / "manifest.json").write_text(json.dumps({"id": "b1", "created": "now"}))
    paths.current.symlink_to(build)
    rec, _ = write_demo_model(paths)
    assert rec.metadata["vocab"] == str(build / "share" / "nativellm" / "ggml-vocab-llama-spm.gguf")


def test_demo_without_vocab_says_what_to_do(paths: Paths) -> None:
    with pytest.raises(NotFoundError) as exc:
        write_demo_model(paths)
    assert "--vocab" in exc.value.hint
    with pytest.raises(UsageError):
        write_demo_model(paths, size="huge", vocab=Path("/nonexistent"))


def test_url_file_names_stay_inside_the_store() -> None:
    from nativellm.models.pull import _file_name

    assert _file_name("https://h/x/Model-Q4_K_M.gguf?download=true") == "Model-Q4_K_M.gguf"
    assert _file_name("https://h/x/my%20model.gguf") == "model.gguf"
    assert _file_name("https://h/x/..") == "model.gguf"
    assert _file_name("https://h/x/.hidden.gguf") == "model.gguf"
    assert _file_name("https://h/x/weights") == "weights.gguf"


# --------------------------------------------------------------------------- control characters in model paths
def test_a_model_path_with_a_control_character_is_refused(paths: Paths, tmp_path: Path) -> None:
    """A path is written into the unit (Description=, ExecStart=): \\r or \\n there would add directives."""
    evil = write_gguf(tmp_path / "m\rExecStartPre=\r.gguf")
    with pytest.raises(UsageError, match="contains a control character"):
        add_model(paths, evil, name="m")
    link = tmp_path / "plain.gguf"
    link.symlink_to(evil)  # a clean name whose real path is not
    with pytest.raises(UsageError, match="real path .* contains a control character"):
        add_model(paths, link, name="m")
    with pytest.raises(UsageError, match="--ollama-dir .* contains a control character"):
        import_ollama(paths, "x", ollama_dir=tmp_path / "o\nx")
    assert ModelRegistry(paths).list() == []


def test_an_ollama_ref_with_control_characters_is_a_usage_error(paths: Paths, tmp_path: Path) -> None:
    # refused before the store is looked up: not "no Ollama model store" (3)
    with pytest.raises(UsageError, match="invalid Ollama model ref"):
        import_ollama(paths, "tiny\r\n", ollama_dir=tmp_path / "none")


def test_a_registered_path_with_a_control_character_cannot_be_used(paths: Paths, model: Path) -> None:
    """An index written by an older nativellm: the record is listed and removable, never used."""
    add_model(paths, model, name="crm")
    index = paths.models / "index.json"
    evil = model.resolve().with_name("crm\rExecStartPre=\r.gguf")
    model.rename(evil)
    index.write_text(
        index.read_text().replace(json.dumps(str(model.resolve()))[1:-1], json.dumps(str(evil))[1:-1])
    )
    reg = ModelRegistry(paths)
    with pytest.raises(UsageError, match="the path of model 'crm' .* contains a control character"):
        reg.find("crm")
    with pytest.raises(UsageError, match="control character"):
        verify_model(paths, "crm")
    assert [r.name for r in reg.list()] == ["crm"]
    assert remove_model(paths, "crm").path == evil
    assert reg.list() == []


# --------------------------------------------------------------------------- fit reads the file
def test_fit_reads_the_file_as_it_is_now(paths: Paths, model: Path) -> None:
    host = HostProfile("linux", "x86_64", CpuInfo("GenuineIntel", "Xeon", ("avx2",), 8, 16), 64 << 30, ())
    add_model(paths, model, name="m")
    assert "m at ctx 512 fits" in fit_model(paths, "m", host, ctx=512).message
    write_gguf(model, n_layer=5)  # replaced since it was added: the index still says 2 layers
    one_layer = kv_cache_bytes({**ModelRegistry(paths).get("m").facts, "block_count": 1}, 512)
    assert fit_model(paths, "m", host, ctx=512).kv_cache_bytes == 5 * one_layer
    model.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError):
        fit_model(paths, "m", host, ctx=512)
