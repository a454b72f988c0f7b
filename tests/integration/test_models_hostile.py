"""Issue 14, the model store against hostile or broken input, through the real CLI: a crafted Ollama
store (path digests, symlinked blobs), `add --copy` over a registered name, a damaged index.json, and
paths that are not regular files. Every refusal is one `error:` line plus a `hint:` line, the documented
exit code, no traceback, and the data directory byte for byte as it was (tests/statehash.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from ggufs import write_gguf, write_split

from tests.helpers import CliResult, nativellm
from tests.statehash import tree_state

SECRET = "root:$6$TOP-SECRET-HASH:19000:0:99999:7:::\n"


def _refused(res: CliResult, code: int, *needles: str) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].lstrip().startswith("hint:"), lines
    for needle in needles:
        assert needle in lines[0], lines
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


# --------------------------------------------------------------------------- Ollama (finding 4)
def _ollama_store(root: Path, model: Path, template_digest: str | None = None) -> dict[str, str]:
    """Ollama's real layout, written here; `template_digest` overrides the template layer's digest."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    digests = {}

    def layer(kind: str, data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        digests[kind] = digest
        return {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{digest}",
                "size": len(data)}  # fmt: skip

    layers = [layer("model", model.read_bytes()), layer("template", b"{{ .Prompt }}"),
              layer("params", b'{"temperature": 0.5}'), layer("license", b"MIT")]  # fmt: skip
    if template_digest is not None:
        layers[1]["digest"] = template_digest
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return digests


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Stands in for /etc/shadow: a file outside the Ollama store that must never reach the index."""
    path = tmp_path / "etc" / "shadow"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


@pytest.mark.parametrize("digest", ["../../etc/shadow", "sha256:../../../etc/shadow", "sha256:" + "A" * 64,
                                    "sha256-../../etc/shadow", ""])  # fmt: skip
def test_ollama_layer_digest_that_is_a_path_is_refused(digest: str, secret: Path, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    _ollama_store(root, write_gguf(tmp_path / "m.gguf"), template_digest=digest)
    home = tmp_path / "home"
    before = tree_state(home)
    res = nativellm("model", "import-ollama", "tiny", "--ollama-dir", str(root), home=home)
    _refused(res, 9, "bad layer digest", "nothing was imported")
    assert tree_state(home) == before
    assert SECRET.strip() not in res.stdout + res.stderr


def test_ollama_blob_symlinked_outside_the_store_is_refused(secret: Path, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    digests = _ollama_store(root, write_gguf(tmp_path / "m.gguf"))
    template = root / "blobs" / f"sha256-{digests['template']}"
    template.unlink()
    template.symlink_to(secret)
    home = tmp_path / "home"
    before = tree_state(home)
    res = nativellm("model", "import-ollama", "tiny", "--ollama-dir", str(root), home=home)
    _refused(res, 9, "points outside", str(template))
    assert tree_state(home) == before
    # A blob symlinked to another blob of the same store is fine (nothing leaves it).
    template.unlink()
    other = root / "blobs" / f"sha256-{digests['license']}"
    template.symlink_to(other.name)
    ok = nativellm("model", "import-ollama", "tiny", "--ollama-dir", str(root), "--json", home=home)
    assert ok.returncode == 0, ok.stderr
    meta = ok.json()["data"]["models"][0]["metadata"]
    assert meta["template"] == "MIT" and meta["params"] == {"temperature": 0.5}
    index = (home / "data" / "models" / "index.json").read_text()
    assert SECRET.strip() not in index


def test_ollama_model_blob_symlinked_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    outside = write_gguf(tmp_path / "outside.gguf")
    digests = _ollama_store(root, outside)
    blob = root / "blobs" / f"sha256-{digests['model']}"
    blob.unlink()
    blob.symlink_to(outside)  # the right bytes even, but not Ollama's file
    home = tmp_path / "home"
    res = nativellm("model", "import-ollama", "tiny", "--ollama-dir", str(root), home=home)
    _refused(res, 9, "points outside")
    assert tree_state(home) == {}


def test_ollama_text_layers_are_capped_and_never_block(tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    digests = _ollama_store(root, write_gguf(tmp_path / "m.gguf"))
    big = root / "blobs" / f"sha256-{digests['license']}"
    big.write_bytes(b"x" * ((1 << 20) + 1))  # over the cap: left out, not read into the index
    fifo = root / "blobs" / f"sha256-{digests['template']}"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    home = tmp_path / "home"
    res = nativellm("model", "import-ollama", "tiny", "--ollama-dir", str(root), "--json", home=home,
                    timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    meta = res.json()["data"]["models"][0]["metadata"]
    assert "license" not in meta and "template" not in meta and meta["params"] == {"temperature": 0.5}


def test_ollama_all_imports_nothing_when_one_manifest_is_hostile(secret: Path, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    _ollama_store(root, write_gguf(tmp_path / "m.gguf"))  # "tiny": a good model, listed first
    bad = tmp_path / "bad"
    _ollama_store(bad, write_gguf(tmp_path / "n.gguf", name="other"), template_digest="../../etc/shadow")
    (root / "manifests" / "registry.ollama.ai" / "library" / "zzz").mkdir()
    os.replace(bad / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest",
               root / "manifests" / "registry.ollama.ai" / "library" / "zzz" / "latest")  # fmt: skip
    for blob in (bad / "blobs").iterdir():
        os.replace(blob, root / "blobs" / blob.name)
    home = tmp_path / "home"
    res = nativellm("model", "import-ollama", "--all", "--ollama-dir", str(root), home=home)
    _refused(res, 9, "bad layer digest")
    assert tree_state(home) == {}  # not even "tiny": all or nothing


# --------------------------------------------------------------------------- add --copy (finding 6)
def test_copy_under_a_taken_name_leaves_the_registered_file_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = write_gguf(tmp_path / "one" / "model.gguf", name="first-model")
    other = write_gguf(tmp_path / "two" / "model.gguf", name="other-model")  # same file name, other bytes
    add = nativellm("model", "add", str(first), "--copy", "--name", "m", "--json", home=home)
    assert add.returncode == 0, add.stderr
    registered = Path(add.json()["data"]["model"]["path"])
    want = hashlib.sha256(first.read_bytes()).hexdigest()
    before = tree_state(home)
    res = nativellm("model", "add", str(other), "--copy", "--name", "m", home=home)
    _refused(res, 9, "already registered")
    assert hashlib.sha256(registered.read_bytes()).hexdigest() == want
    assert tree_state(home) == before
    assert nativellm("model", "verify", "m", home=home).returncode == 0


def test_copy_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    parts = write_split(tmp_path / "src", "big", 2)
    res = nativellm("model", "add", str(parts[0]), "--copy", "--json", home=home)
    assert res.returncode == 0, res.stderr
    store = home / "data" / "models" / "files" / "big"
    assert sorted(p.name for p in store.iterdir()) == [p.name for p in parts]
    assert nativellm("model", "verify", "big", home=home).returncode == 0


# --------------------------------------------------------------------------- a damaged index.json
@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"schema": "nativellm.models/1", "models": []}',
     '{"schema": "nativellm.models/1", "models": {"x": {"name": "x"}}}', "\xff\xfe"],
)  # fmt: skip
def test_a_damaged_index_is_named_and_never_overwritten(content: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    index = home / "data" / "models" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_bytes(content.encode("latin-1"))
    model = write_gguf(tmp_path / "m.gguf")
    before = tree_state(home)
    for args in (["model", "list"], ["model", "add", str(model)], ["model", "add", str(model), "--copy"],
                 ["model", "rm", "x"]):  # fmt: skip
        res = nativellm(*args, home=home)
        line = _refused(res, 9, "is damaged", str(index))
        assert "nothing was changed" in line
        assert f"mv {index} {index}.bad" in res.stderr
    assert tree_state(home) == before


@pytest.mark.parametrize("lock", [".index.lock", ".locks/m.lock"])
def test_a_directory_where_a_lock_goes_is_refused(lock: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "data" / "models" / lock).mkdir(parents=True)
    res = nativellm("model", "add", str(write_gguf(tmp_path / "m.gguf")), "--copy", home=home)
    _refused(res, 12, "cannot be taken", lock)
    assert tree_state(home) == {}


def test_a_directory_as_index_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    index = home / "data" / "models" / "index.json"
    index.mkdir(parents=True)
    _refused(nativellm("model", "list", home=home), 9, "is damaged", str(index))


# --------------------------------------------------------------------------- not a regular file
@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "loop"])
def test_add_names_what_the_path_really_is(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.gguf"
    expected = {"directory": "is not a regular file (it is a directory)",
                "fifo": "is not a regular file (it is a FIFO)",
                "device": "is not a regular file (it is a device)",
                "loop": "is a symlink loop"}[kind]  # fmt: skip
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.symlink_to(path.name)
    home = tmp_path / "home"
    for args in (["model", "add", str(path)], ["model", "add", str(path), "--copy"],
                 ["model", "inspect", str(path)]):  # fmt: skip
        res = nativellm(*args, home=home, timeout=60)  # a FIFO must not hang it
        line = _refused(res, 9, expected)
        assert "split model part" not in line
    assert tree_state(home) == {}


def test_split_part_that_is_a_directory_is_named(tmp_path: Path) -> None:
    parts = write_split(tmp_path / "src", "big", 3)
    parts[1].unlink()
    parts[1].mkdir()
    res = nativellm("model", "add", str(parts[0]), home=tmp_path / "home")
    _refused(res, 9, f"split model part {parts[1]} is not a regular file")
    parts[1].rmdir()
    res = nativellm("model", "add", str(parts[0]), home=tmp_path / "home")
    _refused(res, 9, f"split model part {parts[1]} is missing")


def test_add_with_a_bad_sha256_is_a_usage_error_first(tmp_path: Path) -> None:
    fifo = tmp_path / "f.gguf"
    os.mkfifo(fifo)
    for path in (write_gguf(tmp_path / "m.gguf"), fifo, tmp_path / "none.gguf"):
        res = nativellm("model", "add", str(path), "--sha256", "xyz", home=tmp_path / "home", timeout=60)
        _refused(res, 2, "--sha256 'xyz' is not a sha256")
    assert tree_state(tmp_path / "home") == {}
