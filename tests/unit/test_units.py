"""Unit files: the quoting function, the renderer, and golden texts of rendered instance units.

Set NATIVELLM_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then
review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nativellm.errors import InstanceError
from nativellm.paths import Scope
from nativellm.serve.dropins import Resolved, render_dropin, render_watchdog_dropin, server_argv
from nativellm.serve.units import (
    Section,
    UnitFile,
    exec_line,
    plain_value,
    quote_env,
    quote_exec_arg,
    render,
    write_unit,
)
from nativellm.specs import InstanceSpec

GOLDEN = Path(__file__).parents[1] / "fixtures" / "units"


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NATIVELLM_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), (
        f"{name} differs from its golden file (NATIVELLM_UPDATE_GOLDEN=1 to update)"
    )


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("plain", "plain"),
        ("/opt/llama/bin/llama-server", "/opt/llama/bin/llama-server"),
        ("--ctx-size=4096", "--ctx-size=4096"),
        ("", '""'),
        ("with space", '"with space"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("it's", '"it\'s"'),
        ("back\\slash", '"back\\\\slash"'),
        ("100%", '"100%%"'),
        ("%i", '"%%i"'),
        ("$HOME", '"$$HOME"'),
        ("${X}", '"$${X}"'),
        (";", '";"'),
        ("a\nb", '"a\\nb"'),
        ("a\tb", '"a\\tb"'),
        ("\x01", '"\\x01"'),
        ("ünï", '"ünï"'),
    ],
)
def test_quote_exec_arg(arg: str, quoted: str) -> None:
    assert quote_exec_arg(arg) == quoted


def test_expand_env_keeps_variable_references_but_escapes_specifiers() -> None:
    assert (
        quote_exec_arg("${CREDENTIALS_DIRECTORY}/api-key", expand_env=True)
        == '"${CREDENTIALS_DIRECTORY}/api-key"'
    )
    assert quote_exec_arg("%d/key", expand_env=True) == '"%%d/key"'


def test_exec_line_requires_an_absolute_program() -> None:
    assert exec_line(["/bin/echo", "a b"]) == '/bin/echo "a b"'
    with pytest.raises(InstanceError, match="absolute"):
        exec_line(["echo", "x"])
    with pytest.raises(InstanceError, match="NUL"):
        exec_line(["/bin/echo", "a\0b"])


def test_quote_env_and_plain_values() -> None:
    assert quote_env("CUDA_VISIBLE_DEVICES", "0,1") == '"CUDA_VISIBLE_DEVICES=0,1"'
    assert quote_env("X", 'a "b" 5% $Y\\') == '"X=a \\"b\\" 5%% $Y\\\\"'
    with pytest.raises(InstanceError):
        quote_env("BAD-NAME", "x")
    assert plain_value("50%") == "50%%"
    with pytest.raises(InstanceError):
        plain_value("a\nb")


def test_render_keeps_order_and_repeated_keys() -> None:
    unit = UnitFile(
        (
            Section("Unit", (("Description", "x"),)),
            Section(
                "Service",
                (("ExecStart", ""), ("ExecStart", "/bin/true"), ("DeviceAllow", "a"), ("DeviceAllow", "b")),
            ),
        ),
        header="hello",
    )
    assert render(unit) == (
        "# hello\n\n[Unit]\nDescription=x\n\n[Service]\nExecStart=\nExecStart=/bin/true\nDeviceAllow=a\nDeviceAllow=b\n"
    )
    assert unit.get("Service", "DeviceAllow") == ["a", "b"]
    with pytest.raises(InstanceError):
        render(UnitFile((Section("Service", (("X", "a\nb"),)),)))


def test_write_unit_is_atomic_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "d" / "x.conf"
    assert write_unit(path, "a\n") is True
    assert write_unit(path, "a\n") is False
    assert write_unit(path, "b\n") is True
    assert path.read_text() == "b\n"
    assert [p.name for p in path.parent.iterdir()] == ["x.conf"]  # no temp files left


def _resolved(scope: Scope, backend: str = "cpu") -> Resolved:
    return Resolved(
        scope=scope,
        server_binary=Path("/var/lib/nativellm/current/bin/llama-server"),
        model_path=Path("/var/lib/nativellm/models/demo/demo 100%.gguf"),
        backend=backend,
        python="/usr/bin/python3",
        healthcheck=Path("/usr/lib/python3/dist-packages/nativellm/healthcheck.py"),
        systemctl="/usr/bin/systemctl",
        spec_path=Path("/etc/nativellm/instances/q4.toml"),
    )


BASIC = InstanceSpec(name="q4", model="demo", port=8080, threads=2)
FULL = InstanceSpec(
    name="coder",
    model="qwen-coder",
    port=8443,
    host="0.0.0.0",
    ctx=8192,
    threads=8,
    gpu_layers=99,
    parallel=4,
    batch=512,
    flash_attn="on",
    cache_type_k="q8_0",
    cache_type_v="q8_0",
    mlock=True,
    api_key_file="/etc/nativellm/keys/coder.key",
    memory_max="24G",
    cpus="0-7",
    numa_node=0,
    gpus=(0, 1),
    start_timeout=1800,
    env={"GGML_CUDA_ENABLE_UNIFIED_MEMORY": "1"},
    extra_args=("--chat-template", "{% if x %}$y{% endif %}", "--slot-save-path", "/var/lib/slots dir"),
)


def test_golden_user_cpu_dropin() -> None:
    _golden("user-cpu-q4.conf", render_dropin(BASIC, _resolved(Scope.USER)))
    _golden("user-cpu-q4-watchdog.conf", render_watchdog_dropin(BASIC, _resolved(Scope.USER)))


def test_golden_system_cuda_dropin() -> None:
    _golden("system-cuda-coder.conf", render_dropin(FULL, _resolved(Scope.SYSTEM, "cuda")))
    _golden("system-cuda-coder-watchdog.conf", render_watchdog_dropin(FULL, _resolved(Scope.SYSTEM, "cuda")))


def test_api_key_never_reaches_the_argv_only_its_credential_path() -> None:
    argv = server_argv(FULL, Path("/b"), Path("/m"), api_key_path="${CREDENTIALS_DIRECTORY}/api-key")
    assert argv[argv.index("--api-key-file") + 1] == "${CREDENTIALS_DIRECTORY}/api-key"
    text = render_dropin(FULL, _resolved(Scope.SYSTEM, "cuda"))
    assert '--api-key-file "${CREDENTIALS_DIRECTORY}/api-key"' in text
    assert "LoadCredential=api-key:/etc/nativellm/keys/coder.key" in text
