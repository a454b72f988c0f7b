"""Commands: artifacts (pack, install-artifact, fingerprint, artifacts index), upgrade and RPC workers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nativellm.cli.app import STATE, JsonOpt, SystemOpt, _begin, _gpu_indices, _scope, app
from nativellm.cli.build_cmds import ProfileOpt
from nativellm.cli.instance_cmds import IBuild, IGpus, INoSystemd, instance_app
from nativellm.cli.output import ConsoleReporter, emit_json, envelope, err, error_envelope, out
from nativellm.errors import UsageError
from nativellm.paths import resolve_paths

# ---- artifact commands (issue 5)
artifacts_app = typer.Typer(help="Artifact indexes for fleets: build once, install everywhere.",
                            no_args_is_help=True)  # fmt: skip
app.add_typer(artifacts_app, name="artifacts")

SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        help="ed25519 private key to sign with (default: $NATIVELLM_SIGNING_KEY; neither: unsigned).",
    ),
]
InsecureUnsignedOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-unsigned",
        help="Install without a signature from a trusted key (warns; plain http is still refused).",
    ),
]
UNSIGNED_NOTE = (
    "unsigned: hosts refuse it unless they pass --insecure-unsigned; sign with --sign-key KEY "
    "(`nativellm artifacts keygen KEY`)"
)


@app.command("pack")
def pack_cmd(
    build_id: Annotated[str | None, typer.Argument(help="Build to pack (default: current).")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Artifact file, or a directory for the default name."),
    ] = None,
    compression: Annotated[
        str, typer.Option("--compression", help="auto (zst if zstandard is installed, else gz), zst or gz.")
    ] = "auto",
    single_binary: Annotated[
        bool,
        typer.Option(
            "--single-binary",
            help="Pack only llama-server of a `build --single-binary` build, with its manifest and SHA256SUMS.",
        ),
    ] = False,
    sign_key: SignKeyOpt = None,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Pack an installed build into nativellm-<id>-<variant>.tar.zst and print its sha256."""
    from nativellm.build.artifacts import PackOptions, pack
    from nativellm.build.single import pack_single_binary

    _begin("pack", json_out)
    packer = pack_single_binary if single_binary else pack
    res = packer(resolve_paths(_scope(system)), PackOptions(build_id, output, compression, sign_key))
    data = {"build_id": res.build_id, "file": str(res.path), "sha256": res.sha256, "size": res.size,
            "variant": res.meta["variant"], "fingerprint": res.meta["fingerprint"],
            "requirements": res.meta["requirements"], "duration_s": round(res.duration_s, 2),
            "signed_by": res.signed_by}  # fmt: skip
    if single_binary:
        data["single_binary"] = res.meta["single_binary"]
    if json_out:
        emit_json(envelope("pack", res.changed, data))
        return
    verb = "packed" if res.changed else "unchanged"
    out.print(f"{verb} {res.build_id} -> {res.path} ({res.size / 1e6:.1f} MB)")
    out.print(f"needs: {res.meta['requirements_text']}")
    if single_binary:
        single = res.meta["single_binary"]
        out.print(f"llama-server ({single['size'] / 1e6:.1f} MB) links only {', '.join(single['needed'])}")
    out.print(f"sha256 {res.sha256}  {res.path.name}")
    _say_signature(res.signed_by, res.path)


def _say_signature(signed_by: str | None, path: Path) -> None:
    """Which key signed a written archive or index, or the note that hosts will refuse it."""
    if signed_by:
        out.print(f"signed by {signed_by} -> {path.name}.sig")
    else:
        err.print(f"note: {UNSIGNED_NOTE}")


