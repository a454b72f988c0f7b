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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-")


def read_model(root: Path, ref: OllamaRef) -> OllamaModel:
    path = ref.manifest(root)
    if not path.is_file():
        raise NotFoundError(
            f"Ollama has no model {ref.display} in {root}",
            "list them with `ollama list` or pass --ollama-dir; import everything with --all",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        layers = list(doc["layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"the Ollama manifest {path} is unreadable: {exc}", "re-pull it with ollama"
        ) from None
    model_layers = [layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA]
    if not model_layers:
        raise ModelError(f"the Ollama manifest {path} has no model layer", "re-pull it with ollama")
    digest = str(model_layers[0].get("digest", ""))
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ModelError(
            f"the Ollama manifest {path} has a bad model digest {digest!r}", "re-pull it with ollama"
        )
    blob = _blob(root, digest)
    if not blob.is_file():
        raise ModelError(f"the blob {blob} of {ref.display} is missing", "re-pull it with ollama")
    metadata: dict[str, Any] = {"ollama_ref": ref.display, "ollama_manifest": str(path)}
    if len(model_layers) > 1:
        metadata["ollama_extra_model_layers"] = len(model_layers) - 1  # adapters/projectors, not used
    for layer in layers:
        kind = str(layer.get("mediaType", "")).removeprefix(MEDIA_PREFIX)
        if kind == "model":
            continue
        lblob = _blob(root, str(layer.get("digest", "")))
        if not lblob.is_file() or lblob.stat().st_size > 1 << 20:
            continue
        text = lblob.read_text(encoding="utf-8", errors="replace")
        if kind == "params":
            try:
                metadata["params"] = json.loads(text)
            except ValueError:
                metadata["params_raw"] = text
        elif kind in TEXT_LAYERS:
            metadata[kind] = text
    return OllamaModel(ref, path, blob, digest.removeprefix("sha256:"), metadata)


def list_refs(root: Path) -> list[OllamaRef]:
    """Every model in the store, from its manifests."""
    base = root / "manifests"
    refs = []
    for tag in sorted(base.glob("*/*/*/*")):
        if tag.is_file():
            registry, namespace, name = tag.parts[-4:-1]
            refs.append(OllamaRef(registry, namespace, name, tag.name))
    return refs
