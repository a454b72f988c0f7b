"""Fuzz the build manifests that come from outside: an artifact's artifact.json (build/artifacts.py
read_meta, what `install-artifact` reads first) and a store build's manifest.json (build/store.py)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from nativellm.build.artifacts import ARTIFACT_SCHEMA, META_FILE, read_meta
from nativellm.build.store import Store
from nativellm.errors import NativeLLMError
from nativellm.paths import Paths, Scope

from .conftest import INPUT_LIMIT, MiB, check
from .strategies import json_objects, json_values

pytestmark = pytest.mark.fuzz

META_KEYS = ["schema", "id", "plan", "source", "created", "binaries", "sha256", "variant", "artifact"]
metas = st.one_of(
    st.builds(
        lambda d: json.dumps(d).encode(),
        json_objects(META_KEYS, {"schema": st.sampled_from([ARTIFACT_SCHEMA, "nativellm.artifact/2", 1])}),
    ),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=256),
)
member = st.tuples(
    st.sampled_from(
        [f"b/{META_FILE}", META_FILE, f"b/c/{META_FILE}", "b/bin/llama-server", "../x", "/abs", ""]
    ),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]),
    metas,
)


def tar_bytes(members: list[tuple[str, bytes, bytes]], compression: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.linkname = "b/x"
                tar.addfile(info)
    data = raw.getvalue()
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


archives = st.one_of(
    st.builds(tar_bytes, st.lists(member, max_size=4), st.sampled_from(["", "gz", "zst"])),
    st.builds(
        lambda data, cut, flip: (data[:cut] if cut else data)[:-1] + bytes([data[-1] ^ flip]),
        st.builds(tar_bytes, st.lists(member, min_size=1, max_size=3), st.sampled_from(["", "gz", "zst"])),
        st.integers(0, 2048),
        st.integers(0, 255),
    ),
    st.binary(max_size=1024),
    st.builds(lambda b: b"\x28\xb5\x2f\xfd" + b, st.binary(max_size=512)),
    st.builds(lambda b: b"\x1f\x8b" + b, st.binary(max_size=512)),
)


@given(data=archives)
def test_artifact_meta(workdir: Path, data: bytes) -> None:
    path = workdir / "a.tar.zst"
    path.write_bytes(data)
    check("artifact meta", lambda: read_meta(path), len(data))


# Crashes this tier found (issue 14): each now ends as an ArtifactError.
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"(\xb5/\xfd\x00\x00\x00\x00\x01", id="corrupt-zstd-stream"),  # was ZstdError
        pytest.param(b"\x1f\x8b\x08", id="truncated-gzip-header"),  # was TypeError from tarfile
    ],
)
def test_artifact_meta_regressions(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "a.tar.zst"
    path.write_bytes(data)
    with pytest.raises(NativeLLMError):
        read_meta(path)


def test_artifact_meta_bomb_regression(tmp_path: Path) -> None:
    """A 100 MiB artifact.json of spaces, gzipped to a few hundred KiB: it was read whole (209 MiB
    peak); read_meta now refuses a first member over 1 MiB without reading it."""
    bomb = tar_bytes([(f"b/{META_FILE}", tarfile.REGTYPE, b" " * (100 * MiB))], "gz")
    assert len(bomb) < INPUT_LIMIT
    path = tmp_path / "a.tar.gz"
    path.write_bytes(bomb)
    check("artifact meta bomb", lambda: read_meta(path), len(bomb))


STORE_KEYS = ["id", "plan", "created", "source", "smoke_test", "binaries", "request_id", "schema"]
store_manifests = st.one_of(
    st.builds(
        lambda d: json.dumps(d).encode(),
        json_objects(
            STORE_KEYS,
            {
                "id": st.sampled_from(["b1", "b1x", "", "../x"]),
                "plan": json_objects(["backend"]),
                "smoke_test": json_objects(["passed"]),
            },
        ),
    ),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=256),
)


def store_with(workdir: Path, manifest: bytes) -> Store:
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    (home / "builds" / "b1").mkdir(parents=True)
    (home / "builds" / "b1" / "manifest.json").write_bytes(manifest)
    return Store(Paths(Scope.USER, home, workdir / "config", workdir / "units"))


@given(manifest=store_manifests)
def test_store_manifest(workdir: Path, manifest: bytes) -> None:
    store = store_with(workdir, manifest)
    check("store manifest", lambda: (store.list_builds(), store.find("b")), len(manifest))


# Crashes this tier found (issue 14; KeyError/TypeError/AttributeError/UnicodeDecodeError before the
# fix): each now ends as a NativeLLMError or a build listed as broken.


@pytest.mark.parametrize(
    "manifest",
    [
        b"{}",
        b"[]",
        b'{"id": "b1", "plan": []}',
        b'{"id": null}',
        b'{"id": "b1", "smoke_test": null}',
        b"\x80",
    ],
)
def test_store_manifest_regressions(tmp_path: Path, manifest: bytes) -> None:
    store = store_with(tmp_path, manifest)
    try:
        store.list_builds()
        store.find("b")
    except NativeLLMError:
        pass