@app.command("install-artifact")
def install_artifact_cmd(
    location: Annotated[str, typer.Argument(help="Artifact file or http(s) URL.", metavar="FILE_OR_URL")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 (default: FILE_OR_URL.sha256).")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="Check requirements against this HostProfile instead of this host."),
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="Make it current after the smoke test.")
    ] = True,
    insecure_unsigned: InsecureUnsignedOpt = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify, check the requirements, unpack, smoke-test and install a packed build."""
    from nativellm.build.artifacts import InstallOptions, install_artifact

    _begin("install-artifact", json_out)
    res = install_artifact(
        resolve_paths(_scope(system)),
        InstallOptions(location, sha256, profile, activate, insecure_unsigned=insecure_unsigned),
        ConsoleReporter(quiet=json_out),
    )
    data = {"build_id": res.build_id, "installed": res.installed, "activated": res.activated,
            "sha256": res.sha256, "requirements": res.requirements.to_dict(), "smoke_test": res.smoke_test,
            "path": str(res.record.path), "duration_s": round(res.duration_s, 2),
            "notes": list(res.notes), "signed_by": res.signed_by}  # fmt: skip
    if json_out:
        emit_json(envelope("install-artifact", res.changed, data))
        return
    for note in res.notes:
        out.print(note)
    if res.activated:
        out.print(f"current -> {res.build_id}")


@app.command("fingerprint")
def fingerprint_cmd(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """Print this host's hardware-class key: hosts with equal keys can share an artifact."""
    from nativellm.build.fingerprint import fingerprint
    from nativellm.hardware import detect_host
    from nativellm.hardware.profile import load_profile

    _begin("fingerprint", json_out)
    fp = fingerprint(load_profile(profile) if profile else detect_host())
    if json_out:
        emit_json(fp.to_dict())
        return
    out.print(fp.key)


