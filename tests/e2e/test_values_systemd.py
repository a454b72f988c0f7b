"""Issue 14, finding 3, judged by systemd itself (`systemd-analyze verify`, offline, no PID 1).

systemd ends a unit-file line at "\\r" as well as "\\n": the first test shows it (the attack),
the others show that every value the validators accept is one systemd parses, that the values
they refuse are ones systemd would ignore or split, and that a rendered unit never carries an
injected directive.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from nativellm import validate
from nativellm.errors import InstanceError, UsageError
from nativellm.paths import Scope
from nativellm.serve.dropins import Resolved, render_dropin
from nativellm.specs import InstanceSpec

pytestmark = pytest.mark.usefixtures("systemd_analyze")

# systemd-analyze verify reports a command that does not exist: an injected ExecStartPre= shows.
PROBE = "ExecStartPre=/nonexistent/injected"


def _verify(tmp_path: Path, text: str, name: str = "t.service") -> str:
    unit = tmp_path / name
    unit.write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    return res.stdout + res.stderr


def _service(body: str) -> str:
    return "[Service]\nExecStart=/bin/true\n" + body + "\n"


def test_systemd_ends_a_line_at_a_carriage_return(tmp_path: Path) -> None:
    """The attack: a value with "\\r" adds a directive of its own."""
    assert "/nonexistent/injected" in _verify(tmp_path, _service("MemoryMax=8G\r" + PROBE))
    assert "/nonexistent/injected" not in _verify(tmp_path, _service("MemoryMax=8G"))


@pytest.mark.parametrize("size", ["8G", "512M", "1.5T", "1073741824", "100K", "80%", "0.5%", "infinity"])
def test_every_size_the_validator_accepts_is_a_size_to_systemd(tmp_path: Path, size: str) -> None:
    validate.byte_size(size)
    assert _verify(tmp_path, _service(f"MemoryMax={size}")) == ""


@pytest.mark.parametrize("size", ["lots", "8GB", "-1G", "8g"])
def test_the_sizes_it_refuses_are_ones_systemd_ignores(tmp_path: Path, size: str) -> None:
    with pytest.raises(UsageError):
        validate.byte_size(size)
    assert "ignoring" in _verify(tmp_path, _service(f"MemoryMax={size}"))


@pytest.mark.parametrize("cpus", ["0-3", "0-3,6", "1,3,5", "2.5", "16"])
def test_every_cpu_value_it_accepts_renders_to_what_systemd_parses(tmp_path: Path, cpus: str) -> None:
    spec = InstanceSpec(name="q4", model="m", port=8080, cpus=validate.cpus(cpus), memory_max="8G")
    text = render_dropin(spec, _resolved())
    assert _verify(tmp_path, _standalone(text)) == ""


def _resolved() -> Resolved:
    return Resolved(scope=Scope.USER, server_binary=Path("/bin/true"), model_path=Path("/m/m.gguf"),
                    backend="cpu", python="/usr/bin/python3", healthcheck=Path("/opt/h.py"),
                    systemctl="/usr/bin/systemctl", spec_path=Path("/cfg/q4.toml"))  # fmt: skip


def _standalone(dropin: str) -> str:
    """A rendered drop-in as a unit of its own (verify checks every command and value in it)."""
    return dropin.replace("ExecStart=\n", "", 1)


@pytest.mark.parametrize(
    "change",
    [{"memory_max": "8G\r" + PROBE}, {"cpus": "0-3\r" + PROBE}, {"api_key_file": "/k\r" + PROBE},
     {"model": "/m/m.gguf\r" + PROBE}, {"env": {"A": "b\r" + PROBE}}, {"extra_args": ("--x", "\r" + PROBE)},
     {"host": "127.0.0.1\r" + PROBE}],
)  # fmt: skip
def test_no_rendered_unit_carries_an_injected_directive(tmp_path: Path, change: dict[str, object]) -> None:
    """Even a spec built around the validators (which refuse all of these) is refused by the
    renderer or escaped, so systemd sees no extra command."""
    spec = dataclasses.replace(InstanceSpec(name="q4", model="m", port=8080), **change)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        spec.validate()
    try:
        text = render_dropin(spec, _resolved())
    except InstanceError as exc:
        assert "control character" in exc.message
        return
    assert "/nonexistent/injected" not in _verify(tmp_path, _standalone(text))
