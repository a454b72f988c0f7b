"""Fuzz the Ollama manifest parser (nativellm model import --ollama): manifests and blobs from disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nativellm.errors import NativeLLMError
from nativellm.models.ollama import MEDIA_PREFIX, OllamaRef, read_model

from .conftest import check
from .strategies import json_objects, json_values

pytestmark = pytest.mark.fuzz

DIGEST = "sha256:" + "ab" * 32
MEDIA = [MEDIA_PREFIX + k for k in ("model", "params", "template", "system", "license", "adapter")]
layer = json_objects(
    ["mediaType", "digest", "size"],
    {
        "mediaType": st.sampled_from(MEDIA),
        "digest": st.one_of(st.just(DIGEST), st.sampled_from(["sha256:", "sha256:../x", "", "a:b:c"])),
    },
)
manifests = st.one_of(
    st.builds(
        lambda d: json.dumps(d).encode(),
        json_objects(["layers", "config", "schemaVersion"], {"layers": st.lists(layer, max_size=5)}),
    ),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=512),
)
blobs = st.one_of(st.binary(max_size=256), st.builds(lambda v: json.dumps(v).encode(), json_values))


def write_manifest(workdir: Path, manifest: bytes, blob: bytes) -> tuple[Path, OllamaRef]:
    root = workdir / "ollama"
    shutil.rmtree(root, ignore_errors=True)
    ref = OllamaRef.parse("m:latest")
    path = ref.manifest(root)
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    (root / "blobs").mkdir()
    (root / "blobs" / DIGEST.replace(":", "-")).write_bytes(blob)
    return root, ref


# Crashes this tier found (issue 14): each now ends as a ModelError.
@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(b'{"layers": [null]}', id="layer-not-an-object"),  # was AttributeError
        pytest.param(
            json.dumps(
                {
                    "layers": [
                        {"mediaType": MEDIA[0], "digest": DIGEST},
                        {"mediaType": MEDIA[1], "digest": "a" * 300},
                    ]
                }
            ).encode(),
            id="digest-too-long-for-a-file-name",  # was OSError (ENAMETOOLONG)
        ),
    ],
)
def test_ollama_manifest_regressions(tmp_path: Path, manifest: bytes) -> None:
    root, ref = write_manifest(tmp_path, manifest, b"")
    with pytest.raises(NativeLLMError):
        read_model(root, ref)


@given(manifest=manifests, blob=blobs)
def test_ollama_manifest(workdir: Path, manifest: bytes, blob: bytes) -> None:
    root, ref = write_manifest(workdir, manifest, blob)
    check("ollama manifest", lambda: read_model(root, ref), len(manifest) + len(blob))


@given(text=st.text(max_size=200))
def test_ollama_ref(text: str) -> None:
    check("ollama ref", lambda: OllamaRef.parse(text), len(text.encode("utf-8", "surrogatepass")))


def test_ollama_layer_digest_stays_in_blobs(tmp_path: Path) -> None:
    """Found while fuzzing: non-model layer digests are not checked like the model digest is."""
    secret = tmp_path / "secret"
    secret.write_text("outside the store")
    layers = [
        {"mediaType": MEDIA[0], "digest": DIGEST},
        {"mediaType": MEDIA_PREFIX + "template", "digest": "../../secret"},
    ]
    root, ref = write_manifest(tmp_path, json.dumps({"layers": layers}).encode(), b"")
    try:
        model = read_model(root, ref)
    except NativeLLMError:
        return
    assert "outside the store" not in str(model.metadata)
