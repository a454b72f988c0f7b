# mypy: disable-error-code="func-returns-value"
"""The bad-input table: (id, argv, setup, expected exit code, needle of the `error:` line).

argv items are formatted with the case's `ctx.vars` after its setup ran ({inp}, {home}, {outside} and
whatever the setup adds). Expected codes are the README's "Exit codes" table (errors.py):
2 usage, 3 not found, 4 plan, 5 source, 6 build, 7 smoke test, 8 store, 9 model, 10 instance,
11 toolchain, 12 resource, 13 download, 14 artifact, 15 doctor, 16 upgrade.

A case marked `xfail` fails today because of a finding of issue 14 that is fixed on another branch; the
reason names it, and once the fix is merged the case XPASSes (a failure under xfail_strict) and the
marker goes.
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.badinput.harness import (
    GGUF_ARR,
    GGUF_STR,
    GGUF_U8,
    GGUF_U32,
    LLAMA_KV,
    Ctx,
    add_instance,
    cut,
    fake_build,
    gguf_bytes,
    gstr,
    kv,
    redirect_loop,
    register_model,
    reply,
    sha256_of,
    tar_bytes,
    tdir,
    tensor_info,
    tfile,
    tlink,
    tspecial,
    valid_gguf,
)

Setup = Callable[[Ctx], object]  # setups may return what they made; it is ignored


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int
    needle: str | tuple[str, ...]  # the error line contains one of these (case-insensitive)
    setup: Setup = lambda ctx: None
    xfail: str | None = None
    timeout: float = 60
    may_keep: tuple[str, ...] = field(default=())  # documented leftovers, e.g. a resumable "*.part"
    not_in: tuple[str, ...] = field(default=())  # words the error line must not say (a false claim)

    def matches(self, line: str) -> bool:
        needles = (self.needle,) if isinstance(self.needle, str) else self.needle
        return any(n.lower() in line.lower() for n in needles)


CASES: list[Case] = []


def case(
    id: str,
    argv: str | tuple[str, ...],
    code: int,
    needle: str | tuple[str, ...],
    *setups: Setup,
    **kw: object,
) -> None:
    def setup(ctx: Ctx) -> None:
        for s in setups:
            s(ctx)

    args = tuple(argv.split()) if isinstance(argv, str) else argv
    assert id not in {c.id for c in CASES}, id
    CASES.append(Case(id, args, code, needle, setup, **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ setup pieces


def build(ctx: Ctx) -> None:
    fake_build(ctx)


def two_builds(ctx: Ctx) -> None:
    fake_build(ctx, "cpu-0123456789ab")
    fake_build(ctx, "cpu-abcdef012345", current=False)


def model(ctx: Ctx) -> None:
    register_model(ctx)


def instance(ctx: Ctx) -> None:
    fake_build(ctx)
    register_model(ctx)
    add_instance(ctx)


def write(var: str, content: bytes | str, name: str | None = None) -> Setup:
    """An input file {var} under in/."""

    def setup(ctx: Ctx) -> None:
        p = ctx.inp / (name or var)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        ctx.vars[var] = str(p)

    return setup


def gguf(content: bytes, name: str = "bad.gguf") -> Setup:
    return write("gguf", content, name)


def serve(var: str, behave: Callable[..., None], tls: bool = False, path: str = "/model.gguf") -> Setup:
    def setup(ctx: Ctx) -> None:
        ctx.vars[var] = ctx.serve(behave, tls) + path

    return setup


def spec_text(text: str, name: str = "q4") -> Setup:
    """Overwrite an instance's TOML spec by hand (after `instance`)."""

    def setup(ctx: Ctx) -> None:
        p = ctx.config / "instances" / f"{name}.toml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    return setup


def index_text(text: str) -> Setup:
    def setup(ctx: Ctx) -> None:
        p = ctx.data / "models" / "index.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    return setup


def marker(name: str) -> Setup:
    """A path under outside/ that a hostile input aims at: it must not appear."""

    def setup(ctx: Ctx) -> None:
        ctx.markers.append(ctx.outside / name)
        ctx.vars[f"marker_{name}"] = str(ctx.outside / name)

    return setup


SHA_A = "ab" * 32
TOML_OK = 'schema = "nativellm.instance/1"\nname = "q4"\nmodel = "m"\nport = 18080\n'

# =============================================================================== global and parse
case("unknown-command", "frobnicate", 2, "No such command")
case("unknown-option", "detect --bogus", 2, "No such option")
case("extra-argument", "detect extra", 2, "unexpected extra argument")
case("non-utf8-argument", ("model", "inspect", "m\udcff"), 2, ("utf-8", "invalid model name", "not valid"))  # fmt: skip
case(
    "model-add-non-utf8-path",
    ("model", "add", "{inp}/m\udcff.gguf"),
    2,
    ("utf-8", "invalid", "path"),
    lambda ctx: valid_gguf(ctx.inp / "m\udcff.gguf"),
)
case("non-utf8-instance-name", ("instance", "show", "q\udcfe4"), 2, ("utf-8", "invalid instance name"))
case("nul-byte-free-name", ("instance", "show", "q4\x01"), 2, "invalid instance name")

# ============================================================================================ plan
PROFILE_BAD = "{not json"
case("plan-unknown-backend", "plan --backend tpu", 2, "unknown backend")
case("plan-missing-profile", "plan --profile {inp}/nope.json", 3, "does not exist")
case("plan-malformed-profile", "plan --profile {p}", 2, "profile", write("p", PROFILE_BAD))
case("plan-profile-is-array", "plan --profile {p}", 2, "profile", write("p", "[1, 2]"))
case("plan-profile-wrong-types", "plan --profile {p}", 2, "profile",
     write("p", json.dumps({"schema": "nativellm.host/1", "cpu": "fast"})))  # fmt: skip
case("plan-profile-is-directory", "plan --profile {inp}", 3, "directory")
case("plan-define-without-value", "plan --define GGML_FOO", 2, "NAME=VALUE")
case(
    "plan-native-and-baseline", "plan --native --baseline", 2, ("conflict", "together", "one of", "--native")
)
case("plan-missing-source", "plan --source {inp}/nowhere", 3, "does not exist")
case(
    "plan-source-not-llama",
    "plan --source {inp}",
    5,
    "not a llama.cpp",
)
case("plan-cuda-without-gpu", "plan --backend cuda", 4, ("cuda", "nvidia", "gpu"))
case("plan-hip-without-gpu", "plan --backend hip", 4, ("hip", "rocm", "amd", "gpu"))
case("plan-metal-on-linux", "plan --backend metal", 4, ("metal", "apple", "macos"))
case("fingerprint-missing-profile", "fingerprint --profile {inp}/nope.json", 3, "does not exist")
case("fingerprint-malformed-profile", "fingerprint --profile {p}", 2, "profile", write("p", PROFILE_BAD))

# =========================================================================================== build


def llama_tree(ctx: Ctx, name: str = "llama.cpp", cmake: str = "") -> None:
    """A tree that passes the llama.cpp check (CMakeLists.txt and ggml/) but fails to configure or
    compile: a failed build."""
    tree = ctx.inp / name
    (tree / "ggml").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(
        cmake
        or "cmake_minimum_required(VERSION 3.14)\nproject(llama.cpp C CXX)\n"
        "foreach(t llama-server llama-bench llama-cli rpc-server llama-quantize llama-gguf-split)\n"
        "  add_executable(${t} broken.cpp)\nendforeach()\n"
    )
    (tree / "broken.cpp").write_text("int main() { this is not C++; }\n")
    ctx.vars["tree"] = str(tree)


