"""Read an Ollama installation's on-disk store, so its GGUF blobs serve under llama-server as they are.

Layout (Ollama's real one):
  <models>/manifests/<registry>/<namespace>/<name>/<tag>   JSON manifest (docker v2 style)
  <models>/blobs/sha256-<hex>                               content-addressed layers
The layer of media type application/vnd.ollama.image.model is the GGUF; the
template, params, system and license layers ride along as metadata.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativellm import validate
from nativellm.errors import ModelError, NotFoundError, UsageError

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MEDIA_PREFIX = "application/vnd.ollama.image."
MODEL_MEDIA = MEDIA_PREFIX + "model"
TEXT_LAYERS = ("template", "system", "license")


@dataclass(frozen=True)
class OllamaRef:
    """`[registry/][namespace/]name[:tag]`, as `ollama pull` takes it."""

    registry: str
    namespace: str
    name: str
    tag: str

    @classmethod
    def parse(cls, ref: str) -> OllamaRef:
        try:
            validate.no_control(ref, "the Ollama model ref")
        except UsageError as exc:
            raise UsageError(
                f"invalid Ollama model ref: {exc.message}", "write NAME[:TAG], e.g. llama3.2:3b"
            ) from None
        body, _, tag = ref.partition(":")
        parts = body.split("/")
        if not body or not all(parts) or len(parts) > 3 or any(p in (".", "..") for p in [*parts, tag]):
            raise UsageError(
                f"cannot read the Ollama model name {ref!r}", "write NAME[:TAG], e.g. llama3.2:3b"
            )
        registry = parts[-3] if len(parts) == 3 else DEFAULT_REGISTRY
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        return cls(registry, namespace, parts[-1], tag or "latest")

    def manifest(self, root: Path) -> Path:
        return root / "manifests" / self.registry / self.namespace / self.name / self.tag

    @property
    def display(self) -> str:
        short = self.name if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/{self.name}"
        return f"{short}:{self.tag}"

    @property
    def default_model_name(self) -> str:
        """A registry-safe name: llama3.2:3b -> llama3.2-3b."""
        base = self.name if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}-{self.name}"
        raw = base if self.tag == "latest" else f"{base}-{self.tag}"
        return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:64]


@dataclass(frozen=True)
class OllamaModel:
    ref: OllamaRef
    manifest: Path
    blob: Path
    digest: str  # hex sha256 of the GGUF blob, from the manifest
    metadata: dict[str, Any]


def find_ollama_dir(explicit: Path | None = None) -> Path | None:
    """Where Ollama keeps models: --ollama-dir, $OLLAMA_MODELS, ~/.ollama/models, the system install."""
    candidates = [explicit] if explicit else []
    if not explicit:
        env = os.environ.get("OLLAMA_MODELS")
        if env:
            candidates.append(Path(env))
        candidates += [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    for c in candidates:
        if c is not None and (c / "manifests").is_dir():
            return c
    return None


DIGEST_RE = re.compile(r"sha256[:-](?P<hex>[0-9a-f]{64})")
TEXT_CAP = 1 << 20  # template/params/system/license layers larger than this are not read


def _blob(root: Path, digest: str, manifest: Path) -> Path:
    """The blob file of `digest`, refused unless it is a regular file inside `<root>/blobs/`.

    The digest comes from the manifest, so it is untrusted: only `sha256:<64 hex>` (or Ollama's
    `sha256-<64 hex>` file spelling) is accepted, and the blob's real path (symlinks resolved) must stay
    inside the blobs directory; otherwise a manifest could have any readable file copied into the index.
    """
    m = DIGEST_RE.fullmatch(digest)
    if m is None:
        raise ModelError(
            f"the Ollama manifest {manifest} has a bad layer digest {digest[:80]!r}; nothing was imported",
            "a digest is sha256:<64 hex digits>; re-pull the model with ollama",
        )
    blobs = root / "blobs"
    path = blobs / f"sha256-{m['hex']}"
    real = Path(os.path.realpath(path))
    if real.parent != Path(os.path.realpath(blobs)):
        raise ModelError(
            f"the Ollama blob {path} points outside {blobs}; nothing was imported",
            "blobs must be files in the Ollama blobs directory; re-pull the model with ollama",
        )
    return path


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_text_layer(path: Path) -> str | None:
    """At most TEXT_CAP bytes of a small metadata layer; None if it is larger, missing or not a file."""
    try:  # the real path, which _blob checked lies in the blobs directory; never a FIFO's open() wait
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > TEXT_CAP:
            return None
        data = f.read(TEXT_CAP + 1)
    if len(data) > TEXT_CAP:
        return None
    return data.decode("utf-8", errors="replace")


def read_model(root: Path, ref: OllamaRef) -> OllamaModel:
    path = ref.manifest(root)
    if not _is_regular(path):
        raise NotFoundError(
            f"Ollama has no model {ref.display} in {root}",
            "list them with `ollama list` or pass --ollama-dir; import everything with --all",
        )
    try:
        with path.open("rb") as f:
            raw = f.read(TEXT_CAP + 1)
        if len(raw) > TEXT_CAP:
            raise ValueError(f"larger than {TEXT_CAP} bytes")
        doc = json.loads(raw.decode("utf-8"))
        layers = [dict(layer) for layer in doc["layers"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(
            f"the Ollama manifest {path} is unreadable: {exc}", "re-pull it with ollama"
        ) from None
    model_layers = [layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA]
    if not model_layers:
        raise ModelError(f"the Ollama manifest {path} has no model layer", "re-pull it with ollama")
    # Every digest is checked before any blob is read, the model's and the metadata layers' alike.
    blobs = [_blob(root, str(layer.get("digest", "")), path) for layer in layers]
    blob = blobs[layers.index(model_layers[0])]
    match = DIGEST_RE.fullmatch(str(model_layers[0].get("digest", "")))
    assert match is not None  # _blob checked it
    if not _is_regular(blob):
        raise ModelError(
            f"the blob {blob} of {ref.display} is missing or not a regular file", "re-pull it with ollama"
        )
    metadata: dict[str, Any] = {"ollama_ref": ref.display, "ollama_manifest": str(path)}
    if len(model_layers) > 1:
        metadata["ollama_extra_model_layers"] = len(model_layers) - 1  # adapters/projectors, not used
    for layer, lblob in zip(layers, blobs, strict=True):
        kind = str(layer.get("mediaType", "")).removeprefix(MEDIA_PREFIX)
        if kind not in (*TEXT_LAYERS, "params"):
            continue
        text = _read_text_layer(lblob)
        if text is None:
            continue
        if kind == "params":
            try:
                metadata["params"] = json.loads(text)
            except ValueError:
                metadata["params_raw"] = text
        else:
            metadata[kind] = text
    return OllamaModel(ref, path, blob, match["hex"], metadata)


def list_refs(root: Path) -> list[OllamaRef]:
    """Every model in the store, from its manifests."""
    base = root / "manifests"
    refs = []
    for tag in sorted(base.glob("*/*/*/*")):
        if tag.is_file():
            registry, namespace, name = tag.parts[-4:-1]
            refs.append(OllamaRef(registry, namespace, name, tag.name))
    return refs
