"""Source resolution (tarball checks, tree identity) and build-failure recognition."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from nativellm.build.source import resolve_local, resolve_tarball, tree_hash
from nativellm.build.toolchain import troubleshoot
from nativellm.errors import NotFoundError, SourceError
from nativellm.fsutil import sha256_file


def _fake_tree(root: Path) -> Path:
    (root / "ggml" / "src").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(llama)\n")
    (root / "ggml" / "src" / "ggml.c").write_text("int x;\n")
    (root / "models").mkdir()
    (root / "models" / "vocab.gguf").write_bytes(b"GGUF")
    return root


def _tarball(tree: Path, out: Path, extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname="llama.cpp-b1")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x"))
    return out


def test_tree_hash_tracks_sources_but_not_models(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "src")
    h1 = tree_hash(tree)
    (tree / "models" / "vocab.gguf").write_bytes(b"GGUF changed")
    assert tree_hash(tree) == h1
    (tree / "ggml" / "src" / "ggml.c").write_text("int y;\n")
    assert tree_hash(tree) != h1


def test_local_source_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_local(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a llama.cpp source tree"):
        resolve_local(tmp_path / "empty")
    src = resolve_local(_fake_tree(tmp_path / "ok"))
    assert src.identity["kind"] == "directory" and len(src.identity["tree_sha256"]) == 64


def test_tarball_sha256_is_checked_and_nothing_is_extracted_on_mismatch(tmp_path: Path) -> None:
    archive = _tarball(_fake_tree(tmp_path / "t"), tmp_path / "llama.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(SourceError, match="sha256 is"):
        resolve_tarball(str(archive), "0" * 64, cache)
    assert not any(p.name.startswith("tarball-") for p in cache.iterdir())
    src = resolve_tarball(str(archive), sha256_file(archive), cache)
    assert (src.path / "CMakeLists.txt").is_file()
    assert src.identity == {"kind": "tarball", "sha256": sha256_file(archive), "origin": str(archive)}
    assert resolve_tarball(str(archive), None, cache).path == src.path  # reused


def test_tarball_with_escaping_path_is_refused(tmp_path: Path) -> None:
    evil = tarfile.TarInfo("../../evil.txt")
    evil.size = 1
    archive = _tarball(_fake_tree(tmp_path / "t"), tmp_path / "evil.tar.gz", evil)
    with pytest.raises(SourceError, match="unsafe path"):
        resolve_tarball(str(archive), None, tmp_path / "cache")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_missing_and_corrupt_tarballs(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        resolve_tarball(str(tmp_path / "nope.tar.gz"), None, tmp_path / "cache")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(SourceError, match="not a readable tarball"):
        resolve_tarball(str(bad), None, tmp_path / "cache")


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("nvcc fatal   : Unsupported gpu architecture 'compute_120a'", "nvcc is too old"),
        ("c++: fatal error: Killed signal terminated program cc1plus", "out of memory"),
        ("/usr/bin/ld: final link failed: No space left on device", "disk is full"),
        ("-- Could NOT find CUDAToolkit (missing: CUDA_CUDART)", "CUDA toolkit is missing"),
        ("CMake Error: No CMAKE_CXX_COMPILER could be found.", "no C/C++ compiler"),
        ("error: expected ';' before '}' token", None),
    ],
)
def test_troubleshoot_recognises_known_failures(log: str, expected: str | None) -> None:
    hint = troubleshoot(log)
    if expected is None:
        assert hint is None
    else:
        assert hint is not None and expected in hint


def test_old_cmake_and_missing_compiler_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from nativellm.build import toolchain
    from nativellm.errors import ToolchainError

    lines = {
        "cmake": "cmake version 3.16.3",
        "cc": "cc (Debian 12.2.0) 12.2.0",
        "c++": "c++ (Debian 12.2.0) 12.2.0",
    }
    monkeypatch.setattr(toolchain, "_pip_tool", lambda module, exe: exe)
    monkeypatch.setattr(toolchain, "_first_line", lambda argv: lines.get(Path(argv[0]).name))
    with pytest.raises(ToolchainError, match=r"cmake 3\.16\.3 is too old") as exc:
        toolchain.find_toolchain()
    assert "pip install -U cmake" in exc.value.hint
    lines["cmake"] = "cmake version 3.28.1"
    del lines["c++"]
    with pytest.raises(ToolchainError, match="no C/C\\+\\+ compiler"):
        toolchain.find_toolchain()
    lines["c++"] = "c++ 12"
    tools = toolchain.find_toolchain()
    assert tools.cmake_version == "3.28.1" and tools.identity()["cxx"] == "c++ 12"