def tarball(var: str, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Setup:
    def setup(ctx: Ctx) -> None:
        p = ctx.inp / f"{var}.tar.gz"
        p.write_bytes(tar_bytes(members, mode))
        ctx.vars[var] = str(p)
        ctx.vars[f"{var}_sha"] = sha256_of(p)

    return setup


def link_chain(
    ctx: Ctx, top: str, into: tuple[str, ...], name: str
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Finding 1: links that each stay inside when checked against an empty directory; on disk the first
    points back up to <top>, so the second, made through it, leads out, and a file lands in outside/NAME.
    `into` is the extraction directory relative to the sandbox (its last part is a random name)."""
    ctx.markers.append(ctx.outside / name)
    up = len(into) + 1  # from <into>/<top> up to the sandbox root
    n = up + 2
    deep = "/".join(f"d{i}" for i in range(n))
    return [
        tlink(f"{top}/{deep}/back", "../" * n),
        tlink(f"{top}/{deep}/back/esc", "../" * up + "outside"),
        tfile(f"{top}/{deep}/back/esc/{name}", b"owned\n"),
    ]


def escape_tar(ctx: Ctx) -> None:
    members = [*TREE, *link_chain(ctx, "llama.cpp", ("home", "data", "sources", ".extract-X"), "pwned")]
    tarball("t", members)(ctx)


TREE = [tdir("llama.cpp"), tdir("llama.cpp/ggml"), tfile("llama.cpp/CMakeLists.txt", b"project(x)\n")]


def big_zero_member() -> tuple[tarfile.TarInfo, bytes]:
    return tfile("llama.cpp/zeros", b"\0" * (64 << 20))


case("build-missing-source", "build --source {inp}/nowhere", 3, "does not exist")
case("build-source-is-file", "build --source {f}", 3, ("does not exist", "not a directory"), write("f", "x"))
case("build-source-not-llama", "build --source {inp}", 5, "not a llama.cpp")
case("build-failed-compile", "build --source {tree} --backend cpu --no-ui --jobs 1", 6,
     "compile", llama_tree, timeout=300, may_keep=("home/data/work/*",))  # fmt: skip
case("build-failed-configure", "build --source {tree} --backend cpu --no-ui --jobs 1", 6,
     ("configure", "cmake", "build"), lambda ctx: llama_tree(ctx, cmake="message(FATAL_ERROR \"no\")\n"),
     timeout=300, may_keep=("home/data/work/*",))  # fmt: skip
case("build-jobs-zero", "build --jobs 0", 2, "--jobs")
case("build-unknown-backend", "build --backend tpu", 2, "unknown backend")
case("build-cuda-without-gpu", "build --backend cuda --dry-run", 4, ("cuda", "nvidia", "gpu"))
case("build-define-without-value", "build --define NOPE --dry-run", 2, "NAME=VALUE")
case("build-missing-profile", "build --profile {inp}/nope.json", 3, "does not exist")
case("build-missing-tarball", "build --tarball {inp}/nope.tar.gz", 3, "does not exist")
case("build-tarball-sha256-not-hex", "build --tarball {t} --sha256 xyz", 2, "sha256", tarball("t", TREE))  # fmt: skip
case(
    "build-tarball-wrong-sha256",
    ("build", "--tarball", "{t}", "--sha256", SHA_A),
    5,
    "sha256",
    tarball("t", TREE),
)
case("build-tarball-not-a-tar", "build --tarball {t} --sha256 {t_sha}", 5, "not a readable tarball",
     lambda ctx: (write("t", b"not a tarball at all")(ctx), ctx.vars.update(t_sha=sha256_of(ctx.inp / "t"))))  # fmt: skip
case("build-tarball-truncated", "build --tarball {t} --sha256 {t_sha}", 5, "not a readable tarball",
     lambda ctx: (tarball("t", TREE)(ctx), _truncate(ctx, "t")))  # fmt: skip
case("build-tarball-not-llama", "build --tarball {t} --sha256 {t_sha}", 5, "not a llama.cpp",
     tarball("t", [tdir("x"), tfile("x/README", b"hi")]))  # fmt: skip
case("build-tarball-dotdot-member", "build --tarball {t} --sha256 {t_sha}", 5, "unsafe",
     tarball("t", [*TREE, tfile("llama.cpp/../../../../outside-dotdot", b"x")]))  # fmt: skip
case("build-tarball-absolute-member", "build --tarball {t} --sha256 {t_sha}", 5, "unsafe",
     lambda ctx: (marker("abs")(ctx), tarball("t", [*TREE, tfile(ctx.vars["marker_abs"], b"x")])(ctx)))  # fmt: skip
case("build-tarball-absolute-symlink", "build --tarball {t} --sha256 {t_sha}", 5, "unsafe",
     lambda ctx: tarball("t", [*TREE, tlink("llama.cpp/out", str(ctx.outside))])(ctx))  # fmt: skip
case("build-tarball-relative-symlink-out", "build --tarball {t} --sha256 {t_sha}", 5, "unsafe",
     tarball("t", [*TREE, tlink("llama.cpp/out", "../../../../../../../../../../../../tmp")]))  # fmt: skip
case("build-tarball-hardlink-out", "build --tarball {t} --sha256 {t_sha}", 5, "unsafe",
     tarball("t", [*TREE, tlink("llama.cpp/passwd", "/etc/passwd", hard=True)]))  # fmt: skip
case("build-tarball-symlink-chain", "build --tarball {t} --sha256 {t_sha}", 5, ("unsafe", "outside", "link"),
     escape_tar)  # fmt: skip
case("build-tarball-device-node", "build --tarball {t} --sha256 {t_sha}", 5, ("unsafe", "device", "special"),
     tarball("t", [*TREE, tspecial("llama.cpp/null", tarfile.CHRTYPE)]))  # fmt: skip
case("build-tarball-fifo", "build --tarball {t} --sha256 {t_sha}", 5, ("unsafe", "fifo", "special"),
     tarball("t", [*TREE, tspecial("llama.cpp/pipe", tarfile.FIFOTYPE)]))  # fmt: skip
case("build-tarball-setuid", "build --tarball {t} --sha256 {t_sha}", 5, ("unsafe", "setuid", "mode"),
     tarball("t", [*TREE, tfile("llama.cpp/suid", b"#!/bin/sh\n", mode=0o4755)]))  # fmt: skip
case("build-tarball-bomb", "build --tarball {t} --sha256 {t_sha}", 5, ("too large", "ratio", "size", "unsafe"),
     tarball("t", [*TREE, big_zero_member()]), timeout=120)  # fmt: skip
case("build-tarball-url-404", "build --tarball {u} --sha256 " + SHA_A, 3, "404",
     serve("u", reply(404, b"gone"), path="/llama.tar.gz"))  # fmt: skip
case("build-tarball-url-redirect-loop", "build --tarball {u} --sha256 " + SHA_A, 13, "redirect",
     serve("u", redirect_loop, path="/llama.tar.gz"))  # fmt: skip
case("build-bad-git-ref", ("build", "--ref", "b1; rm -rf /"), 5, "not a valid git ref")
case("build-git-repo-option-injection", ("build", "--ref", "b1", "--repo", "--upload-pack=touch {marker_git}"), 5,
     ("repo", "option", "-"), marker("git"), timeout=60)  # fmt: skip
case("build-unreachable-repo", ("build", "--ref", "b1", "--repo", "{inp}/no-such-repo"), 5, ("fetch", "b1"))
case(
    "build-from-index-missing", "build --from-index {inp}/nowhere", 3, ("no artifact index", "does not exist")
)
case(
    "build-from-index-not-json",
    "build --from-index {inp} --insecure-unsigned",  # past the signature, to the parser
    14,
    "not JSON",
    write("i", "{oops", "index.json"),
)
case(
    "build-from-index-wrong-schema",
    "build --from-index {inp}",
    14,
    "index",
    write("i", '{"schema": "x"}', "index.json"),
)
case("build-from-index-malformed-entries", "build --from-index {inp}", 14, "index",
     write("i", json.dumps({"schema": "nativellm.artifact-index/1", "artifacts": "nope"}), "index.json"))  # fmt: skip
# no matching artifact: build falls back to compiling (here from an unreachable repo)
case("build-from-index-nothing-matches", "build --from-index {inp} --insecure-unsigned", 5, "cannot fetch",
     write("i", json.dumps({"schema": "nativellm.artifact-index/1", "artifacts": []}), "index.json"))  # fmt: skip
case("build-from-index-url-404", "build --from-index {u}", 3, ("no artifact index", "404"),
     serve("u", reply(404, b""), path="/fleet/"))  # fmt: skip
case("build-from-index-url-html", "build --from-index {u}", 14, ("not JSON", "not a nativellm signature"),
     serve("u", reply(200, b"<html>hi</html>"), path="/fleet/index.json"))  # fmt: skip


def _truncate(ctx: Ctx, var: str) -> None:
    p = ctx.inp / f"{var}.tar.gz"
    p.write_bytes(p.read_bytes()[:60])
    ctx.vars[f"{var}_sha"] = sha256_of(p)


# ========================================================================================== builds
case("builds-use-unknown", "builds use cpu-nosuch", 3, "no build", build)
case("builds-use-empty-store", "builds use cpu-nosuch", 3, "no build")
case("builds-rm-unknown", "builds rm cpu-nosuch", 3, "no build", build)
case("builds-rm-current", "builds rm cpu-0123456789ab", 8, "current", build)
case("builds-rm-pinned", "builds rm cpu-abcdef012345", 8, "pinned",
     two_builds, model, lambda ctx: add_instance(ctx, "q4", "m", "--build", "cpu-abcdef012345"))  # fmt: skip
case("builds-rm-pinned-by-prefix", "builds rm cpu-abcdef012345", 8, "pinned",
     two_builds, model, lambda ctx: add_instance(ctx, "q4", "m", "--build", "cpu-abc"))  # fmt: skip
case("builds-rm-pinned-by-rpc-worker", "builds rm cpu-abcdef012345", 8, "pinned",
     lambda ctx: (build(ctx), fake_build(ctx, "cpu-abcdef012345", current=False, rpc=True)),
     lambda ctx: _rpc_worker(ctx, "--build", "cpu-abcdef012345"))  # fmt: skip
case("builds-rm-ambiguous-prefix", "builds rm cpu-", 3, "ambiguous", two_builds)
case("builds-rollback-no-history", "builds rollback", 8, ("roll back", "previous"), build)
case("builds-rollback-empty-store", "builds rollback", 8, ("roll back", "previous"))
case("builds-use-control-chars", ("builds", "use", "cpu-\r\nx"), 3, "no build", build)
case("builds-use-path-traversal", ("builds", "use", "../../outside"), 3, "no build", build)
case("builds-rm-bad-manifest", "builds rm cpu-abcdef012345", 8, ("manifest", "cpu-abcdef012345"),
     two_builds, lambda ctx: (ctx.data / "builds" / "cpu-abcdef012345" / "manifest.json").write_text("[]"))  # fmt: skip
case("builds-use-manifest-without-id", "builds use cpu-abcdef012345", 8, ("manifest", "cpu-abcdef012345"),
     two_builds, lambda ctx: (ctx.data / "builds" / "cpu-abcdef012345" / "manifest.json").write_text("{}"))  # fmt: skip
case("builds-gc-negative-keep", "builds gc --keep -1", 2, "--keep")


def _rpc_worker(ctx: Ctx, *extra: str) -> None:
    ctx.prepare("instance", "add-rpc-worker", "w1", "--port", "50052", "--no-systemd", *extra)


# ============================================================================================ pack
case("pack-no-build", "pack", 3, ("no current build", "no build", "build"))
case("pack-unknown-build", "pack cpu-nosuch", 3, "no build", build)
case("pack-bad-compression", "pack --compression lzma", 2, "lzma", build)
case("pack-single-binary-of-normal-build", "pack --single-binary", 2, "single", build)
case("pack-missing-binary", "pack -o {inp}", 14, ("llama-server", "missing", "manifest"),
     build, lambda ctx: (ctx.data / "builds" / "cpu-0123456789ab" / "bin" / "llama-server").unlink())  # fmt: skip

# =================================================================================== artifacts index
case("artifacts-index-missing-dir", "artifacts index {inp}/nowhere", 3, "not a directory")
case("artifacts-index-file", "artifacts index {f}", 3, "not a directory", write("f", "x"))
case("artifacts-index-garbage-artifact", "artifacts index {inp}", 14, "nativellm-cpu-x.tar.gz",
     write("a", b"garbage", "nativellm-cpu-x.tar.gz"))  # fmt: skip
case("artifacts-index-tar-without-meta", "artifacts index {inp}", 14, ("artifact.json", "not a nativellm artifact"),
     lambda ctx: (ctx.inp / "nativellm-cpu-y.tar.gz").write_bytes(tar_bytes([tdir("cpu-y"), tfile("cpu-y/x")])))  # fmt: skip

# ======================================================================== install-artifact, upgrade
META_OK = {
    "schema": "nativellm.artifact/1",
    "build_id": "cpu-feedfacecafe",
    "variant": "cpu",
    "backend": "cpu",
    "requirements": {"os": "linux", "arch": os.uname().machine, "backend": "cpu", "cpu": "explicit"},
}


def artifact(var: str, extra: list[tuple[tarfile.TarInfo, bytes | None]], meta: dict[str, object] | None = None,
             manifest: bool = True, sidecar: bool = True, binaries: dict[str, str] | None = None) -> Setup:  # fmt: skip
    """An artifact tarball: artifact.json first, then (optionally) a manifest and `extra` members."""

    def setup(ctx: Ctx) -> None:
        doc = meta or META_OK
        bid = str(doc.get("build_id", "cpu-feedfacecafe")) if isinstance(doc, dict) else "cpu-feedfacecafe"
        members: list[tuple[tarfile.TarInfo, bytes | None]] = [
            tdir(bid),
            tfile(f"{bid}/artifact.json", json.dumps(meta or META_OK).encode()),
        ]
        if manifest:
            members.append(
                tfile(f"{bid}/manifest.json", json.dumps({"id": bid, "binaries": binaries or {}}).encode())
            )
        members += [(ti, c) for ti, c in extra]
        p = ctx.inp / f"nativellm-{bid}-cpu.tar.gz"
        p.write_bytes(tar_bytes(members))
        ctx.vars[var] = str(p)
        ctx.vars[f"{var}_sha"] = sha256_of(p)
        if sidecar:
            (ctx.inp / (p.name + ".sha256")).write_text(f"{sha256_of(p)}  {p.name}\n")

    return setup


def artifact_escape(ctx: Ctx) -> None:
    into = ("home", "data", "work", ".artifact-X", "unpacked")
    artifact("a", link_chain(ctx, "cpu-feedfacecafe", into, "pwned"))(ctx)


SIGNED = ("sign",)  # once artifacts are signed (finding 2), an unsigned test artifact is refused first
case("install-missing-file", "install-artifact {inp}/nope.tar.gz --sha256 " + SHA_A, 3, "does not exist")
case("install-sha256-not-hex", "install-artifact {a} --sha256 xyz", 2, "not a sha256", artifact("a", []))
case(
    "install-no-sha256", "install-artifact {a}", 14, ("no sha256", *SIGNED), artifact("a", [], sidecar=False)
)
case(
    "install-wrong-sha256",
    "install-artifact {a} --sha256 " + SHA_A,
    14,
    ("sha256", *SIGNED),
    artifact("a", []),
)
case("install-not-a-tar", "install-artifact {a} --sha256 {a_sha}", 14, ("not a readable artifact", *SIGNED),
     lambda ctx: (write("a", b"hello")(ctx), ctx.vars.update(a_sha=sha256_of(ctx.inp / "a"))))  # fmt: skip
case("install-no-artifact-json", "install-artifact {a} --sha256 {a_sha}", 14, ("not a nativellm artifact", *SIGNED),
     lambda ctx: (write("a", tar_bytes([tdir("x"), tfile("x/y")]))(ctx), ctx.vars.update(a_sha=sha256_of(ctx.inp / "a"))))  # fmt: skip
case("install-wrong-schema", "install-artifact {a}", 14, ("not a nativellm artifact", *SIGNED),
     artifact("a", [], meta={**META_OK, "schema": "evil/9"}))  # fmt: skip
case("install-unmet-arch", "install-artifact {a}", 14, ("riscv", "arch", *SIGNED),
     artifact("a", [], meta={**META_OK, "requirements": {"os": "linux", "arch": "riscv64"}}))  # fmt: skip
case("install-unmet-gpu", "install-artifact {a}", 14, ("cuda", "nvidia", "gpu", *SIGNED),
     artifact("a", [], meta={**META_OK, "requirements": {"os": "linux", "arch": os.uname().machine,
                                                        "backend": "cuda", "gpu_vendor": "nvidia",
                                                        "gpu_archs": ["sm_90"], "cuda": "12.4"}}))  # fmt: skip
case("install-meta-not-object", "install-artifact {a}", 14, ("not a nativellm artifact", *SIGNED),
     artifact("a", [], meta=["x"]))  # type: ignore[arg-type]  # fmt: skip
case("install-meta-no-requirements", "install-artifact {a}", 14, ("requirements", "artifact", *SIGNED),
     artifact("a", [], meta={"schema": "nativellm.artifact/1", "build_id": "cpu-feedfacecafe"}))  # fmt: skip
case("install-without-manifest", "install-artifact {a}", 14, ("manifest", *SIGNED), artifact("a", [], manifest=False))  # fmt: skip
case("install-id-mismatch", "install-artifact {a}", 14, ("does not hold build", *SIGNED),
     artifact("a", [tdir("cpu-other"), tfile("cpu-other/manifest.json", b"{}")]))  # fmt: skip
case("install-binary-mismatch", "install-artifact {a}", 14, ("does not match", *SIGNED),
     artifact("a", [tdir("cpu-feedfacecafe/bin"), tfile("cpu-feedfacecafe/bin/llama-server", b"#!/bin/sh\n", 0o755)],
              binaries={"bin/llama-server": SHA_A}))  # fmt: skip
case("install-dotdot-member", "install-artifact {a}", 14, ("unsafe", *SIGNED),
     artifact("a", [tfile("cpu-feedfacecafe/../../../../../x-dotdot", b"x")]))  # fmt: skip
case("install-absolute-symlink", "install-artifact {a}", 14, ("unsafe", *SIGNED),
     artifact("a", [tlink("cpu-feedfacecafe/etc", "/etc")]))  # fmt: skip
case("install-symlink-chain", "install-artifact {a}", 14, ("unsafe", "outside", "link", *SIGNED), artifact_escape)  # fmt: skip
case("install-device-node", "install-artifact {a}", 14, ("unsafe", "device", *SIGNED),
     artifact("a", [tspecial("cpu-feedfacecafe/sda", tarfile.BLKTYPE)]))  # fmt: skip
case(
    "install-missing-profile",
    "install-artifact {a} --profile {inp}/nope.json",
    3,
    "does not exist",
    artifact("a", []),
)
case("install-url-404", "install-artifact {u} --sha256 " + SHA_A, 3, "404",
     serve("u", reply(404, b""), path="/nativellm-x.tar.gz"))  # fmt: skip
# the server 404s everything: no .sig, no sidecar and no artifact; the missing artifact is what to say
case("install-url-no-sidecar", "install-artifact {u}", 3, "404",
     serve("u", reply(404, b""), path="/nativellm-x.tar.gz"))  # fmt: skip
case("install-url-wrong-content", "install-artifact {u} --sha256 " + SHA_A, 14, ("sha256", *SIGNED),
     serve("u", reply(200, b"not the artifact"), path="/nativellm-x.tar.gz"))  # fmt: skip
case("install-url-truncated", "install-artifact {u} --sha256 " + SHA_A, 13, ("stopped", "interrupted", "bytes"),
     serve("u", cut(100_000, 1000), path="/nativellm-x.tar.gz"), timeout=120)  # fmt: skip
case("install-https-self-signed", "install-artifact {u} --sha256 " + SHA_A, 13, ("certificate", "tls", "ssl"),
     serve("u", reply(200, b"x"), tls=True, path="/nativellm-x.tar.gz"), timeout=120,
     not_in=("attempts", "is kept"))  # fmt: skip
case("install-http-unsigned", "install-artifact {u} --sha256 {a_sha}", 14, SIGNED,
     artifact("a", []), lambda ctx: ctx.vars.update(u=ctx.serve(reply(200, (ctx.inp / "nativellm-cpu-feedfacecafe-cpu.tar.gz").read_bytes())) + "/nativellm-x.tar.gz"))  # fmt: skip
case("upgrade-without-manager", "upgrade --source {inp}", 10, "systemd is not reachable", build)
case("upgrade-nothing-given", "upgrade", 2, ("--ref", "--source", "--artifact", "give"), build)
case(
    "upgrade-missing-artifact",
    "upgrade --artifact {inp}/nope.tar.gz --sha256 " + SHA_A,
    3,
    "does not exist",
    build,
)
case("upgrade-missing-source", "upgrade --source {inp}/nowhere", 3, "does not exist", build)
case(
    "upgrade-sha256-not-hex",
    "upgrade --artifact {a} --sha256 xyz",
    2,
    "not a sha256",
    build,
    artifact("a", []),
)
case(
    "upgrade-unknown-instances",
    "upgrade --source {inp} --instances nosuch",
    3,
    ("nosuch", "no instance"),
    build,
)
case("upgrade-artifact-symlink-chain", "upgrade --artifact {a}", 14, ("unsafe", "outside", "link", *SIGNED),
     build, artifact_escape)  # fmt: skip
case(
    "upgrade-canary-bad-name",
    ("upgrade", "--source", "{inp}", "--canary", "../x"),
    2,
    "invalid instance name",
    build,
)

# ============================================================================================= GGUFs


def k(key: str, type_id: int, value: object) -> tuple[str, int, object]:
    return (key, type_id, value)


def without(key: str) -> tuple[tuple[str, int, object], ...]:
    return tuple(e for e in LLAMA_KV if e[0] != key)


def sparse_empty_strings(ctx: Ctx) -> None:
    """Finding 5: a sparse file whose header claims millions of empty-string keys."""
    p = ctx.inp / "sparse.gguf"
    with p.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 1_000_000))
        f.truncate(13 * 1_000_000 + 64)
    ctx.vars["gguf"] = str(p)


GGUF_CASES: list[tuple[str, bytes | Setup, str | tuple[str, ...], str | None]] = [
    ("empty", b"", "empty", None),
    ("text", b"hello, I am not a model\n", "not a GGUF", None),
    ("html", b"<!DOCTYPE html><html>Not found</html>", ("html", "not a GGUF"), None),
    ("magic-only", b"GGUF", ("truncated", "corrupt"), None),
    ("version-1", gguf_bytes(version=1), "version", None),
    ("version-99", gguf_bytes(version=99), "version", None),
    ("huge-tensor-count", gguf_bytes(n_tensors=1 << 62), "corrupt", None),
    ("huge-kv-count", gguf_bytes(n_kv=1 << 62), "corrupt", None),
    ("kv-count-past-eof", gguf_bytes(n_kv=50), ("truncated", "corrupt"), None),
    (
        "huge-key-length",
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60),
        ("corrupt", "truncated"),
        None,
    ),
    (
        "huge-string-value",
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("general.name") + struct.pack("<IQ", GGUF_STR, 1 << 60),
        ("corrupt", "truncated"),
        None,
    ),
    (
        "huge-array",
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + gstr("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", GGUF_ARR, GGUF_U8, 1 << 61),
        ("corrupt", "truncated"),
        None,
    ),
    (
        "unknown-value-type",
        gguf_bytes(kvs=[kv("general.architecture", GGUF_STR, "llama"), gstr("x") + struct.pack("<I", 99)]),
        ("type", "corrupt"),
        None,
    ),
    (
        "zero-dim-tensor",
        gguf_bytes(
            raw_tensors=gstr("t") + struct.pack("<I", 0) + struct.pack("<IQ", 0, 0), tensors=(), n_tensors=1
        ),
        "dimensions",
        None,
    ),
    (
        "unknown-tensor-type",
        gguf_bytes(tensors=(), n_tensors=1, raw_tensors=tensor_info("t", (8,), 250)),
        "type",
        None,
    ),
    ("tensor-past-eof", gguf_bytes(data=b""), "truncated", None),
    (
        "tensor-huge-shape",
        gguf_bytes(tensors=(), n_tensors=1, raw_tensors=tensor_info("t", (1 << 40, 1 << 40))),
        ("truncated", "corrupt"),
        None,
    ),
    ("no-architecture", gguf_bytes(kvs=without("general.architecture")), "no general.architecture", None),
    (
        "unknown-architecture",
        gguf_bytes(kvs=(k("general.architecture", GGUF_STR, "skynet"), *LLAMA_KV[1:])),
        "skynet",
        None,
    ),
    ("alignment-3", gguf_bytes(kvs=(*LLAMA_KV, k("general.alignment", GGUF_U32, 3))), "alignment", None),
    ("alignment-zero", gguf_bytes(kvs=(*LLAMA_KV, k("general.alignment", GGUF_U32, 0))), "alignment", None),
    (
        "alignment-string",
        gguf_bytes(kvs=(*LLAMA_KV, k("general.alignment", GGUF_STR, "32"))),
        "alignment",
        None,
    ),
    (
        "split-count-string",
        gguf_bytes(kvs=(*LLAMA_KV, k("split.count", GGUF_STR, "two"))),
        "split.count",
        None,
    ),
    ("split-count-mismatch", gguf_bytes(kvs=(*LLAMA_KV, k("split.count", GGUF_U32, 3))), "split", None),
    (
        "architecture-not-string",
        gguf_bytes(kvs=(k("general.architecture", GGUF_U32, 7), *LLAMA_KV[1:])),
        "architecture",
        None,
    ),
    (
        "huge-tensor-index",
        gguf_bytes(tensors=(("blk.999999999999.attn_q.weight", (8,)),)),
        ("blk", "layer", "corrupt"),
        None,
    ),
    ("sparse-empty-strings", sparse_empty_strings, ("corrupt", "truncated", "metadata"), None),
]

for gid, content, needle, why in GGUF_CASES:
    setup = content if callable(content) else gguf(content)
    case(f"model-add-gguf-{gid}", "model add {gguf} --name bad", 9, needle, setup, xfail=why, timeout=15)
# the same readers behind other commands
for gid in ("text", "version-99", "tensor-past-eof", "unknown-architecture", "alignment-string"):
    content, needle, why = next((c, n, w) for i, c, n, w in GGUF_CASES if i == gid)
    case(f"model-inspect-gguf-{gid}", "model inspect {gguf}", 9, needle, gguf(content), xfail=why)  # type: ignore[arg-type]

case("model-fit-huge-block-count", "model fit bad", 9, ("block_count", "corrupt", "layers"),
     lambda ctx: _registered(ctx, gguf_bytes(kvs=(*without("llama.block_count"), k("llama.block_count", GGUF_U32, 2_000_000_000))), "bad"),
     timeout=30)  # fmt: skip
case("instance-add-does-not-fit", ("instance", "add", "q5", "--model", "big", "--ctx", "1000000000", "--no-systemd", "--port", "{port}"), 9,
     "does not fit", build, lambda ctx: _registered(ctx, gguf_bytes(kvs=(*without("llama.context_length"), k("llama.context_length", GGUF_U32, 1 << 31))), "big"))  # fmt: skip


def _registered(ctx: Ctx, content: bytes, name: str) -> None:
    """A model registered while its file was valid, then replaced by `content` (as a file changes on disk)."""
    p = register_model(ctx, name)
    p.write_bytes(content)


# ============================================================================================ model
def fifo(ctx: Ctx) -> None:
    os.mkfifo(ctx.inp / "fifo.gguf")


def copy_existing(ctx: Ctx) -> None:
    register_model(ctx, "m")
    (ctx.inp / "other.gguf").write_bytes(gguf_bytes(kvs=(*LLAMA_KV, k("general.alignment", GGUF_U32, 3))))


def copy_existing_owned(ctx: Ctx) -> None:
    valid_gguf(ctx.inp / "first.gguf")
    ctx.prepare("model", "add", str(ctx.inp / "first.gguf"), "--name", "m", "--copy")
    valid_gguf(ctx.inp / "other.gguf", tensors=(("token_embd.weight", (8, 8)),))


def symlink_loop(ctx: Ctx) -> None:
    (ctx.inp / "a.gguf").symlink_to("b.gguf")
    (ctx.inp / "b.gguf").symlink_to("a.gguf")


def split_part_missing(ctx: Ctx) -> None:
    valid_gguf(ctx.inp / "x-00001-of-00002.gguf", kvs=(*LLAMA_KV, k("split.count", GGUF_U32, 2)))


def cr_in_model_path(ctx: Ctx) -> None:
    ctx.markers.append(ctx.outside / "pwned-cr")
    p = valid_gguf(ctx.inp / f"m\rExecStartPre=/bin/touch {ctx.outside}/pwned-cr\r.gguf")
    ctx.vars["crpath"] = str(p)


case("model-add-missing", "model add {inp}/nope.gguf", 3, "does not exist")
case("model-add-directory", "model add {inp}", 9, "not a regular file")  # fmt: skip
case("model-add-fifo", "model add {inp}/fifo.gguf", 9, "not a regular file", fifo, timeout=20)  # fmt: skip
case("model-add-dev-zero", "model add /dev/zero --name z", 9, "not a regular file", timeout=20)  # fmt: skip
case("model-add-symlink-loop", "model add {inp}/a.gguf --name loop", 9, ("symlink", "loop", "cannot read"), symlink_loop)  # fmt: skip
case(
    "model-add-split-part-missing",
    "model add {inp}/x-00001-of-00002.gguf",
    9,
    ("part", "missing"),
    split_part_missing,
)
case("model-add-sha256-not-hex", "model add {g} --sha256 xyz", 2, "not a sha256", lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))))  # fmt: skip
case(
    "model-add-wrong-sha256",
    "model add {g} --sha256 " + SHA_A,
    9,
    "sha256",
    lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))),
)
case("model-add-bad-name", ("model", "add", "{g}", "--name", "a/b"), 2, "invalid model name",
     lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))))  # fmt: skip
case("model-add-name-with-cr", ("model", "add", "{g}", "--name", "a\rb"), 2, "invalid model name",
     lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))))  # fmt: skip
case("model-add-name-dotdot", ("model", "add", "{g}", "--name", ".."), 2, "invalid model name",
     lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))))  # fmt: skip
case("model-add-link-and-copy", "model add {g} --link --copy", 2, ("--link", "--copy"),
     lambda ctx: ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))))  # fmt: skip
case(
    "model-add-copy-name-existing-bad",
    "model add {inp}/other.gguf --copy --name m",
    9,
    ("alignment", "already registered"),  # either refusal, as long as the registered file is kept
    copy_existing,
)
case("model-add-copy-name-existing", "model add {inp}/other.gguf --copy --name m", 9, ("already", "exists", "registered"),
     copy_existing_owned)  # fmt: skip
case("model-add-path-with-cr", ("model", "add", "{crpath}", "--name", "crm"), 2, ("control character", "invalid"),
     cr_in_model_path)  # fmt: skip
case("model-inspect-unknown", "model inspect nosuch", 3, "nosuch")
case("model-verify-unknown", "model verify nosuch", 3, "nosuch")
case("model-verify-changed-file", "model verify m", 9, "sha256",
     model, lambda ctx: (ctx.inp / "m.gguf").write_bytes(gguf_bytes(data=b"\1" * 128)))  # fmt: skip
case(
    "model-verify-file-gone",
    "model verify m",
    9,
    ("does not exist", "missing"),
    model,
    lambda ctx: (ctx.inp / "m.gguf").unlink(),
)
case("model-rm-unknown", "model rm nosuch", 3, "nosuch")
case("model-rm-in-use", "model rm m", 9, ("q4", "in use", "instance"), instance)
case("model-fit-unknown", "model fit nosuch", 3, "nosuch")
case("model-fit-bad-cache-type", "model fit m --cache-type-k q9", 2, "q9", model)
case(
    "model-fit-negative-ctx",
    "model fit m --ctx -5",
    2,
    "ctx",
    model,
)
case("model-fit-missing-profile", "model fit m --profile {inp}/nope.json", 3, "does not exist", model)
case("model-fit-negative-n-cpu-moe", "model fit m --n-cpu-moe -1", 2, "n-cpu-moe", model)
case("model-demo-bad-size", "model demo --size huge", 2, "huge")
case("model-demo-missing-vocab", "model demo --vocab {inp}/nowhere", 3, "does not exist")
case("model-demo-bad-name", ("model", "demo", "--name", "a b"), 2, "invalid model name")
case(
    "model-list-malformed-index",
    "model list",
    9,
    ("index.json", "registry", "index"),
    index_text("{not json"),
)
case("model-list-index-wrong-shape", "model list", 9, ("index.json", "registry", "index"), index_text('{"schema": "nativellm.models/1", "models": 7}'))  # fmt: skip
case("model-add-index-is-directory", "model add {g}", 9, ("index.json", "directory"),
     lambda ctx: (ctx.vars.update(g=str(valid_gguf(ctx.inp / "g.gguf"))), (ctx.data / "models" / "index.json").mkdir(parents=True)))  # fmt: skip


# ============================================================================================= pull
def gguf_url(content: bytes) -> Setup:
    return serve("u", reply(200, content))


def part_is_dir(ctx: Ctx) -> None:
    from nativellm.download import part_path  # the part file is keyed by the URL

    ctx.vars["u"] = ctx.serve(reply(200, gguf_bytes())) + "/model.gguf"
    part_path(ctx.vars["u"], ctx.data / "models" / "files" / "pm" / "model.gguf").mkdir(parents=True)


case("pull-bad-spec", "model pull ftp://example.org/x.gguf", 2, "cannot pull")
case("pull-bad-hf-spec", "model pull hf:nope", 2, ("hf:", "cannot pull"))
case(
    "pull-bad-name",
    ("model", "pull", "{u}", "--name", "a\nb"),
    2,
    "invalid model name",
    gguf_url(gguf_bytes()),
)
case("pull-sha256-not-hex", "model pull {u} --sha256 xyz", 2, "not a sha256", gguf_url(gguf_bytes()))  # fmt: skip
case("pull-404", "model pull {u} --name pm", 3, "404", serve("u", reply(404, b"no")))
case("pull-500", "model pull {u} --name pm", 13, "500", serve("u", reply(500, b"oops")), timeout=120)
case(
    "pull-html-instead-of-gguf",
    "model pull {u} --name pm",
    9,
    ("html", "not a GGUF"),
    gguf_url(b"<html><body>login</body></html>"),
)
case("pull-wrong-sha256", "model pull {u} --name pm --sha256 " + SHA_A, 13, "sha256", gguf_url(gguf_bytes()))
case("pull-truncated-body", "model pull {u} --name pm", 13, ("stopped", "bytes"), serve("u", cut(50_000, 500)),
     timeout=120, may_keep=("home/data/models/files/pm/model.gguf.part",))  # fmt: skip
case("pull-short-content-length", "model pull {u} --name pm", 9, ("truncated", "corrupt"),
     serve("u", reply(200, gguf_bytes(), length=200)))  # fmt: skip
case("pull-redirect-loop", "model pull {u} --name pm", 13, "redirect", serve("u", redirect_loop), timeout=120)  # fmt: skip
case("pull-https-self-signed", "model pull {u} --name pm", 13, ("certificate", "tls", "ssl"),
     serve("u", reply(200, gguf_bytes()), tls=True), timeout=120, not_in=("attempts", "is kept"))  # fmt: skip
case(
    "pull-connection-refused",
    "model pull http://127.0.0.1:9/model.gguf --name pm",
    13,
    ("127.0.0.1", "connect"),
    timeout=120,
)
case("pull-corrupt-gguf", "model pull {u} --name pm", 9, "version", gguf_url(gguf_bytes(version=99)))
case("pull-huge-tensor-index", "model pull {u} --name pm", 9, ("blk", "layer", "corrupt"),
     gguf_url(gguf_bytes(tensors=(("blk.999999999999.attn_q.weight", (8,)),))), timeout=15)  # fmt: skip
case("pull-part-is-directory", "model pull {u} --name pm", 13, ("part", "directory"), part_is_dir)  # fmt: skip
case(
    "pull-hf-unreachable",
    "model pull hf:owner/repo/x.gguf --name pm",
    13,
    ("127.0.0.1", "connect", "huggingface"),
    timeout=120,
)

# ==================================================================================== import-ollama
MODEL_MEDIA = "application/vnd.ollama.image.model"


def ollama(
    layers: list[dict[str, object]] | str, blobs: dict[str, bytes] | None = None, ref: str = "tiny/latest"
) -> Setup:
    def setup(ctx: Ctx) -> None:
        root = ctx.inp / "ollama"
        name, tag = ref.split("/")
        man = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
        man.parent.mkdir(parents=True)
        (root / "blobs").mkdir()
        man.write_text(
            layers if isinstance(layers, str) else json.dumps({"schemaVersion": 2, "layers": layers})
        )
        for digest, content in (blobs or {}).items():
            (root / "blobs" / digest.replace(":", "-")).write_bytes(content)
        ctx.vars["ollama"] = str(root)

    return setup


GOOD_BLOB = gguf_bytes()
GOOD_DIGEST = "sha256:" + __import__("hashlib").sha256(GOOD_BLOB).hexdigest()


def ollama_template_escape(ctx: Ctx) -> None:
    """Finding 4: a template layer whose "digest" is an absolute path (blobs/ joined with it is that path)."""
    secret = ctx.outside / "secret.txt"
    secret.write_text("root-only secret\n")
    ollama([
        {"mediaType": MODEL_MEDIA, "digest": GOOD_DIGEST, "size": len(GOOD_BLOB)},
        {"mediaType": "application/vnd.ollama.image.template", "digest": str(secret), "size": 10},
    ], {GOOD_DIGEST: GOOD_BLOB})(ctx)  # fmt: skip


case("ollama-no-store", "model import-ollama tiny", 3, ("ollama", "no"))
case(
    "ollama-missing-dir",
    "model import-ollama tiny --ollama-dir {inp}/nowhere",
    3,
    ("ollama", "does not exist", "nowhere"),
)
case("ollama-unknown-ref", "model import-ollama nosuch --ollama-dir {ollama}", 3, "nosuch",
     ollama([{"mediaType": MODEL_MEDIA, "digest": GOOD_DIGEST}], {GOOD_DIGEST: GOOD_BLOB}))  # fmt: skip
case("ollama-ref-and-all", "model import-ollama tiny --all --ollama-dir {ollama}", 2, ("--all", "either"),
     ollama([{"mediaType": MODEL_MEDIA, "digest": GOOD_DIGEST}], {GOOD_DIGEST: GOOD_BLOB}))  # fmt: skip
case(
    "ollama-manifest-not-json",
    "model import-ollama tiny --ollama-dir {ollama}",
    9,
    "unreadable",
    ollama("{nope"),
)
case(
    "ollama-manifest-no-layers",
    "model import-ollama tiny --ollama-dir {ollama}",
    9,
    "unreadable",
    ollama('{"x": 1}'),
)
case("ollama-manifest-layers-not-objects", "model import-ollama tiny --ollama-dir {ollama}", 9, ("unreadable", "manifest"),
     ollama('{"layers": [1, 2]}'))  # fmt: skip
case("ollama-no-model-layer", "model import-ollama tiny --ollama-dir {ollama}", 9, "no model layer",
     ollama([{"mediaType": "application/vnd.ollama.image.license", "digest": GOOD_DIGEST}]))  # fmt: skip
case("ollama-bad-model-digest", "model import-ollama tiny --ollama-dir {ollama}", 9, ("bad model digest", "bad layer digest"),
     ollama([{"mediaType": MODEL_MEDIA, "digest": "sha256:../../etc/passwd"}]))  # fmt: skip
case("ollama-missing-blob", "model import-ollama tiny --ollama-dir {ollama}", 9, "missing",
     ollama([{"mediaType": MODEL_MEDIA, "digest": GOOD_DIGEST}]))  # fmt: skip
case("ollama-blob-not-gguf", "model import-ollama tiny --ollama-dir {ollama}", 9, "not a GGUF",
     ollama([{"mediaType": MODEL_MEDIA, "digest": "sha256:" + "0" * 64}], {"sha256:" + "0" * 64: b"hello"}))  # fmt: skip
case("ollama-template-digest-escape", "model import-ollama tiny --ollama-dir {ollama}", 9, ("digest", "template"),
     ollama_template_escape)  # fmt: skip
case("ollama-bad-ref", ("model", "import-ollama", "tiny\r\n", "--ollama-dir", "{ollama}"), 2, ("invalid", "ref"),
     ollama([{"mediaType": MODEL_MEDIA, "digest": GOOD_DIGEST}], {GOOD_DIGEST: GOOD_BLOB}))  # fmt: skip

# ========================================================================================= instance
ADD = ("instance", "add", "q5", "--model", "m", "--no-systemd", "--port", "{port}")


def bm(ctx: Ctx) -> None:
    """A build and a model: what `instance add` needs."""
    fake_build(ctx)
    register_model(ctx)


def cr(value: str) -> str:
    """A value smuggling a directive past systemd's line end at a carriage return (finding 3)."""
    return f"{value}\rExecStartPre=/bin/touch {{marker_inj}}"


INJ = marker("inj")
F3 = "finding 3: a carriage return in {} injects a [Service] directive (systemd ends a line at \\r)"

case(
    "instance-add-bad-name-slash",
    ("instance", "add", "a/b", "--model", "m", "--no-systemd"),
    2,
    "invalid instance name",
    bm,
)
case(
    "instance-add-bad-name-service",
    ("instance", "add", "x.service", "--model", "m", "--no-systemd"),
    2,
    "invalid instance name",
    bm,
)
case(
    "instance-add-name-with-cr",
    ("instance", "add", "q\r5", "--model", "m", "--no-systemd"),
    2,
    "invalid instance name",
    bm,
)
case(
    "instance-add-name-with-newline",
    ("instance", "add", "q5\n", "--model", "m", "--no-systemd"),
    2,
    "invalid instance name",
    bm,
)
case(
    "instance-add-name-too-long",
    ("instance", "add", "q" * 80, "--model", "m", "--no-systemd"),
    2,
    "invalid instance name",
    bm,
)
case(
    "instance-add-unknown-model",
    ("instance", "add", "q5", "--model", "nosuch", "--no-systemd"),
    3,
    "nosuch",
    bm,
)
case("instance-add-no-model", ("instance", "add", "q5", "--no-systemd"), 2, "--model", bm)
case("instance-add-no-build", ADD, 3, ("no build", "build"), model)
case("instance-add-unknown-build", (*ADD, "--build", "cpu-nosuch"), 3, "cpu-nosuch", bm)
case("instance-add-existing", ("instance", "add", "q4", "--model", "m", "--no-systemd", "--port", "{port}"), 10,
     ("already", "exists"), instance)  # fmt: skip
case("instance-add-port-zero", (*ADD[:-1], "0"), 2, "port", bm)
case("instance-add-port-too-big", (*ADD[:-1], "70000"), 2, "port", bm)
case("instance-add-port-not-int", (*ADD[:-1], "http"), 2, "--port", bm)
case("instance-add-port-taken-by-instance", ("instance", "add", "q5", "--model", "m", "--no-systemd", "--port", "18080"), 12,
     ("18080", "in use", "port"), instance)  # fmt: skip
case("instance-add-port-in-use", ("instance", "add", "q5", "--model", "m", "--no-systemd", "--port", "{busy}"), 12,
     ("in use", "port"), bm, lambda ctx: ctx.vars.update(busy=str(ctx.listen())))  # fmt: skip
case("instance-add-public-without-key", (*ADD, "--host", "0.0.0.0"), 10, "API key", bm)
case("instance-add-bad-host", (*ADD, "--host", "not a host!"), 2, ("host", "not a host"), bm)  # fmt: skip
case("instance-add-host-with-cr", (*ADD, "--host", "127.0.0.1\rExecStartPre=/bin/true", "--insecure-no-api-key"), 2,
     ("host", "control character"), bm)  # fmt: skip
case("instance-add-api-key-relative", (*ADD, "--api-key-file", "key.txt"), 2, "api-key-file", bm)
case("instance-add-api-key-with-cr", (*ADD, "--api-key-file", "{crkey}"), 2, ("control character", "api-key"), bm, INJ, lambda ctx: _cr_key(ctx))  # fmt: skip
case("instance-add-memory-max-words", (*ADD, "--memory-max", "lots"), 2, ("memory-max", "lots"), bm)  # fmt: skip
case("instance-add-memory-max-cr", (*ADD, "--memory-max", cr("1G")), 2, ("memory-max", "control character"), bm, INJ)  # fmt: skip
case("instance-add-memory-max-negative", (*ADD, "--memory-max", "-5G"), 2, "memory-max", bm)  # fmt: skip
case(
    "instance-add-cpus-words",
    (*ADD, "--cpus", "many"),
    2,
    ("cpus", "many"),
    bm,
)
case(
    "instance-add-cpus-cr",
    (*ADD, "--cpus", cr("2")),
    2,
    ("cpus", "control character"),
    bm,
    INJ,
)
case(
    "instance-add-cpus-bad-list",
    (*ADD, "--cpus", "0-"),
    2,
    "cpus",
    bm,
)
case("instance-add-gpus-words", (*ADD, "--gpus", "a,b"), 2, "gpus", bm)
case("instance-add-flash-attn", (*ADD, "--flash-attn", "maybe"), 2, "flash-attn", bm)
case("instance-add-cache-type", (*ADD, "--cache-type-k", "q9"), 2, "cache-type-k", bm)
case("instance-add-negative-ctx", (*ADD, "--ctx", "-1"), 2, "ctx", bm)
case("instance-add-zero-threads", (*ADD, "--threads", "0"), 2, "threads", bm)
case("instance-add-zero-parallel", (*ADD, "--parallel", "0"), 2, "parallel", bm)
case("instance-add-negative-gpu-layers", (*ADD, "--gpu-layers", "-3"), 2, "gpu-layers", bm)
case("instance-add-zero-start-timeout", (*ADD, "--start-timeout", "0"), 2, "start-timeout", bm)
case("instance-add-bad-rpc", (*ADD, "--rpc", "nohostport"), 2, "rpc", bm)
case("instance-add-rpc-bad-port", (*ADD, "--rpc", "10.0.0.1:99999"), 2, "rpc", bm)
case("instance-add-extra-newline", (*ADD, "--", "--foo\nbar"), 2, ("newline", "control character"), bm)
case("instance-add-extra-cr", (*ADD, "--", cr("--foo")), 2, ("control character", "newline"), bm, INJ)  # fmt: skip
case("instance-add-model-path-cr", ("instance", "add", "q5", "--model", "crm", "--no-systemd", "--port", "{port}"), 2,
     ("control character", "model"), lambda ctx: _cr_model(ctx))  # fmt: skip
case(
    "instance-add-no-systemd-manager",
    ("instance", "add", "q5", "--model", "m", "--port", "{port}"),
    10,
    "systemd is not reachable",
    bm,
)
case("instance-add-model-is-corrupt", ADD, 9, ("alignment", "corrupt"), bm,
     lambda ctx: (ctx.inp / "m.gguf").write_bytes(gguf_bytes(kvs=(*LLAMA_KV, k("general.alignment", GGUF_U32, 3)))))  # fmt: skip


def _cr_key(ctx: Ctx) -> None:
    """An existing key file whose path smuggles a directive after a CR (its folders are made to fit)."""
    p = ctx.inp / f"key\rExecStartPre=/bin/touch {ctx.vars['marker_inj']}"
    p.parent.mkdir(parents=True)
    p.write_text("secret\n")
    ctx.vars["crkey"] = str(p)


def _cr_model(ctx: Ctx) -> None:
    """Finding 3: a registered model whose path carries a CR (the index written as an older nativellm would)."""
    fake_build(ctx)
    register_model(ctx, "crm")
    evil = ctx.inp / "crm\rExecStartPre=\r.gguf"
    os.rename(ctx.inp / "crm.gguf", evil)
    index = ctx.data / "models" / "index.json"
    index.write_text(
        index.read_text().replace(json.dumps(str(ctx.inp / "crm.gguf"))[1:-1], json.dumps(str(evil))[1:-1])
    )


case("instance-edit-unknown", "instance edit nosuch --port 18091 --no-systemd", 3, "nosuch", bm)
case("instance-edit-bad-port", "instance edit q4 --port 0 --no-systemd", 2, "port", instance)
case("instance-edit-unknown-model", "instance edit q4 --model nosuch --no-systemd", 3, "nosuch", instance)
case("instance-edit-memory-max-cr", ("instance", "edit", "q4", "--memory-max", cr("1G"), "--no-systemd"), 2,
     ("memory-max", "control character"), instance, INJ)  # fmt: skip
case("instance-edit-cpus-cr", ("instance", "edit", "q4", "--cpus", cr("1"), "--no-systemd"), 2,
     ("cpus", "control character"), instance, INJ)  # fmt: skip
case(
    "instance-edit-public-without-key",
    "instance edit q4 --host 0.0.0.0 --no-systemd",
    10,
    "API key",
    instance,
)
case(
    "instance-edit-corrupt-toml",
    "instance edit q4 --port 18091 --no-systemd",
    10,
    "not valid TOML",
    instance,
    spec_text("port = = 3"),
)
case("instance-edit-unknown-keys", "instance edit q4 --port 18091 --no-systemd", 10, "unknown keys",
     instance, spec_text(TOML_OK + 'evil = "x"\n'))  # fmt: skip
case("instance-edit-port-string", "instance edit q4 --ctx 512 --no-systemd", 10, "port",
     instance, spec_text(TOML_OK.replace("18080", '"abc"')))  # fmt: skip
case("instance-show-unknown", "instance show nosuch", 3, "nosuch")
case("instance-show-corrupt-toml", "instance show q4", 10, "not valid TOML", instance, spec_text("[[[["))
case("instance-show-incomplete", "instance show q4", 10, "incomplete", instance, spec_text('name = "q4"\n'))
case("instance-show-port-string", "instance show q4", 10, "port", instance, spec_text(TOML_OK.replace("18080", '"abc"')))  # fmt: skip
case("instance-show-gpus-not-list", "instance show q4", 10, "gpus", instance, spec_text(TOML_OK + "gpus = 3\n"))  # fmt: skip
case("instance-show-spec-is-directory", "instance show q4", 10, ("directory", "q4.toml"),
     lambda ctx: (ctx.config / "instances" / "q4.toml").mkdir(parents=True))  # fmt: skip
case("instance-show-spec-not-utf8", "instance show q4", 10, ("q4.toml", "UTF-8", "TOML"), instance,
     lambda ctx: (ctx.config / "instances" / "q4.toml").write_bytes(b"name = \"\xff\xfe\"\n"))  # fmt: skip
case("instance-list-corrupt-toml", "instance list", 10, "not valid TOML", instance, spec_text("[[[["))
case("instance-rm-unknown", "instance rm nosuch --no-systemd", 3, "nosuch")
case("instance-rm-bad-name", ("instance", "rm", "../x", "--no-systemd"), 2, "invalid instance name")
case("instance-rm-without-manager", "instance rm q4", 10, "systemd is not reachable", instance)
case(
    "rpc-add-bad-name",
    ("instance", "add-rpc-worker", "w/1", "--port", "50052", "--no-systemd"),
    2,
    "invalid",
    build,
)
case("rpc-add-port-zero", "instance add-rpc-worker w1 --port 0 --no-systemd", 2, "port", build)
case("rpc-add-no-port", "instance add-rpc-worker w1 --no-systemd", 2, "--port", build)
case(
    "rpc-add-bad-allow", "instance add-rpc-worker w1 --port 50052 --allow !!! --no-systemd", 2, "allow", build
)
case(
    "rpc-add-unknown-build",
    "instance add-rpc-worker w1 --port 50052 --build cpu-nosuch --no-systemd",
    3,
    "cpu-nosuch",
    build,
)
case("rpc-add-no-build", "instance add-rpc-worker w1 --port 50052 --no-systemd", 3, ("no build", "build"))
case("rpc-add-public-without-allow", "instance add-rpc-worker w1 --port 50052 --host 0.0.0.0 --no-systemd", 10,
     ("allow", "0.0.0.0"), build)  # fmt: skip
case("rpc-add-gpus-cr", ("instance", "add-rpc-worker", "w1", "--port", "50052", "--gpus", cr("0"), "--no-systemd"), 2,
     ("gpus", "control character"), build, INJ)  # fmt: skip
case("rpc-rm-unknown", "instance rm-rpc-worker nosuch --no-systemd", 3, "nosuch")

# ======================================================================== lifecycle, status, logs, run
for verb in ("start", "stop", "restart", "enable", "disable"):
    case(f"{verb}-unknown", f"{verb} nosuch", 3, "nosuch")
    case(f"{verb}-bad-name", (verb, "../../etc"), 2, "invalid instance name")
case("start-without-manager", "start q4", 10, "systemd is not reachable", instance)
case("stop-without-manager", "stop q4", 10, "systemd is not reachable", instance)
case("logs-unknown", "logs nosuch", 3, "nosuch")
case("logs-bad-name", ("logs", "a;b"), 2, "invalid instance name")
case("logs-negative-lines", "logs q4 -n -1", 2, "--lines", instance)
case("run-unknown", "run nosuch", 3, "nosuch")
case("run-no-build", "run q4", 3, ("no build", "build"), instance, lambda ctx: _drop_builds(ctx))
case("run-port-in-use", "run q4", 12, ("in use", "port"), instance,
     lambda ctx: _spec_port(ctx, ctx.listen()), timeout=30)  # fmt: skip
case("run-model-file-gone", "run q4", 9, ("does not exist", "missing", "m.gguf"), instance,
     lambda ctx: (ctx.inp / "m.gguf").unlink(), timeout=30)  # fmt: skip
case("status-corrupt-spec", "status", 10, "not valid TOML", instance, spec_text("[[[["))
case("status-port-string", "status", 10, "port", instance, spec_text(TOML_OK.replace("18080", '"abc"')))  # fmt: skip


def _drop_builds(ctx: Ctx) -> None:
    import shutil

    shutil.rmtree(ctx.data / "builds")
    (ctx.data / "current").unlink()


def _spec_port(ctx: Ctx, port: int) -> None:
    p = ctx.config / "instances" / "q4.toml"
    p.write_text(p.read_text().replace("port = 18080", f"port = {port}"))


# ============================================================================================ bench
case("bench-unknown-instance", "bench nosuch", 3, "nosuch")
case("bench-builds-unknown-build", "bench builds cpu-nosuch --model m", 3, "no build", bm)
case("bench-builds-unknown-model", "bench builds --model nosuch", 3, "nosuch", build)
case("bench-builds-no-llama-bench", "bench builds --model m", 11, "llama-bench", bm)
case(
    "bench-bad-url",
    "bench x --url ftp://127.0.0.1/",
    2,
    "url",
)
case("bench-bad-concurrency", "bench x --url http://127.0.0.1:9 --concurrency a,b", 2, "concurrency")
case("bench-zero-requests", "bench x --url http://127.0.0.1:9 --requests 0", 2, "--requests")
case("bench-url-refused", "bench x --url http://127.0.0.1:9 --requests 1 --concurrency 1", 10, ("127.0.0.1", "connect", "reach"),
     timeout=60)  # fmt: skip
case("bench-url-500", "bench x --url {u} --requests 1 --concurrency 1", 10, ("500", "error"), serve("u", reply(500, b"boom"), path=""),
     timeout=60)  # fmt: skip
case(
    "bench-instance-not-running",
    "bench q4 --requests 1",
    10,
    ("q4", "not running", "systemd"),
    instance,
    timeout=60,
)

# =========================================================================================== doctor
case("doctor-broken-current", "doctor", 15, "problem", build, lambda ctx: _drop_builds_keep_current(ctx))
case(
    "doctor-corrupt-spec",
    "doctor",
    15,
    "problem",
    instance,
    spec_text("[[[["),
)
case("doctor-malformed-index", "doctor", 15, "problem", index_text("{not json"))
case(
    "doctor-model-changed",
    "doctor",
    15,
    "problem",
    model,
    lambda ctx: (ctx.inp / "m.gguf").write_bytes(b"garbage"),
)


def _drop_builds_keep_current(ctx: Ctx) -> None:
    import shutil

    shutil.rmtree(ctx.data / "builds")


# ------------------------------------------------------------------------------ router instances (issue 16)
def _router(ctx: Ctx) -> None:
    """Models m and n, and a router `r` serving both (not running: nothing listens on its port)."""
    fake_build(ctx)
    register_model(ctx)
    register_model(ctx, "n")
    ctx.prepare("instance", "add", "r", "--router", "--models", "m,n", "--no-systemd", "--port", "18090")


ROUTER_ADD = "instance add r2 --router --no-systemd --port 18091"
case("router-add-no-models", ROUTER_ADD, 2, "--router needs --models", bm)
case("router-add-unknown-model", f"{ROUTER_ADD} --models m,nosuch", 3, "nosuch", bm)
case("router-add-model-twice", f"{ROUTER_ADD} --models m,m", 2, "twice", bm)
case("router-add-model-and-models", f"{ROUTER_ADD} --models m --model m", 2, "not --model", bm)
case(
    "router-add-start-unknown", f"{ROUTER_ADD} --models m --load-on-start x", 2, "not one of this router", bm
)
case("router-add-max-below-start", f"{ROUTER_ADD} --models m,n --models-max 1 --load-on-start m,n", 2,
     "smaller than the 2 models", _router)  # fmt: skip
case("router-add-bad-model-opt", f"{ROUTER_ADD} --models m --model-opt m-ctx", 2, "MODEL:KEY=VALUE", bm)
case(
    "router-add-opt-not-a-number",
    f"{ROUTER_ADD} --models m --model-opt m:ctx-size=big",
    2,
    "not a number",
    bm,
)
case(
    "router-add-opt-reserved",
    f"{ROUTER_ADD} --models m --model-opt m:port=1",
    10,
    "managed by the router",
    bm,
)
case("router-add-opt-cr", ("instance", "add", "r2", "--router", "--no-systemd", "--port", "18091", "--models", "m",
                           "--model-opt", cr("m:ctx-size=1")), 2, ("control", "carriage"), bm, INJ)  # fmt: skip
case("router-edit-opt-other-model", "instance edit r --model-opt zz:ctx-size=1 --no-systemd", 2,
     "not one of this router", _router)  # fmt: skip
case("model-load-no-instance", "model load m --on nosuch", 3, "nosuch", _router)
case("model-load-unknown-model", "model load zz --on r", 3, "not one of router r's models", _router)
case("model-load-not-running", "model load m --on r", 10, "did not answer", _router)
case("model-unload-not-running", "model unload m --on r", 10, "did not answer", _router)
case("model-swap-same", "model swap m m --on r", 2, "two different models", _router)
case("model-load-single-instance", "model load m --on q4", 2, "serves one model", instance)
case(
    "router-add-engine-mlx", f"{ROUTER_ADD} --models m --engine mlx", 2, "router mode, not mlx_lm.server", bm
)
case("model-load-bad-timeout", "model load m --on r --timeout 0", 2, "timeout", _router)


# ------------------------------------------------------------------------------------ the MLX engine (issue 17)
def mlx_dir(var: str = "mdir", **config: Any) -> Setup:
    """A valid MLX model directory {var} under in/ (numpy-written: tests/fixtures/models/mlxdirs.py)."""

    def setup(ctx: Ctx) -> None:
        from mlxdirs import write_mlx_dir

        ctx.vars[var] = str(write_mlx_dir(ctx.inp / var, **config))

    return setup


def mlx_model(ctx: Ctx) -> None:
    """A build, a GGUF model "m" and an MLX model "mx", registered through the real CLI."""
    fake_build(ctx)
    register_model(ctx)
    mlx_dir()(ctx)
    ctx.prepare("model", "add", ctx.vars["mdir"], "--name", "mx")


def _truncate_weights(ctx: Ctx) -> None:
    w = ctx.inp / "mdir" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-64])


