"""`pack --single-binary`: one `build --single-binary` llama-server for hosts that get a file by scp.

The artifact is `llama-server-<build-id>-<variant>.tar.gz`, next to its `.sha256` file, holding
three members under `<build-id>/`:

- `llama-server`, the one executable (it needs only glibc: static llama, ggml, libstdc++ and libgcc);
- `manifest.json`, the build's manifest (plan, source, compiler, smoke test, CPU flags it needs);
- `SHA256SUMS`, the sha256 of the other two, so `sha256sum -c SHA256SUMS` checks them on a host
  that has coreutils and nothing else.

gzip, not zstd: the target hosts are old and have tar and gzip. The name does not start with
`nativellm-`, so an artifact index never takes it for a `pack` artifact, which `install-artifact`
installs into a store; this one is for hosts without nativellm. Like `pack`, it is reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from nativellm.build.artifacts import (
    PackOptions,
    PackOutcome,
    _epoch,
    artifact_meta,
    pack_key,
    publish_archive,
)
from nativellm.build.elf import beyond_glibc, find_needed
from nativellm.build.store import BuildRecord, Store
from nativellm.errors import ArtifactError, NotFoundError, UsageError
from nativellm.fsutil import sha256_file
from nativellm.paths import Paths

SERVER = "llama-server"


def single_binary_name(build_id: str, variant: str) -> str:
    return f"llama-server-{build_id}-{variant}.tar.gz"


def _checked_server(rec: BuildRecord) -> tuple[Path, tuple[str, ...]]:
    """The build's llama-server, after checking it is a single binary and the one the manifest lists."""
    plan = rec.manifest.get("plan", {})
    if plan.get("cmake_defines", {}).get("BUILD_SHARED_LIBS") != "OFF":
        raise UsageError(
            f"build {rec.id} is not a single binary: its llama-server loads libllama and libggml from lib/",
            "build one with `nativellm build --single-binary`, then pack its id; or pack without --single-binary",
        )
    server = rec.binary(SERVER)
    needed = find_needed(server)
    if needed is None:
        raise ArtifactError(f"{server} is missing or not an ELF executable", "rebuild with --single-binary")
    extra = beyond_glibc(needed)
    if extra:
        raise ArtifactError(
            f"{server} needs {', '.join(extra)} besides glibc", "rebuild with --single-binary"
        )
    listed = rec.manifest.get("binaries", {}).get(f"bin/{SERVER}")
    if listed != sha256_file(server):
        raise ArtifactError(
            f"{server} does not match the sha256 in its manifest",
            f"rebuild it: `nativellm builds rm {rec.id}`",
        )
    return server, needed


def _write(raw: Any, top: str, files: list[tuple[str, bytes, int]], mtime: int) -> None:
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in files:
            ti = tarfile.TarInfo(f"{top}/{name}")
            ti.size, ti.mode, ti.mtime = len(data), mode, mtime
            tar.addfile(ti, io.BytesIO(data))


def pack_single_binary(paths: Paths, opts: PackOptions) -> PackOutcome:
    """Write a `build --single-binary` llama-server, its manifest and SHA256SUMS as one .tar.gz."""
    t0 = time.monotonic()
    if opts.compression not in ("auto", "gz"):
        raise UsageError("--single-binary packs are .tar.gz", "drop --compression, or use --compression gz")
    key = pack_key(opts)
    store = Store(paths)
    rec = store.current() if opts.build_id is None else store.get(opts.build_id)
    if rec is None:
        raise NotFoundError("there is no current build to pack", "pass a build id (`nativellm builds list`)")
    server_path, needed = _checked_server(rec)
    server = server_path.read_bytes()
    manifest = (rec.path / "manifest.json").read_bytes()
    sums = "".join(
        f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in ((SERVER, server), ("manifest.json", manifest))
    )
    meta = artifact_meta(rec.manifest)
    out = opts.output.expanduser() if opts.output else Path.cwd()
    dest = out / single_binary_name(rec.id, meta["variant"]) if out.is_dir() else out
    dest.parent.mkdir(parents=True, exist_ok=True)
    members = [
        (SERVER, server, 0o755),
        ("manifest.json", manifest, 0o644),
        ("SHA256SUMS", sums.encode(), 0o644),
    ]

    def write(raw: BinaryIO) -> None:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
            _write(gz, rec.id, members, _epoch(rec.created))

    digest, changed = publish_archive(dest, write, key)
    single = {
        "file": SERVER,
        "sha256": hashlib.sha256(server).hexdigest(),
        "size": len(server),
        "needed": list(needed),
    }
    meta = {**meta, "single_binary": single}
    signed_by = key.id if key else None
    return PackOutcome(
        dest, digest, dest.stat().st_size, changed, rec.id, meta, time.monotonic() - t0, signed_by
    )