@artifacts_app.command("index")
def artifacts_index(
    directory: Annotated[Path, typer.Argument(help="Directory holding nativellm-*.tar.zst/.tar.gz files.")],
    sign_key: SignKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write DIR/index.json: {fingerprint, version} -> {file, sha256, size}, for a fleet to read."""
    from nativellm.build.index import write_index

    _begin("artifacts index", json_out)
    res = write_index(directory, sign_key)
    data = {"index": str(res.path), "artifacts": [dict(e) for e in res.entries], "signed_by": res.signed_by}
    if json_out:
        emit_json(envelope("artifacts index", res.changed, data))
        return
    out.print(f"{'wrote' if res.changed else 'unchanged'} {res.path} ({len(res.entries)} artifact(s))")
    for e in res.entries:
        out.print(f"  {e['fingerprint']}  {e['version']}  {e['file']}")
    _say_signature(res.signed_by, res.path)


@artifacts_app.command("keygen")
def artifacts_keygen(
    path: Annotated[Path, typer.Argument(help="Private key file to create (PATH.pub is written beside it).")],
    comment: Annotated[str, typer.Option("--comment", help="Comment on the .pub line.")] = "nativellm",
    json_out: JsonOpt = False,
) -> None:
    """Create an ed25519 signing key: PATH (private, 0600) and PATH.pub for hosts' trusted-keys."""
    from nativellm.build.signing import generate_key

    _begin("artifacts keygen", json_out)
    res = generate_key(path, comment)
    data = {"private_key": str(res.private), "public_key": str(res.public), "key_id": res.key_id,
            "public_line": res.public_line}  # fmt: skip
    if json_out:
        emit_json(envelope("artifacts keygen", True, data))
        return
    out.print(f"wrote {res.private} (private, 0600) and {res.public}")
    out.print(f"key id {res.key_id}")
    out.print("hosts trust it with this line in /etc/nativellm/trusted-keys (or <config>/trusted-keys):")
    out.print(escape(res.public_line))


# ---- end artifact commands


# ---- fleet commands (issue 5)
@app.command("upgrade")
def upgrade_cmd(
    ref: Annotated[str | None, typer.Option("--ref", help="llama.cpp git tag or commit to build.")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="Git URL to clone --ref from.")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="Build from a local llama.cpp tree.")
    ] = None,
    tarball: Annotated[
        str | None, typer.Option("--tarball", help="Build from a tarball (path or URL).")
    ] = None,
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="Install this packed build instead of compiling.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected sha256 of --tarball/--artifact.")
    ] = None,
    instances: Annotated[
        str, typer.Option("--instances", help="all, or NAME,... of the instances to move.")
    ] = "all",
    canary: Annotated[
        str | None, typer.Option("--canary", help="Move this one instance only, then stop.")
    ] = None,
    insecure_unsigned: InsecureUnsignedOpt = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Build or install a new llama.cpp beside the old one, then restart the instances that follow
    `current` one at a time, each checked with /health and a real completion; any failure puts
    the old build back and restarts the affected instances on it."""
    from nativellm.build.options import BuildOptions
    from nativellm.build.source import SourceRequest, default_repo
    from nativellm.ops.upgrade import UpgradeOptions, raise_if_rolled_back, rollback_error, upgrade
    from nativellm.serve.systemd import Systemd

    _begin("upgrade", json_out)
    if sum(x is not None for x in (source, tarball, ref, artifact)) > 1:
        raise UsageError(
            "--ref, --source, --tarball and --artifact exclude each other", "give one new version"
        )
    if sha256 and not (tarball or artifact):
        raise UsageError("--sha256 only applies to --tarball or --artifact", "drop --sha256")
    if insecure_unsigned and artifact is None:
        raise UsageError("--insecure-unsigned only applies to --artifact", "drop --insecure-unsigned")
    build_opts = None
    if artifact is None and (source or tarball or ref):
        build_opts = BuildOptions(
            source=SourceRequest(
                directory=source, tarball=tarball, sha256=sha256, ref=ref, repo=repo or default_repo()
            )
        )
    names = None if instances == "all" else tuple(n.strip() for n in instances.split(",") if n.strip())
    if canary is not None and instances != "all":
        raise UsageError("--canary and --instances exclude each other", "give one of them")
    scope = _scope(system)
    res = upgrade(
        resolve_paths(scope),
        UpgradeOptions(build_opts, artifact, sha256 if artifact else None, names, canary, insecure_unsigned),
        Systemd(scope),
        ConsoleReporter(quiet=json_out),
    )
    if json_out and res.rolled_back:
        failure = rollback_error(res)
        # One document: the error envelope plus what happened; _fail then only writes stderr.
        emit_json(error_envelope("upgrade", failure) | {"changed": True, "data": res.to_dict()})
        STATE.json = False
        raise failure
    if json_out:
        emit_json(envelope("upgrade", res.changed, res.to_dict()))
    else:
        for s in res.steps:
            out.print(
                escape(f"{s.name}: {s.result} in {s.seconds:.1f}s" + (f" ({s.detail})" if s.detail else ""))
            )
        for name, why in res.skipped:
            out.print(escape(f"{name}: skipped ({why})"))
        if not res.rolled_back:
            out.print(escape(f"current: {res.previous} -> {res.current}" if res.previous != res.current
                             else f"current: {res.current} (unchanged)"))  # fmt: skip
        for note in res.notes:
            out.print(escape(note))
    raise_if_rolled_back(res)


RpcHost = Annotated[str, typer.Option("--host", help="Bind address (default 127.0.0.1; see the warning).")]


@instance_app.command("add-rpc-worker")
def add_rpc_worker(
    name: Annotated[str, typer.Argument(help="Worker name, e.g. gpu1.")],
    port: Annotated[int, typer.Option("--port", help="Port rpc-server listens on.")],
    host: RpcHost = "127.0.0.1",
    allow: Annotated[
        str | None, typer.Option("--allow", help="Peers (heads) that may connect: ADDR or CIDR,...")
    ] = None,
    gpus: IGpus = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of the worker.")] = None,
    build: IBuild = None,
    start: Annotated[bool, typer.Option("--start", help="Start it and wait until it listens.")] = False,
    no_systemd: INoSystemd = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a llama.cpp RPC worker (rpc-server) as llama-rpc@NAME.service; needs a `build --rpc`."""
    from nativellm.serve.rpc import RpcWorkers, RpcWorkerSpec
    from nativellm.serve.systemd import Systemd

    _begin("instance add-rpc-worker", json_out)
    gpu_list = _gpu_indices(gpus)
    peers = tuple(p.strip() for p in (allow or "").split(",") if p.strip())
    spec = RpcWorkerSpec(name, port, host, gpu_list, peers, threads, build or "current")
    scope = _scope(system)
    res = RpcWorkers(resolve_paths(scope), None if no_systemd else Systemd(scope)).add(spec, start=start)
    if json_out:
        data = {"name": res.name, "message": res.message, "files": list(res.files), "started": res.started,
                "endpoint": spec.endpoint, "warnings": [res.warning] if res.warning else []}  # fmt: skip
        emit_json(envelope("instance add-rpc-worker", res.changed, data))
    else:
        out.print(escape(res.message))
    if res.warning:
        err.print(f"[yellow]warning:[/yellow] {escape(res.warning)}")


@instance_app.command("rm-rpc-worker")
def rm_rpc_worker(
    name: Annotated[str, typer.Argument(help="Worker name.")],
    no_systemd: INoSystemd = False,
    system: SystemOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Stop an RPC worker and remove its spec and drop-in."""
    from nativellm.serve.rpc import RpcWorkers
    from nativellm.serve.systemd import Systemd

    _begin("instance rm-rpc-worker", json_out)
    scope = _scope(system)
    res = RpcWorkers(resolve_paths(scope), None if no_systemd else Systemd(scope)).remove(name)
    if json_out:
        emit_json(envelope("instance rm-rpc-worker", True, {"name": name, "files": list(res.files)}))
    else:
        out.print(escape(res.message))


# ---- end fleet commands
