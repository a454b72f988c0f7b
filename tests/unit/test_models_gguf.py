"""GGUF validation: every kind of broken file gets its own clear ModelError; good files give facts."""

from __future__ import annotations

from pathlib import Path

import pytest
from ggufs import write_gguf, write_split

from nativellm.errors import ModelError
from nativellm.models.gguf import read_header, split_parts, validate_model


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "good.gguf")


def _error(path: Path) -> str:
    with pytest.raises(ModelError) as exc:
        validate_model([path])
    assert exc.value.exit_code == 9
    assert exc.value.hint
    return exc.value.message


def test_facts_of_a_valid_file(good: Path) -> None:
    f = validate_model([good])
    assert f["architecture"] == "llama"
    assert f["name"] == "test-model"
    assert f["block_count"] == 2
    assert f["head_count"] == 4
    assert f["head_count_kv"] == 2
    assert f["embedding_length"] == 64
    assert f["key_length"] == 16
    assert f["context_length"] == 2048
    assert f["file_type"] == "F16"
    assert f["vocab_size"] == 300
    assert f["tensor_count"] == 2 + 9 * 2 + 1
    assert f["has_chat_template"] is True
    # embeddings + output 300x64; per layer q,o 64x64, k,v 32x64, gate/up/down 128x64, 2 norms; final norm
    per_layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64
    assert f["parameters"] == 2 * 300 * 64 + 2 * per_layer + 64
    assert f["layer_bytes"] == [2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64) + 4 * 2 * 64] * 2
    assert f["tensor_bytes"] == sum(f["layer_bytes"]) + f["other_bytes"]
    assert f["output_bytes"] == 300 * 64 * 2


def test_no_chat_template(tmp_path: Path) -> None:
    assert (
        validate_model([write_gguf(tmp_path / "m.gguf", chat_template=False)])["has_chat_template"] is False
    )


def test_truncated_file_names_the_tensor(good: Path) -> None:
    data = good.read_bytes()
    good.write_bytes(data[: len(data) - 1000])
    msg = _error(good)
    assert "is truncated" in msg and "output.weight" in msg and "1000 missing" in msg


def test_truncated_inside_the_header(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:200])
    assert "truncated" in _error(good)


def test_bit_flipped_magic(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[1] ^= 0x04  # 'G' -> 'C'
    good.write_bytes(bytes(data))
    msg = _error(good)
    assert "corrupt GGUF magic" in msg and "b'GCUF'" in msg


def test_zero_length(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.touch()
    assert "is empty (0 bytes)" in _error(empty)


def test_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\nat all\n")
    msg = _error(text)
    assert "is a text file" in msg and "this is not a model" in msg


def test_git_lfs_pointer(tmp_path: Path) -> None:
    ptr = tmp_path / "model.gguf"
    ptr.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "Git LFS pointer" in _error(ptr)


def test_html_error_page(tmp_path: Path) -> None:
    page = tmp_path / "model.gguf"
    page.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    assert "HTML page" in _error(page)


def test_other_binary(tmp_path: Path) -> None:
    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    assert "is not a GGUF file" in _error(blob)


def test_each_problem_has_its_own_message(tmp_path: Path, good: Path) -> None:
    data = good.read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[:-1000])
    flipped = bytearray(data)
    flipped[0] ^= 0x01
    (tmp_path / "m.gguf").write_bytes(bytes(flipped))
    (tmp_path / "z.gguf").touch()
    (tmp_path / "x.gguf").write_text("hello\n")
    messages = {_error(tmp_path / n).split(" is ", 1)[1].split()[0] for n in ("t.gguf", "z.gguf", "x.gguf")}
    messages.add(_error(tmp_path / "m.gguf").split(" has ", 1)[1].split()[1])
    assert len(messages) == 4, messages


def test_unsupported_version(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    good.write_bytes(bytes(data))
    assert "GGUF version 99" in _error(good)


def test_insane_counts(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[8:16] = (10**12).to_bytes(8, "little")
    good.write_bytes(bytes(data))
    assert "claims 1000000000000 tensors" in _error(good)


def test_huge_string_length_is_caught_not_allocated(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[24:32] = (2**62).to_bytes(8, "little")  # the first key's length
    good.write_bytes(bytes(data))
    assert "corrupt or truncated" in _error(good)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", arch="frobnicator")
    assert "architecture 'frobnicator', which llama.cpp does not know" in _error(path)


def test_tensor_type_unknown(good: Path) -> None:
    h = read_header(good)
    data = bytearray(good.read_bytes())
    # Find the first tensor info by name and overwrite its type field.
    name = b"token_embd.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    data[type_at : type_at + 4] = (250).to_bytes(4, "little")
    good.write_bytes(bytes(data))
    assert h.tensors[0].name == "token_embd.weight"
    assert "has type 250" in _error(good)


def test_split_parts_are_validated_together(tmp_path: Path) -> None:
    parts = write_split(tmp_path, "big", 3)
    assert split_parts(parts[0]) == tuple(parts)
    facts = validate_model(parts)
    assert facts["split_count"] == 3
    assert facts["tensor_count"] == 21
    with pytest.raises(ModelError, match="3-part split model but 2"):
        validate_model(parts[:2])
    parts[2].write_bytes(parts[2].read_bytes()[:-10])
    with pytest.raises(ModelError, match="truncated"):
        validate_model(parts)


def test_not_split() -> None:
    assert split_parts(Path("/x/model-q4.gguf")) == ()
