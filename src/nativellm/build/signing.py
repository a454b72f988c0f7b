"""Signed artifacts and indexes (issue 14): ed25519 through the `cryptography` package.

Keys are OpenSSH ed25519 keys, so `ssh-keygen -t ed25519 -N ''` makes one too; `nativellm
artifacts keygen PATH` writes PATH (private, 0600) and PATH.pub (`ssh-ed25519 AAAA... comment`).
A key's id is its OpenSSH fingerprint (`SHA256:...`, what `ssh-keygen -lf PATH.pub` prints).

A signature is a detached sidecar, `<file>.sig`: one JSON object holding a statement and the
base64 signature of the statement's canonical bytes. The statement binds what was signed
(`artifact` or `index`), the file's name, its sha256 and the signing key's id:

    {"file":"nativellm-....tar.zst","key":"SHA256:...","kind":"artifact",
     "schema":"nativellm.signature/1","sha256":"<hex>"}

(sorted keys, no spaces, ASCII). A verifier never trusts the statement it reads: it rebuilds it
from what it expects (the kind, the name it is installing) and the sha256 and key id the sidecar
names, verifies it with that key only if the key is in the operator's trusted-keys file, and then
checks the file's own sha256 against the signed one before anything is unpacked or run.

Hosts trust the keys listed in `<config>/trusted-keys` (user scope; with NATIVELLM_HOME,
`$NATIVELLM_HOME/config/trusted-keys`) and `/etc/nativellm/trusted-keys` (both scopes): one
OpenSSH public key per line, `#` comments. Several keys may be trusted at once, which is what makes
key rotation possible (README, "Key rotation").
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nativellm.errors import ArtifactError, NotFoundError, UsageError
from nativellm.fsutil import write_if_changed
from nativellm.paths import Paths
from nativellm.progress import Reporter

SIGNATURE_SCHEMA = "nativellm.signature/1"
SIG_SUFFIX = ".sig"
SIGNING_KEY_ENV = "NATIVELLM_SIGNING_KEY"
SYSTEM_TRUSTED_KEYS = Path("/etc/nativellm/trusted-keys")
TRUSTED_KEYS_NAME = "trusted-keys"
MAX_SIG_BYTES = 64 * 1024  # a sidecar is ~300 bytes; anything far bigger is not one
KINDS = ("artifact", "index")


# --------------------------------------------------------------------------- keys
def key_id(public: Ed25519PublicKey) -> str:
    """The OpenSSH fingerprint of a public key: `SHA256:<unpadded base64>` (ssh-keygen -l)."""
    blob = base64.b64decode(
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_line(public: Ed25519PublicKey, comment: str = "") -> str:
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".rstrip()


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    id: str
    path: Path


@dataclass(frozen=True)
class KeygenOutcome:
    private: Path
    public: Path
    key_id: str
    public_line: str


def generate_key(path: Path, comment: str = "") -> KeygenOutcome:
    """Write a new ed25519 key: PATH (OpenSSH private key, 0600) and PATH.pub (one line).
    Never overwrites either file: a lost signing key can't be recovered, only rotated."""
    path = path.expanduser()
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p} already exists", "choose another path; keygen never overwrites a key")
    if any(ord(c) < 32 or ord(c) == 127 for c in comment):
        raise UsageError("the key comment has a control character", "use a plain one-line comment")
    if not path.parent.is_dir():
        raise NotFoundError(f"{path.parent} is not a directory", "create it first")
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    # O_EXCL: a file that appeared since the check above is not overwritten either.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    line = public_line(key.public_key(), comment)
    fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(line + "\n")
    return KeygenOutcome(path, pub, key_id(key.public_key()), line)


def load_signing_key(path: Path) -> SigningKey:
    """An unencrypted ed25519 private key, OpenSSH or PEM (PKCS#8) format."""
    path = path.expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"signing key {path} does not exist", "make one with `nativellm artifacts keygen PATH`"
        ) from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot read signing key {path}: {exc.strerror}", "check its permissions"
        ) from None
    hint = "use an unencrypted ed25519 key from `nativellm artifacts keygen PATH` or `ssh-keygen -t ed25519 -N ''`"
    try:
        key: object
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ArtifactError(f"{path} is not a usable private key: {exc}", hint) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path} is not an ed25519 key", hint)
    return SigningKey(key, key_id(key.public_key()), path)


