"""Signed artifacts and indexes (issue 14, finding 2): keys, statements, verdicts and refusals
before anything is unpacked or run. No processes; real keys, real packed tarballs."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from nativellm.build import artifacts, signing
from nativellm.build import index as artifact_index
from nativellm.build.artifacts import InstallOptions, PackOptions, pack
from nativellm.build.index import load_index, write_index
from nativellm.build.options import BuildOptions
from nativellm.build.plan import plan_build
from nativellm.errors import ArtifactError, NotFoundError, UsageError
from nativellm.fsutil import sha256_file
from nativellm.hardware.profile import HostProfile
from nativellm.paths import Paths, Scope
from nativellm.progress import SilentReporter
from tests.unit.test_artifacts import fake_store, load, manifest_for, with_flags


class Warnings(SilentReporter):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def home(tmp_path: Path, name: str, *trusted: Path) -> Paths:
    """A store whose config trusts the .pub of each given key."""
    paths = Paths(Scope.USER, tmp_path / name / "data", tmp_path / name / "config", tmp_path / name / "units")
    paths.config.mkdir(parents=True, exist_ok=True)
    lines = [k.with_name(k.name + ".pub").read_text() for k in trusted]
    (paths.config / "trusted-keys").write_text("# fleet keys\n\n" + "".join(lines))
    return paths


def key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "keys" / name
    path.parent.mkdir(exist_ok=True)
    signing.generate_key(path, name)
    return path


@pytest.fixture
def zen4() -> HostProfile:
    return with_flags(load("zen4-epyc"))


@pytest.fixture
def signed(tmp_path: Path, zen4: HostProfile) -> Path:
    """An artifact packed and signed with key `old`."""
    paths = fake_store(tmp_path, manifest_for(zen4))
    out = tmp_path / "out"
    out.mkdir()
    return pack(paths, PackOptions(None, out, sign_key=key(tmp_path, "old"))).path


def untouched(paths: Paths) -> None:
    """Nothing was fetched, unpacked or installed: no temp dir, no build."""
    assert not (paths.builds.exists() and any(paths.builds.iterdir()))
    assert not list(paths.work.glob(".artifact-*")) if paths.work.exists() else True


# --------------------------------------------------------------------------- keys and statements
def test_statement_is_canonical() -> None:
    got = signing.statement("artifact", "nativellm-x.tar.zst", "ab" * 32, "SHA256:k")
    want = (
        b'{"file":"nativellm-x.tar.zst","key":"SHA256:k","kind":"artifact",'
        b'"schema":"nativellm.signature/1","sha256":"' + b"ab" * 32 + b'"}'
    )
    assert got == want


def test_keygen_writes_a_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    res = signing.generate_key(tmp_path / "k", "fleet 2026")
    assert stat.S_IMODE(os.stat(res.private).st_mode) == 0o600
    assert res.public.read_text() == res.public_line + "\n"
    assert res.public_line.startswith("ssh-ed25519 AAAA") and res.public_line.endswith(" fleet 2026")
    loaded = signing.load_signing_key(res.private)
    assert loaded.id == res.key_id and res.key_id.startswith("SHA256:")
    before = res.private.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        signing.generate_key(tmp_path / "k")
    assert res.private.read_bytes() == before
    (tmp_path / "only.pub").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        signing.generate_key(tmp_path / "only")
    assert not (tmp_path / "only").exists()


def test_bad_signing_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        signing.load_signing_key(tmp_path / "nope")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(ArtifactError, match="not a usable private key"):
        signing.load_signing_key(tmp_path / "junk")


def test_trusted_keys_file_takes_comments_and_several_keys_and_refuses_junk(tmp_path: Path) -> None:
    a, b = key(tmp_path, "a"), key(tmp_path, "b")
    text = "# rotation\n\n" + a.with_name("a.pub").read_text() + "  " + b.with_name("b.pub").read_text()
    keys = signing.parse_trusted_keys(text, "tk")
    assert [k.comment for k in keys] == ["a", "b"] and keys[0].origin == "tk:3"
    with pytest.raises(ArtifactError, match=r"^tk:2 is not an ed25519 public key"):
        signing.parse_trusted_keys("# ok\nssh-rsa AAAAB3Nza x\n", "tk")
    with pytest.raises(ArtifactError, match=r"^tk:1 is not a valid public key"):
        signing.parse_trusted_keys("ssh-ed25519 AAAAnotbase64!!\n", "tk")


# --------------------------------------------------------------------------- verdicts
def test_sign_and_verify_and_each_way_to_fail(tmp_path: Path) -> None:
    k = signing.load_signing_key(key(tmp_path, "k"))
    other = key(tmp_path, "other")
    trust = signing.load_trust(home(tmp_path, "h", k.path))
    sha = "cd" * 32
    sig = signing.signature_text(k, "artifact", "a.tar.gz", sha)
    ok = signing.check_signature(sig, "artifact", "a.tar.gz", trust)
    assert ok.status is signing.Status.VERIFIED and ok.sha256 == sha and ok.key == k.id
    assert signing.check_signature(None, "artifact", "a.tar.gz", trust).status is signing.Status.UNSIGNED
    # renamed, or an index signature presented for an artifact: another statement
    assert signing.check_signature(sig, "artifact", "b.tar.gz", trust).status is signing.Status.INVALID
    assert signing.check_signature(sig, "index", "a.tar.gz", trust).status is signing.Status.INVALID
    doc = json.loads(sig)
    forged = json.dumps({**doc, "sha256": "ee" * 32})  # the signed sha256 changed
    assert signing.check_signature(forged, "artifact", "a.tar.gz", trust).status is signing.Status.INVALID
    flipped = bytearray(base64.b64decode(doc["signature"]))
    flipped[0] ^= 1
    bad = json.dumps({**doc, "signature": base64.b64encode(bytes(flipped)).decode()})
    assert signing.check_signature(bad, "artifact", "a.tar.gz", trust).status is signing.Status.INVALID
    assert signing.check_signature("{}", "artifact", "a.tar.gz", trust).status is signing.Status.INVALID
    wrong = signing.load_trust(home(tmp_path, "w", other))
    assert signing.check_signature(sig, "artifact", "a.tar.gz", wrong).status is signing.Status.UNTRUSTED


def test_enforce_policy() -> None:
    trust = signing.Trust((), (Path("/etc/nativellm/trusted-keys"),))
    insecure = signing.Trust((), trust.files, insecure_unsigned=True)
    unsigned = signing.Verdict(signing.Status.UNSIGNED, "a is not signed")
    invalid = signing.Verdict(signing.Status.INVALID, "the signature of a does not verify")
    rep = Warnings()
    with pytest.raises(ArtifactError, match="not signed: refusing /srv/a") as exc:
        signing.enforce(unsigned, "/srv/a", trust, rep)
    assert "--insecure-unsigned" in exc.value.hint and "trusted-keys" in exc.value.hint
    assert signing.enforce(unsigned, "/srv/a", insecure, rep) is None
    assert signing.enforce(unsigned, "https://x/a", insecure, rep) is None
    assert len(rep.warnings) == 2 and rep.warnings[0].startswith("--insecure-unsigned: a is not signed")
    # plain http without a valid signature: refused even with --insecure-unsigned
    with pytest.raises(ArtifactError, match="plain http"):
        signing.enforce(unsigned, "http://x/a", insecure, rep)
    # a signature that does not verify is evidence of tampering: refused even with the opt-out
    with pytest.raises(ArtifactError, match="does not verify"):
        signing.enforce(invalid, "/srv/a", insecure, rep)
    assert len(rep.warnings) == 2


# --------------------------------------------------------------------------- install refusals, before extraction
def test_a_signed_artifact_passes_the_check(signed: Path, tmp_path: Path, zen4: HostProfile) -> None:
    paths = home(tmp_path, "host", tmp_path / "keys" / "old")
    sha, by = artifacts.trusted_sha(paths, InstallOptions(str(signed)), SilentReporter())
    assert sha == sha256_file(signed) and by == signing.load_signing_key(tmp_path / "keys" / "old").id


@pytest.mark.parametrize("case", ["unsigned", "wrong key", "no keys", "tampered archive", "tampered sig"])
def test_install_refuses_before_anything_is_unpacked(
    signed: Path, tmp_path: Path, zen4: HostProfile, case: str
) -> None:
    trusted = (
        ()
        if case == "no keys"
        else (key(tmp_path, "new") if case == "wrong key" else tmp_path / "keys" / "old",)
    )
    paths = home(tmp_path, "host", *trusted)
    sig = signed.with_name(signed.name + ".sig")
    if case == "unsigned":
        sig.unlink()
    if case == "tampered archive":
        data = bytearray(signed.read_bytes())
        data[len(data) // 2] ^= 0xFF
        signed.write_bytes(bytes(data))
        # the sha256 sidecar is on the same server: an attacker rewrites it too
        signed.with_name(signed.name + ".sha256").write_text(f"{sha256_file(signed)}  {signed.name}\n")
    if case == "tampered sig":
        doc = json.loads(sig.read_text())
        sig.write_text(json.dumps({**doc, "sha256": sha256_file(signed).replace("a", "b")}))
    with pytest.raises(ArtifactError) as exc:
        artifacts.install_locked(paths, InstallOptions(str(signed)), zen4, zen4, SilentReporter())
    assert exc.value.exit_code == 14 and exc.value.hint
    want = {
        "unsigned": "is not signed",
        "wrong key": "which is not a trusted key",
        "no keys": "which is not a trusted key",
        "tampered archive": "sha256 of",
        "tampered sig": "does not verify",
    }[case]
    assert want in exc.value.message
    untouched(paths)


def test_insecure_unsigned_warns_and_proceeds(signed: Path, tmp_path: Path, zen4: HostProfile) -> None:
    signed.with_name(signed.name + ".sig").unlink()
    paths = home(tmp_path, "host")
    rep = Warnings()
    with pytest.raises(ArtifactError, match="is not signed"):
        artifacts.trusted_sha(paths, InstallOptions(str(signed)), rep)
    sha, by = artifacts.trusted_sha(paths, InstallOptions(str(signed), insecure_unsigned=True), rep)
    assert sha == sha256_file(signed) and by is None  # from the .sha256 sidecar, as before
    assert len(rep.warnings) == 1 and "without a verified signature" in rep.warnings[0]


def test_the_opt_out_does_not_cover_a_forged_signature(signed: Path, tmp_path: Path) -> None:
    sig = signed.with_name(signed.name + ".sig")
    sig.write_text(sig.read_text().replace(signed.name, "nativellm-other.tar.zst"))
    paths = home(tmp_path, "host", tmp_path / "keys" / "old")
    with pytest.raises(ArtifactError, match="signs artifact 'nativellm-other.tar.zst'"):
        artifacts.trusted_sha(paths, InstallOptions(str(signed), insecure_unsigned=True), SilentReporter())


def test_a_sha256_that_contradicts_the_signature_is_refused(signed: Path, tmp_path: Path) -> None:
    paths = home(tmp_path, "host", tmp_path / "keys" / "old")
    with pytest.raises(ArtifactError, match="is not the signed sha256"):
        artifacts.trusted_sha(paths, InstallOptions(str(signed), sha256="0" * 64), SilentReporter())


def test_key_rotation(signed: Path, tmp_path: Path, zen4: HostProfile) -> None:
    """Trust old+new, sign with new, drop old: each step installs; then an old signature is refused."""
    old, new = tmp_path / "keys" / "old", key(tmp_path, "new")
    both = home(tmp_path, "both", old, new)
    assert artifacts.trusted_sha(both, InstallOptions(str(signed)), SilentReporter())[0]
    paths = fake_store(tmp_path / "b", manifest_for(zen4))
    resigned = pack(paths, PackOptions(None, signed.parent, sign_key=new))
    assert resigned.path == signed and resigned.changed  # same bytes, new .sig
    new_only = home(tmp_path, "new-only", new)
    assert (
        artifacts.trusted_sha(new_only, InstallOptions(str(signed)), SilentReporter())[1]
        == resigned.signed_by
    )
    old_only = home(tmp_path, "old-only", old)
    with pytest.raises(ArtifactError, match="not a trusted key"):
        artifacts.trusted_sha(old_only, InstallOptions(str(signed)), SilentReporter())


def test_unsigned_repack_drops_a_stale_signature_and_env_key_signs(
    tmp_path: Path, zen4: HostProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = fake_store(tmp_path, manifest_for(zen4))
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(key(tmp_path, "env")))
    res = pack(paths, PackOptions(None, out))
    assert res.signed_by is not None
    sig = res.path.with_name(res.path.name + ".sig")
    monkeypatch.delenv(signing.SIGNING_KEY_ENV)
    assert pack(paths, PackOptions(None, out)).changed is False and sig.is_file()  # same bytes: still valid
    sig.write_text(json.dumps({"sha256": "0" * 64, "file": res.path.name}))
    assert pack(paths, PackOptions(None, out)).changed is True and not sig.exists()


# --------------------------------------------------------------------------- indexes
def test_index_signature_is_verified(signed: Path, tmp_path: Path, zen4: HostProfile) -> None:
    old = tmp_path / "keys" / "old"
    res = write_index(signed.parent, old)
    assert res.signed_by and (signed.parent / "index.json.sig").is_file()
    host = home(tmp_path, "host", old)
    trust = signing.load_trust(host)
    assert load_index(str(signed.parent), trust, SilentReporter()).signed_by == res.signed_by
    # one changed byte of the index (say, an entry's sha256) and it is refused
    text = res.path.read_text()
    res.path.write_text(text.replace(res.entries[0]["sha256"], "0" * 64))
    with pytest.raises(ArtifactError, match="not the index its signature signs"):
        load_index(str(signed.parent), trust, SilentReporter())
    res.path.write_text(text)
    (signed.parent / "index.json.sig").unlink()
    with pytest.raises(ArtifactError, match="index.json is not signed"):
        load_index(str(signed.parent), trust, SilentReporter())
    rep = Warnings()
    insecure = signing.load_trust(host, insecure_unsigned=True)
    assert load_index(str(signed.parent), insecure, rep).signed_by is None and rep.warnings


def test_from_index_refuses_an_untrusted_index_before_any_install(
    signed: Path, tmp_path: Path, zen4: HostProfile
) -> None:
    write_index(signed.parent, key(tmp_path, "rogue"))
    host = home(tmp_path, "host", tmp_path / "keys" / "old")
    opts = BuildOptions(from_index=str(signed.parent))
    with pytest.raises(ArtifactError, match="not a trusted key"):
        artifact_index.build_from_index(host, opts, plan_build(zen4), zen4, zen4, SilentReporter())
    untouched(host)


def test_a_signed_index_vouches_for_its_entries(signed: Path, tmp_path: Path, zen4: HostProfile) -> None:
    """An entry of a verified index needs no .sig of its own; its sha256 is still checked."""
    old = tmp_path / "keys" / "old"
    write_index(signed.parent, old)
    signed.with_name(signed.name + ".sig").unlink()
    data = bytearray(signed.read_bytes())
    data[-100] ^= 0xFF
    signed.write_bytes(bytes(data))  # the archive no longer has the signed index's sha256
    host = home(tmp_path, "host", old)
    opts = BuildOptions(from_index=str(signed.parent))
    with pytest.raises(ArtifactError, match="sha256 of"):
        artifact_index.build_from_index(host, opts, plan_build(zen4), zen4, zen4, SilentReporter())
    untouched(host)


def test_pack_single_binary_signs_too(tmp_path: Path) -> None:
    from nativellm.build.single import pack_single_binary
    from tests.unit.test_single_binary import elf, single_store

    paths = single_store(tmp_path, elf(["libc.so.6"]))
    out = tmp_path / "out"
    out.mkdir()
    k = key(tmp_path, "k")
    res = pack_single_binary(paths, PackOptions(None, out, sign_key=k))
    trust = signing.load_trust(home(tmp_path, "h", k))
    sig = res.path.with_name(res.path.name + ".sig").read_text()
    verdict = signing.check_signature(sig, "artifact", res.path.name, trust)
    assert verdict.status is signing.Status.VERIFIED and verdict.sha256 == res.sha256 == sha256_file(res.path)
    assert res.signed_by == verdict.key
    with pytest.raises(NotFoundError, match="signing key"):  # a missing key fails before any work
        pack_single_binary(paths, PackOptions(None, tmp_path / "nowhere", sign_key=tmp_path / "nokey"))
