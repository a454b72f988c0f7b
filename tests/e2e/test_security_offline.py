"""Hardening targets, measured by systemd itself: `systemd-analyze security --offline=true`
on the rendered system-scope units (exposure <= 1.5 for CPU and GPU instances)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from nativellm.paths import Scope
from nativellm.serve.dropins import Resolved, render_instance_files, template_files
from nativellm.specs import InstanceSpec

TARGET = 1.5


def _resolved(backend: str) -> Resolved:
    # What a system install looks like: store under /var/lib, interpreter under /usr.
    return Resolved(
        scope=Scope.SYSTEM,
        server_binary=Path("/var/lib/nativellm/current/bin/llama-server"),
        model_path=Path("/var/lib/nativellm/models/demo/demo.gguf"),
        backend=backend,
        python="/usr/bin/python3",
        healthcheck=Path("/usr/lib/python3/dist-packages/nativellm/healthcheck.py"),
        systemctl="/usr/bin/systemctl",
        spec_path=Path("/etc/nativellm/instances/x.toml"),
    )


def _exposure(root: Path, unit: str) -> tuple[float, str]:
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", unit],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1)), res.stdout


@pytest.mark.usefixtures("systemd_analyze")
@pytest.mark.parametrize(("backend", "spec"), [
    ("cpu", InstanceSpec(name="cpu", model="demo", port=8080, threads=4, mlock=True, numa_node=0)),
    ("cuda", InstanceSpec(name="gpu", model="demo", port=8081, gpu_layers=99, gpus=(0,),
                          host="0.0.0.0", api_key_file="/etc/nativellm/keys/gpu.key")),
])  # fmt: skip
def test_rendered_system_units_meet_the_exposure_target(
    tmp_path: Path, backend: str, spec: InstanceSpec
) -> None:
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    files = {**template_files(), **render_instance_files(spec, _resolved(backend))}
    for rel, text in files.items():
        (unit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / rel).write_text(text)
    score, report = _exposure(tmp_path, f"llama@{spec.name}.service")
    print(f"{backend}: exposure {score}")
    assert score <= TARGET, report