def signing_key_path(given: Path | None) -> Path | None:
    """--sign-key FILE, else $NATIVELLM_SIGNING_KEY, else None (unsigned)."""
    if given is not None:
        return given
    env = os.environ.get(SIGNING_KEY_ENV, "").strip()
    return Path(env) if env else None


@dataclass(frozen=True)
class TrustedKey:
    id: str
    public: Ed25519PublicKey
    comment: str
    origin: str  # FILE:LINE


def parse_trusted_keys(text: str, origin: str) -> tuple[TrustedKey, ...]:
    """One OpenSSH ed25519 public key per line; `#` starts a comment; blank lines are skipped.
    A line that is not a key is an error, not skipped: a typo must not silently drop trust."""
    keys: list[TrustedKey] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{origin}:{n}"
        parts = line.split(None, 2)
        if parts[0] != "ssh-ed25519" or len(parts) < 2:
            raise ArtifactError(
                f"{where} is not an ed25519 public key (`ssh-ed25519 AAAA... comment`)",
                "put one PATH.pub line from `nativellm artifacts keygen` per line; # for comments",
            )
        try:
            public = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        except (ValueError, UnsupportedAlgorithm, binascii.Error) as exc:
            raise ArtifactError(
                f"{where} is not a valid public key: {exc}", "copy the .pub line again"
            ) from None
        if not isinstance(public, Ed25519PublicKey):
            raise ArtifactError(f"{where} is not an ed25519 key", "copy the .pub line again")
        keys.append(TrustedKey(key_id(public), public, parts[2] if len(parts) > 2 else "", where))
    return tuple(keys)


def trusted_key_files(paths: Paths) -> tuple[Path, ...]:
    """Where this scope's trusted keys are: its own config dir, then the system-wide file."""
    files = [paths.config / TRUSTED_KEYS_NAME]
    if SYSTEM_TRUSTED_KEYS not in files:
        files.append(SYSTEM_TRUSTED_KEYS)
    return tuple(files)


@dataclass(frozen=True)
class Trust:
    """What a host accepts: the operator's keys, and whether unsigned input may pass (with a warning)."""

    keys: tuple[TrustedKey, ...]
    files: tuple[Path, ...]  # the trusted-keys files consulted, for messages
    insecure_unsigned: bool = False

    def where(self) -> str:
        return self.files[0].as_posix() if self.files else "<config>/trusted-keys"


def load_trust(paths: Paths, insecure_unsigned: bool = False) -> Trust:
    keys: list[TrustedKey] = []
    files = trusted_key_files(paths)
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"cannot read the trusted keys in {f}: {exc}", "fix or remove the file"
            ) from None
        keys.extend(parse_trusted_keys(text, str(f)))
    return Trust(tuple(keys), files, insecure_unsigned)


