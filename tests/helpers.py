"""Helpers shared by the test tiers: the llama.cpp sdist, the CLI runner, build sabotage."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from nativellm.build.plan import BuildPlan

SDIST_VERSION = "0.3.36"
IN_CI = bool(os.environ.get("CI"))


def cannot_run(reason: str) -> NoReturn:
    """A tier or test that this machine can't run: skipped on a developer's machine, but a failure in
    CI (CI set), where every claim the suite makes must really be checked (DESIGN.md section 6)."""
    if IN_CI:
        pytest.fail(f"this must run in CI, but cannot here: {reason}", pytrace=False)
    pytest.skip(reason)


CACHE = Path(os.environ.get("NATIVELLM_TEST_CACHE", Path.home() / ".cache" / "nativellm-test"))


def _fetch_sdist(version: str = SDIST_VERSION) -> Path:
    """The llama.cpp tree vendored in the llama-cpp-python sdist `version`, downloaded and unpacked once
    into the test cache (each version in its own directory)."""
    root = CACHE / "sdist"
    top = root / f"llama_cpp_python-{version}"
    tree = top / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"llama_cpp_python-{version}.tar.gz"
    if not archive.is_file():
        subprocess.run(
            # --no-binary for this one package only: with ":all:" a current pip also builds the sdist's
            # build requirements (CMake) from source to prepare its metadata, which took over an hour.
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}", "-d", str(root)],
            check=True,
        )  # fmt: skip
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data") if sys.version_info >= (3, 12) else tar.extractall(tmp)
        os.replace(Path(tmp) / top.name, top)
    return tree


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]


def nativellm(*args: str, home: Path, timeout: float = 3600, env: dict[str, str] | None = None) -> CliResult:
    """Run the real CLI in a child process, as a user would."""
    full_env = {**os.environ, "NATIVELLM_HOME": str(home), **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "nativellm", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def break_llama_server(
    monkeypatch: pytest.MonkeyPatch, trap: Path, when: Callable[[BuildPlan], bool] = lambda plan: True
) -> None:
    """After the real compile, swap the staged llama-server for a SIGILL binary (when `when(plan)`)."""
    from nativellm.build.pipeline import _Builder

    original = _Builder.compile

    def compile_then_break(self: _Builder, plan: BuildPlan, *args: Any) -> Path:
        stage: Path = original(self, plan, *args)
        if when(plan):
            shutil.copy(trap, stage / "bin" / "llama-server")
        return stage

    monkeypatch.setattr(_Builder, "compile", compile_then_break)


def borrow_build(source_home: Path, home: Path) -> None:
    """Link an existing store's current build into `home` as its current build (no compile)."""
    current = (source_home / "data" / "current").resolve()
    builds = home / "data" / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    (builds / current.name).symlink_to(current)
    (home / "data" / "current").symlink_to(f"builds/{current.name}")


@contextmanager
def git_daemon(base: Path, port: int) -> Iterator[str]:
    """A real `git daemon` on 127.0.0.1:port exporting the bare repositories under `base`; yields
    `git://127.0.0.1:port` once it answers (readiness: `git ls-remote` of any repository there)."""
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={base}", "--listen=127.0.0.1",
         f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    root = f"git://127.0.0.1:{port}"
    probe = f"{root}/{next(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith('.'))}"
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["git", "ls-remote", probe], capture_output=True).returncode != 0:
            assert daemon.poll() is None, "git daemon died"
            assert time.monotonic() < deadline, "git daemon did not answer within 30 s"
            time.sleep(0.05)
        yield root
    finally:
        daemon.terminate()
        daemon.wait(10)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (cert.pem, key.pem) for loopback HTTPS servers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = directory / "cert.pem"
    key_pem = directory / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_pem, key_pem