def mlx_runtime_without_python(ctx: Ctx) -> None:
    """A current, smoke-tested MLX runtime whose venv lost its Python."""
    rt = ctx.data / "runtimes" / "mlx" / "rt1"
    rt.mkdir(parents=True)
    (rt / "manifest.json").write_text(json.dumps({"id": "rt1", "smoke_test": {"passed": True}}))
    (rt.parent / "current").symlink_to("rt1")


case("mlx-model-add-no-weights", ("model", "add", "{mdir}"), 9, "has no weights",
     mlx_dir(), lambda ctx: (ctx.inp / "mdir" / "model.safetensors").unlink())  # fmt: skip
case(
    "mlx-model-add-config-mismatch",
    ("model", "add", "{mdir}"),
    9,
    "vocab_size 41, but",
    mlx_dir(vocab_size=41),
)
case("mlx-model-add-layers-mismatch", ("model", "add", "{mdir}"), 9, "num_hidden_layers 5",
     mlx_dir(num_hidden_layers=5))  # fmt: skip
case("mlx-model-add-config-not-json", ("model", "add", "{mdir}"), 9, "not valid JSON",
     mlx_dir(), lambda ctx: (ctx.inp / "mdir" / "config.json").write_text("{"))  # fmt: skip
case("mlx-model-add-truncated-weights", ("model", "add", "{mdir}"), 9, "truncated",
     mlx_dir(), _truncate_weights)  # fmt: skip
