"""Artifacts without processes: fingerprints, requirements, pack/read/index, refusals, matching."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nativellm.build import artifacts, signing
from nativellm.build import index as artifact_index
from nativellm.build.artifacts import ARTIFACT_SCHEMA, InstallOptions, PackOptions, pack, read_meta
from nativellm.build.fingerprint import Requirements, fingerprint, requirements_of
from nativellm.build.index import load_index, select_artifact, write_index
from nativellm.build.plan import PlanOptions, plan_build
from nativellm.build.source import DEFAULT_REF, SourceRequest
from nativellm.build.store import Store
from nativellm.errors import ArtifactError, NotFoundError
from nativellm.fsutil import sha256_file
from nativellm.hardware.profile import GpuInfo, HostProfile
from nativellm.paths import Paths, Scope
from nativellm.progress import SilentReporter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
DEFAULT = PlanOptions()


def load(name: str) -> HostProfile:
    return HostProfile.from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def with_flags(
    profile: HostProfile, drop: str = "", add: str = "", libc: str | None = "glibc 2.36"
) -> HostProfile:
    flags = (set(profile.cpu.flags) | set(add.split())) - set(drop.split())
    cpu = dataclasses.replace(profile.cpu, flags=tuple(sorted(flags)))
    return dataclasses.replace(profile, cpu=cpu, libc=libc)


def manifest_for(profile: HostProfile, opts: PlanOptions = DEFAULT, **extra: Any) -> dict[str, Any]:
    plan = plan_build(profile, opts)
    return {
        "id": f"{plan.backend.value}-0123456789ab",
        "created": "2026-11-22T00:00:00+00:00",
        "plan": plan.to_dict(),
        "built_for": profile.to_dict(),
        "built_on": profile.to_dict(),
        "source": {
            "kind": "git",
            "repo": "https://github.com/ggml-org/llama.cpp",
            "ref": DEFAULT_REF,
            "commit": "ab" * 20,
        },
        "smoke_test": {"passed": True, "cases": []},
        **extra,
    }


# --------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_and_ignores_what_does_not_change_a_build() -> None:
    zen4 = with_flags(load("zen4-epyc"))
    fp = fingerprint(zen4)
    assert fp.key == fingerprint(zen4).key
    assert fp.key.startswith("linux-x86_64-")
    bigger = dataclasses.replace(
        zen4,
        memory_bytes=zen4.memory_bytes * 2,
        cpu=dataclasses.replace(zen4.cpu, physical_cores=7, model="other", flags=(*zen4.cpu.flags, "xtpr")),
    )
    assert fingerprint(bigger).key == fp.key
    assert fingerprint(dataclasses.replace(zen4, libc="glibc 2.36.9")).key == fp.key  # major.minor only


@pytest.mark.parametrize(
    "change",
    [
        lambda p: with_flags(p, drop="avx512f"),
        lambda p: dataclasses.replace(p, libc="glibc 2.31"),
        lambda p: dataclasses.replace(p, gpus=(GpuInfo("nvidia", 0, "RTX 5090", "sm_120", 1 << 34),)),
        lambda p: dataclasses.replace(p, arch="aarch64"),
    ],
)
def test_fingerprint_changes_with_the_hardware_class(change: Any) -> None:
    zen4 = with_flags(load("zen4-epyc"))
    assert fingerprint(change(zen4)).key != fingerprint(zen4).key


def test_fingerprint_keeps_toolkit_majors_only() -> None:
    h100 = load("2x-h100")
    newer = dataclasses.replace(h100, toolkits=dataclasses.replace(h100.toolkits, cuda="12.8"))
    assert fingerprint(newer).key == fingerprint(h100).key
    assert fingerprint(h100).parts["toolkits"]["cuda"] == "12"
    assert fingerprint(h100).parts["gpus"] == ["nvidia:sm_90"]  # two identical GPUs: one class


# --------------------------------------------------------------------------- requirements
def test_requirements_come_from_the_plan_not_the_build_host() -> None:
    zen4 = with_flags(load("zen4-epyc"))
    req = requirements_of(manifest_for(zen4))
    assert req.cpu == "explicit"
    assert {"avx2", "fma", "avx512f", "avx512bw", "avx512vl"} <= set(req.cpu_flags)
    assert "xtpr" not in req.cpu_flags and req.glibc == "2.36" and req.gpu_vendor is None
    baseline = requirements_of(manifest_for(zen4, PlanOptions(baseline=True)))
    assert "avx512f" not in baseline.cpu_flags and "avx2" in baseline.cpu_flags
    portable = requirements_of(manifest_for(zen4, PlanOptions(portable=True)))
    assert portable.cpu == "portable" and portable.cpu_flags == ()
    native = requirements_of(manifest_for(zen4, PlanOptions(native=True)))
    assert native.cpu == "native" and "avx512f" in native.cpu_flags


def test_arm_requirements_follow_the_march_tags() -> None:
    g3 = load("graviton3")
    req = requirements_of(manifest_for(g3))
    tags = plan_build(g3).cmake_defines["GGML_CPU_ARM_ARCH"]
    assert req.arch == "aarch64"
    if "+sve" in tags:
        assert "sve" in req.cpu_flags
    if "+dotprod" in tags:
        assert "asimddp" in req.cpu_flags


def test_cuda_requirements_name_archs_and_driver() -> None:
    rtx = load("rtx5090-cuda128")
    man = manifest_for(rtx, toolchain={"nvcc": "Cuda compilation tools, release 12.8, V12.8.61"})
    req = requirements_of(man)
    assert req.gpu_vendor == "nvidia" and req.gpu_archs == ("sm_120",) and req.gpu_ptx == ()
    assert req.cuda == "12.8" and req.cuda_driver_min == "525.60.13"
    assert "driver >= 525.60.13" in req.describe()
    h100 = load("2x-h100")
    assert req.unmet(dataclasses.replace(rtx, libc=None)) == []
    problems = req.unmet(dataclasses.replace(h100, cpu=rtx.cpu))
    assert any("device code for sm_120 only" in p and "sm_90" in p for p in problems)
    old = dataclasses.replace(rtx, gpus=(dataclasses.replace(rtx.gpus[0], driver="470.82.01"),))
    assert any("driver >= 525.60.13" in p for p in req.unmet(old))
    none = dataclasses.replace(rtx, gpus=())
    assert req.unmet(none) == ["this build needs an NVIDIA GPU (sm_120), this host has none"]


def test_portable_cuda_ptx_covers_newer_gpus() -> None:
    h100 = load("2x-h100")
    req = requirements_of(manifest_for(h100, PlanOptions(portable=True)))
    assert req.gpu_archs == ("sm_90",) and req.gpu_ptx == ("sm_90",)
    newer = dataclasses.replace(h100, gpus=(GpuInfo("nvidia", 0, "B200", "sm_100", 1 << 37, "580.1.1"),))
    assert req.unmet(newer) == []


def test_refusal_messages_name_the_missing_flag() -> None:
    zen4 = with_flags(load("zen4-epyc"))
    req = requirements_of(manifest_for(zen4))
    assert req.unmet(zen4) == []
    assert req.unmet(with_flags(zen4, drop="avx512f")) == ["this build needs avx512f, this CPU lacks it"]
    assert req.unmet(with_flags(zen4, drop="avx512f avx512bw")) == [
        "this build needs avx512bw, avx512f, this CPU lacks them"
    ]
    assert req.unmet(dataclasses.replace(zen4, libc="glibc 2.31")) == [
        "this build needs glibc >= 2.36, this host has glibc 2.31"
    ]
    assert req.unmet(dataclasses.replace(zen4, libc="musl 1.2")) == [
        "this build needs glibc >= 2.36, this host has musl 1.2"
    ]
    assert req.unmet(dataclasses.replace(zen4, libc=None)) == []  # unknown: the smoke test decides
    assert Requirements.from_dict(json.loads(json.dumps(req.to_dict()))) == req


# --------------------------------------------------------------------------- pack / read / index
def fake_store(tmp_path: Path, manifest: Mapping[str, Any]) -> Paths:
    paths = Paths(Scope.USER, tmp_path / "home", tmp_path / "config", tmp_path / "units")
    stage = tmp_path / "stage"
    for rel, data in {
        "bin/llama-server": b"#!server",
        "bin/llama-quantize": b"#!quantize",
        "lib/libggml.so.0": b"ELF-ish",
        "share/nativellm/ggml-vocab-llama-spm.gguf": b"vocab",
    }.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    (stage / "bin" / "llama-server").chmod(0o755)
    (stage / "lib" / "libggml.so").symlink_to("libggml.so.0")
    binaries = {
        rel: sha256_file(stage / rel)
        for rel in ("bin/llama-server", "bin/llama-quantize", "lib/libggml.so.0")
    }
    rec = Store(paths).install(stage, {**manifest, "binaries": binaries})
    Store(paths).set_current(rec.id)
    return paths


def signing_key(tmp_path: Path) -> Path:
    """A signing key whose public half both test homes (config/ and oc/) trust."""
    key = tmp_path / "keys" / "fleet"
    if not key.exists():
        key.parent.mkdir(parents=True)
        line = signing.generate_key(key, "test").public_line
        for config in (tmp_path / "config", tmp_path / "oc"):
            config.mkdir(parents=True, exist_ok=True)
            (config / "trusted-keys").write_text(f"# test fleet key\n{line}\n")
    return key


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Paths, Path, HostProfile]:
    zen4 = with_flags(load("zen4-epyc"))
    paths = fake_store(tmp_path, manifest_for(zen4))
    out = tmp_path / "out"
    out.mkdir()
    res = pack(paths, PackOptions("cpu-0123456789ab", out, sign_key=signing_key(tmp_path)))
    assert res.signed_by is not None and res.path.with_name(res.path.name + ".sig").is_file()
    return paths, res.path, zen4


def test_pack_is_reproducible_and_writes_a_sidecar(packed: tuple[Paths, Path, HostProfile]) -> None:
    paths, path, _ = packed
    assert path.name.startswith("nativellm-cpu-0123456789ab-x86_64-avx512.tar.")
    digest = sha256_file(path)
    assert path.with_name(path.name + ".sha256").read_text() == f"{digest}  {path.name}\n"
    key = signing_key(path.parent.parent)
    again = pack(paths, PackOptions("cpu-0123456789ab", path.parent, sign_key=key))
    assert again.sha256 == digest and again.changed is False  # ed25519 is deterministic: same .sig
    meta = read_meta(path)
    assert meta["schema"] == ARTIFACT_SCHEMA and meta["build_id"] == "cpu-0123456789ab"
    assert meta["fingerprint"] == fingerprint(packed[2]).key and meta["version"] == DEFAULT_REF
    assert "avx512f" in meta["requirements"]["cpu_flags"]


def test_pack_falls_back_to_gzip_without_zstandard(
    packed: tuple[Paths, Path, HostProfile], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    paths = packed[0]
    monkeypatch.setattr(artifacts, "_zstd", lambda: None)
    (tmp_path / "gz").mkdir()
    res = pack(paths, PackOptions(None, tmp_path / "gz"))  # None: the current build
    assert res.path.name.endswith(".tar.gz") and res.path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_meta(res.path)["build_id"] == "cpu-0123456789ab"
    top = artifacts._extract(res.path, tmp_path / "x")
    assert (top / "bin" / "llama-server").read_bytes() == b"#!server"
    assert (top / "lib" / "libggml.so").is_symlink()
    with pytest.raises(ArtifactError, match="zstandard"):
        pack(paths, PackOptions(None, tmp_path / "gz", compression="zst"))


def test_pack_without_a_current_build_says_so(tmp_path: Path) -> None:
    paths = Paths(Scope.USER, tmp_path / "home", tmp_path / "c", tmp_path / "u")
    with pytest.raises(NotFoundError, match="no current build"):
        pack(paths, PackOptions())


def test_index_maps_fingerprint_and_version_and_is_idempotent(
    packed: tuple[Paths, Path, HostProfile],
) -> None:
    _, path, zen4 = packed
    key = signing_key(path.parent.parent)
    first = write_index(path.parent, key)
    assert first.changed and len(first.entries) == 1 and first.signed_by
    assert write_index(path.parent, key).changed is False
    doc = json.loads(first.path.read_text())
    slot = doc["fingerprints"][fingerprint(zen4).key][DEFAULT_REF][0]
    assert slot["file"] == path.name and slot["sha256"] == sha256_file(path) and slot["size"] > 0
    trust = signing.load_trust(packed[0])
    index = load_index(str(path.parent), trust, SilentReporter())
    assert index.signed_by == first.signed_by
    assert index.resolve(index.entries[0]) == str(path)


def test_index_refuses_a_file_that_does_not_match_its_sidecar(
    packed: tuple[Paths, Path, HostProfile],
) -> None:
    path = packed[1]
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "  x\n")
    with pytest.raises(ArtifactError, match="does not match"):
        write_index(path.parent)


# --------------------------------------------------------------------------- install refusals (before any process)
def other_home(tmp_path: Path) -> Paths:
    return Paths(Scope.USER, tmp_path / "other", tmp_path / "oc", tmp_path / "ou")


def test_install_refuses_a_host_without_a_required_flag(
    packed: tuple[Paths, Path, HostProfile], tmp_path: Path
) -> None:
    _, path, zen4 = packed
    host = with_flags(zen4, drop="avx512f")
    with pytest.raises(ArtifactError, match=r"^this build needs avx512f, this CPU lacks it$") as exc:
        artifacts.install_locked(
            other_home(tmp_path), InstallOptions(str(path)), host, host, SilentReporter()
        )
    assert exc.value.exit_code == 14
    assert not (tmp_path / "other" / "builds").exists()


def test_install_checks_the_sha256(packed: tuple[Paths, Path, HostProfile], tmp_path: Path) -> None:
    _, path, zen4 = packed
    with pytest.raises(ArtifactError, match="is not the signed sha256"):
        opts = InstallOptions(str(path), sha256="0" * 64)
        artifacts.install_locked(other_home(tmp_path), opts, zen4, zen4, SilentReporter())
    path.with_name(path.name + ".sig").unlink()  # unsigned: only --insecure-unsigned goes on
    with pytest.raises(ArtifactError, match="sha256 of"):
        opts = InstallOptions(str(path), sha256="0" * 64, insecure_unsigned=True)
        artifacts.install_locked(other_home(tmp_path), opts, zen4, zen4, SilentReporter())
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ArtifactError, match="no sha256"):
        opts = InstallOptions(str(path), insecure_unsigned=True)
        artifacts.install_locked(other_home(tmp_path), opts, zen4, zen4, SilentReporter())


def test_install_of_an_installed_build_is_a_noop(packed: tuple[Paths, Path, HostProfile]) -> None:
    paths, path, zen4 = packed  # the build is in this store already (and current)
    res = artifacts.install_locked(paths, InstallOptions(str(path)), zen4, zen4, SilentReporter())
    assert res.changed is False and res.installed is False
    assert "already installed" in res.notes[0]


def evil_tar(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "nativellm-evil.tar.gz"
    meta = json.dumps({"schema": ARTIFACT_SCHEMA}).encode()
    with tarfile.open(path, "w:gz") as tar:
        ti = tarfile.TarInfo("cpu-0123456789ab/artifact.json")
        ti.size = len(meta)
        tar.addfile(ti, io.BytesIO(meta))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return path


def _member(name: str, link: str | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    if link is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    return ti


@pytest.mark.parametrize(
    ("name", "link"),
    [
        ("../escape", None),
        ("cpu-0123456789ab/../../escape", None),
        ("cpu-0123456789ab/lib/x", "../../../etc"),
        ("cpu-0123456789ab/lib/y", "/etc/passwd"),
    ],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str, link: str | None) -> None:
    path = evil_tar(tmp_path, _member(name, link))
    with pytest.raises(ArtifactError, match="unsafe path"):
        artifacts._extract(path, tmp_path / "into")
    assert not (tmp_path / "escape").exists()


# --------------------------------------------------------------------------- matching an index entry
def entry_for(profile: HostProfile, opts: PlanOptions = DEFAULT, **extra: Any) -> dict[str, Any]:
    meta = artifacts.artifact_meta(manifest_for(profile, opts, **extra))
    return {**meta, "file": f"nativellm-{meta['build_id']}-{meta['variant']}.tar.zst", "sha256": "0" * 64}


def wanted_for(profile: HostProfile, opts: PlanOptions = DEFAULT) -> Any:
    def wanted(dropped: frozenset[str]) -> Mapping[str, Any]:
        return plan_build(profile, dataclasses.replace(opts, disable=opts.disable | dropped)).to_dict()

    return wanted


def any_version(src: Mapping[str, Any]) -> bool:
    return True


def test_select_prefers_the_entry_planned_for_this_host() -> None:
    zen4 = with_flags(load("zen4-epyc"))
    entries = (entry_for(zen4, PlanOptions(baseline=True)), entry_for(zen4))
    sel = select_artifact(entries, zen4, wanted_for(zen4), any_version)
    assert sel.entry is entries[1]
    assert any("plan differs" in r for r in sel.rejected)


def test_select_falls_back_when_nothing_matches() -> None:
    zen4 = with_flags(load("zen4-epyc"))
    avx2_host = with_flags(zen4, drop="avx512f avx512bw avx512cd avx512dq avx512vl")
    sel = select_artifact((entry_for(zen4),), avx2_host, wanted_for(avx2_host), any_version)
    assert sel.entry is None and "this CPU lacks them" in sel.rejected[0]
    sel = select_artifact((entry_for(zen4),), zen4, wanted_for(zen4), lambda src: False)
    assert sel.entry is None and "not the requested version" in sel.rejected[0]
    sel = select_artifact((), zen4, wanted_for(zen4), any_version)
    assert sel.entry is None and sel.rejected == ()


def test_select_accepts_a_build_whose_host_dropped_a_family_after_a_crash() -> None:
    spr = with_flags(load("sapphire-rapids"))
    no_amx = PlanOptions(disable=frozenset({"amx"}))
    dropped = entry_for(spr, no_amx, fallbacks=[{"dropped": "amx", "reason": "SIGILL"}])
    assert dropped["dropped"] == ["amx"]
    sel = select_artifact((dropped,), spr, wanted_for(spr), any_version)
    assert sel.entry is dropped


def test_source_matcher_compares_versions() -> None:
    git = {
        "kind": "git",
        "repo": "https://github.com/ggml-org/llama.cpp",
        "ref": DEFAULT_REF,
        "commit": "ab" * 20,
    }
    assert artifact_index.source_matcher(SourceRequest(ref=DEFAULT_REF))(git)
    assert artifact_index.source_matcher(SourceRequest())(git)  # the pinned default tag
    assert not artifact_index.source_matcher(SourceRequest(ref="b7100"))(git)
    assert artifact_index.source_matcher(SourceRequest(ref="abab"))(git)  # a commit prefix
    tar = {"kind": "tarball", "sha256": "c" * 64}
    assert artifact_index.source_matcher(SourceRequest(tarball="https://x/y.tgz", sha256="C" * 64))(tar)
    assert not artifact_index.source_matcher(SourceRequest(tarball="https://x/y.tgz"))(tar)


# --------------------------------------------------------------------------- build --from-index (no compile, no process)
def test_from_index_on_a_host_that_has_the_build_needs_no_download(
    packed: tuple[Paths, Path, HostProfile],
) -> None:
    from nativellm.build.options import BuildOptions

    paths, path, zen4 = packed
    write_index(path.parent, signing_key(path.parent.parent))
    path.unlink()  # a download would fail: the build is recognised by its id
    opts = BuildOptions(from_index=str(path.parent))
    got, why = artifact_index.build_from_index(paths, opts, plan_build(zen4), zen4, zen4, SilentReporter())
    assert why == "" and got is not None
    assert got.build_id == "cpu-0123456789ab" and got.cached and got.changed is False


def test_from_index_dry_run_and_fallback(packed: tuple[Paths, Path, HostProfile], tmp_path: Path) -> None:
    from nativellm.build.options import BuildOptions

    _, path, zen4 = packed
    write_index(path.parent, signing_key(tmp_path))
    other = other_home(tmp_path)
    dry = BuildOptions(from_index=str(path.parent), dry_run=True)
    got, _ = artifact_index.build_from_index(other, dry, plan_build(zen4), zen4, zen4, SilentReporter())
    assert got is not None and "would install artifact" in got.notes[0]
    assert not (tmp_path / "other" / "builds").exists()
    baseline = plan_build(zen4, PlanOptions(baseline=True))
    opts = BuildOptions(from_index=str(path.parent), plan=PlanOptions(baseline=True))
    got, why = artifact_index.build_from_index(other, opts, baseline, zen4, zen4, SilentReporter())
    assert got is None and "plan differs" in why and why.endswith("compiling")
    newer = BuildOptions(from_index=str(path.parent), source=SourceRequest(ref="b7100"))
    got, why = artifact_index.build_from_index(other, newer, plan_build(zen4), zen4, zen4, SilentReporter())
    assert got is None and "not the requested version" in why