# --------------------------------------------------------------------------- statements
def statement(kind: str, file: str, sha256: str, key: str) -> bytes:
    """The canonical bytes that are signed: sorted keys, no whitespace, ASCII."""
    doc = {"schema": SIGNATURE_SCHEMA, "kind": kind, "file": file, "sha256": sha256, "key": key}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature_text(key: SigningKey, kind: str, file: str, sha256: str) -> str:
    """The `.sig` sidecar of one file. ed25519 is deterministic: the same input gives the same text."""
    assert kind in KINDS
    sig = key.private.sign(statement(kind, file, sha256, key.id))
    doc = {
        "schema": SIGNATURE_SCHEMA,
        "kind": kind,
        "file": file,
        "sha256": sha256,
        "key": key.id,
        "signature": base64.b64encode(sig).decode(),
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_signature(key: SigningKey, path: Path, kind: str, sha256: str) -> bool:
    """Write `<path>.sig` for `path` (whose sha256 is given); True if it changed."""
    return write_if_changed(sig_path(path), signature_text(key, kind, path.name, sha256))


def sig_path(path: Path) -> Path:
    return path.with_name(path.name + SIG_SUFFIX)


def drop_stale_signature(path: Path, sha256: str) -> bool:
    """An unsigned re-pack or re-index removes a `.sig` that signs other bytes; True if removed."""
    p = sig_path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("sha256") == sha256 and doc.get("file") == path.name:
        return False
    p.unlink(missing_ok=True)
    return True


class Status(enum.Enum):
    VERIFIED = "verified"
    UNSIGNED = "unsigned"  # no sidecar
    UNTRUSTED = "untrusted"  # a well-formed signature by a key this host does not trust
    INVALID = "invalid"  # malformed, for another file, or does not verify: tampering or damage


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    sha256: str | None = None  # VERIFIED: the signed sha256 (the file must still be checked against it)
    key: str | None = None


def check_signature(sig: str | None, kind: str, file: str, trust: Trust) -> Verdict:
    """Pure: does this sidecar text sign `file` (of this kind) with a trusted key?"""
    if sig is None:
        return Verdict(Status.UNSIGNED, f"{file} is not signed (no {file}{SIG_SUFFIX})")
    try:
        doc = json.loads(sig)
    except ValueError:
        doc = None
    fields = ("schema", "kind", "file", "sha256", "key", "signature")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in fields):
        return Verdict(Status.INVALID, f"{file}{SIG_SUFFIX} is not a nativellm signature")
    if doc["schema"] != SIGNATURE_SCHEMA or doc["kind"] != kind or doc["file"] != file:
        return Verdict(
            Status.INVALID, f"{file}{SIG_SUFFIX} signs {doc['kind']} {doc['file']!r}, not {kind} {file!r}"
        )
    sha = doc["sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return Verdict(Status.INVALID, f"{file}{SIG_SUFFIX} has no valid sha256")
    by_id = {k.id: k for k in trust.keys}
    key = by_id.get(doc["key"])
    if key is None:
        return Verdict(
            Status.UNTRUSTED, f"{file} is signed by {doc['key']}, which is not a trusted key", key=doc["key"]
        )
    try:
        raw = base64.b64decode(doc["signature"], validate=True)
        key.public.verify(raw, statement(kind, file, sha, key.id))
    except (InvalidSignature, binascii.Error, ValueError):
        return Verdict(Status.INVALID, f"the signature of {file} by {key.id} does not verify", key=key.id)
    return Verdict(Status.VERIFIED, f"{file} is signed by {key.id} ({key.origin})", sha, key.id)


def enforce(verdict: Verdict, location: str, trust: Trust, reporter: Reporter) -> str | None:
    """Raise unless the verdict lets `location` through; the signed sha256, or None for an
    unverified one that --insecure-unsigned lets through (after one warning line on stderr).

    - A verified signature passes.
    - A signature that does not verify (tampering, damage, a sidecar for another file) is refused
      even with --insecure-unsigned: it is evidence of an attack, not a missing key.
    - Plain http without a valid signature is refused even with --insecure-unsigned: anyone on
      the path can replace the file and its sha256 sidecar together, and the smoke test then runs
      their binaries as the installing user (root on a fleet).
    - Otherwise (no signature, or a key this host does not trust) --insecure-unsigned passes it.
    """
    if verdict.status is Status.VERIFIED:
        return verdict.sha256
    if verdict.status is Status.INVALID:
        raise ArtifactError(
            f"{verdict.reason}: refusing {location}",
            "the file or its .sig was changed after signing; do not install it",
        )
    if location.startswith("http://"):
        raise ArtifactError(
            f"{verdict.reason}, and plain http can be tampered with: refusing {location}",
            "sign it (`--sign-key`) and trust the key on this host, or serve it over https with --insecure-unsigned",
        )
    if not trust.insecure_unsigned:
        if verdict.status is Status.UNTRUSTED:
            hint = (
                f"add the signer's public key (its .pub line) to {trust.where()}, or pass --insecure-unsigned"
            )
        elif not trust.keys:
            hint = f"sign it with `nativellm pack --sign-key KEY` and list the .pub in {trust.where()}, or pass --insecure-unsigned"
        else:
            hint = "sign it with `nativellm pack --sign-key KEY` (or `artifacts index --sign-key`), or pass --insecure-unsigned"
        raise ArtifactError(f"{verdict.reason}: refusing {location}", hint)
    reporter.warn(
        f"--insecure-unsigned: {verdict.reason}; installing {location} without a verified signature"
    )
    return None