case("mlx-engine-with-gguf", "instance add x --model m --engine mlx --no-systemd --port {port}", 9,
     "--engine mlx needs an MLX model directory", mlx_model)  # fmt: skip
case("llama-engine-with-mlx-dir", "instance add x --model mx --engine llama --no-systemd --port {port}", 9,
     "llama-server cannot load an MLX model directory", mlx_model)  # fmt: skip
case("mlx-engine-unknown", "instance add x --model mx --engine metal --no-systemd --port {port}", 2,
     "--engine 'metal' is invalid", mlx_model)  # fmt: skip
case("mlx-engine-llama-only-flag", "instance add x --model mx --gpu-layers 9 --no-systemd --port {port}", 2,
     "--gpu-layers is a llama-server setting", mlx_model)  # fmt: skip
case("mlx-no-runtime", "instance add x --model mx --no-systemd --port {port}", 3, "no MLX runtime is installed",
     mlx_model)  # fmt: skip
case("mlx-runtime-without-python", "instance add x --model mx --no-systemd --port {port}", 8,
     "the current MLX runtime rt1 is broken", mlx_model, mlx_runtime_without_python)  # fmt: skip
case(
    "mlx-install-offline-not-a-dir",
    ("mlx", "install", "--offline-wheels", "{inp}/none"),
    3,
    "is not a directory",
)
case("mlx-install-bad-version", ("mlx", "install", "--mlx-lm", "latest; rm -rf"), 2, "is not a version")
case("mlx-rollback-nothing", "mlx rollback", 8, "no earlier MLX runtime")
case("router-add-mlx-model", "instance add r3 --router --models m,mx --no-systemd --port 18092", 9,
     "a router's llama-server loads GGUF", mlx_model)  # fmt: skip
