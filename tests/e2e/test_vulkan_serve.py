"""Vulkan served end to end under a real systemd, on Mesa's software device (lavapipe), and no
silent CPU fallback: an instance that asks for GPU layers fails to start when llama-server would
serve from the CPU (issue 15, acceptance 2 and 3).

lavapipe is a CPU-type Vulkan device: ggml-vulkan uses it only when GGML_VK_VISIBLE_DEVICES names
it (`--gpus 0`). It is slow (every compute pipeline is compiled on the CPU while loading), so the
instances use the tiny demo model, a small context and few tokens; no throughput is claimed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from nativellm.client import free_port
from nativellm.serve.healthcheck import OFFLOAD_FAILED
from nativellm.serve.observe import offload_failure
from nativellm.specs import InstanceSpec
from tests.conftest import VULKAN_ICD, VulkanBuild
from tests.e2e.conftest import USER_UNIT_DIR, InnerCli
from tests.e2e.sandbox import Sandbox
from tests.helpers import nativellm

pytestmark = [pytest.mark.slow, pytest.mark.vulkan]

START_TIMEOUT = 600  # lavapipe compiles its pipelines at load: about a minute on 2 busy cores


@pytest.fixture(scope="module")
def vk(vulkan_build: VulkanBuild, sandbox: Sandbox) -> Iterator[InnerCli]:
    res = nativellm("model", "demo", "--json", home=vulkan_build.home, timeout=600)
    assert res.returncode == 0, res.stderr
    cli = InnerCli(sandbox, vulkan_build.home)
    yield cli
    for name in ("vk", "vkcpu", "vkhidden"):
        cli("instance", "rm", name)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def add(cli: InnerCli, name: str, *extra: str) -> int:
    port = free_port()
    cli("instance", "add", name, "--model", "demo", "--port", str(port), "--ctx", "512", "--gpu-layers", "99",
        "--start-timeout", str(START_TIMEOUT), *extra, check=True)  # fmt: skip
    return port


def journal(sb: Sandbox, name: str) -> str:
    return sb.journal("--user-unit", f"llama@{name}.service", "-o", "cat")


def test_the_sandbox_sees_the_software_device(sandbox: Sandbox) -> None:
    sandbox.exec(["test", "-f", str(VULKAN_ICD)])


def test_vulkan_instance_serves_chat_with_its_layers_on_the_device(vk: InnerCli, sandbox: Sandbox) -> None:
    port = add(vk, "vk", "--gpus", "0")
    dropin = (Path(USER_UNIT_DIR) / "llama@vk.service.d" / "50-nativellm.conf").as_posix()
    text = sandbox.exec(["cat", dropin]).stdout
    assert "DevicePolicy=closed" in text and "DeviceAllow=char-drm rw" in text
    assert 'Environment="GGML_VK_VISIBLE_DEVICES=0"' in text and "--gpu-layers 99" in text
    t0 = time.monotonic()
    sandbox.systemctl("--user", "start", "llama@vk", timeout=START_TIMEOUT + 60)  # returns once ready
    print(f"\n[timing] lavapipe instance start to ready: {time.monotonic() - t0:.1f}s")
    assert healthy(port)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300, max_retries=0)
    resp = client.chat.completions.create(
        model="vk", messages=[{"role": "user", "content": "Say hello"}], max_tokens=4, temperature=0
    )
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    log = journal(sandbox, "vk")
    # Before serving, llama-server itself listed the device (under the unit's environment and
    # DevicePolicy); after loading, its log shows no CPU fallback.
    assert "llama-server lists Vulkan0 llvmpipe" in log, log[-3000:]
    assert "no usable GPU found" not in log and OFFLOAD_FAILED not in log
    assert "offload: the devices were confirmed before start" in log or "layers to Vulkan0 (llvmpipe" in log
    props = sandbox.show("llama@vk.service", "ActiveState", "DevicePolicy")
    assert props == {"ActiveState": "active", "DevicePolicy": "closed"}
    # Its GPU memory in `status`: what llama-server reported for Vulkan0 in this run's load log.
    st = vk("status", "vk", "--json", check=True).json()["instances"][0]
    (mem,) = st["gpu_memory"]
    assert mem["device"] == "Vulkan0" and mem["source"] == "llama-server" and mem["bytes"] > 1 << 20, st
    vk("stop", "vk", check=True)


def test_gpu_layers_on_the_cpu_fail_the_start_instead_of_serving(vk: InnerCli, sandbox: Sandbox) -> None:
    """The trap from DESIGN.md: without GGML_VK_VISIBLE_DEVICES ggml skips the CPU-type device and
    `--gpu-layers 99` quietly runs on the CPU, with /health 200. The readiness check refuses it."""
    port = add(vk, "vkcpu")
    t0 = time.monotonic()
    res = sandbox.systemctl("--user", "start", "llama@vkcpu", check=False, timeout=START_TIMEOUT + 60)
    print(f"\n[timing] start refused after {time.monotonic() - t0:.1f}s (bounded device wait)")
    assert res.returncode != 0, "a start that would serve from the CPU must fail"
    log = journal(sandbox, "vkcpu")
    reason = offload_failure(log)
    assert reason is not None and "found no GPU device" in reason, log[-3000:]
    # Refused before llama-server served anything: it never got to load the model.
    assert "load_model" not in log
    assert not healthy(port)
    # Retried (a driver may be late) but bounded: the start limit leaves it failed, not looping.
    deadline = time.monotonic() + 240
    while sandbox.show("llama@vkcpu.service", "ActiveState")["ActiveState"] != "failed":
        assert time.monotonic() < deadline, sandbox.show("llama@vkcpu.service", "ActiveState", "NRestarts")
        time.sleep(2)
    print(f"\n[timing] failed for good after {time.monotonic() - t0:.1f}s")
    props = sandbox.show("llama@vkcpu.service", "Result", "NRestarts")
    # systemd keeps the last try's result (exit-code); the restarts stopped at the start limit.
    assert props["Result"] in ("exit-code", "start-limit-hit") and int(props["NRestarts"]) >= 4, props
    assert "Start request repeated too quickly" in journal(sandbox, "vkcpu")


def test_a_hidden_device_fails_the_start(vk: InnerCli, sandbox: Sandbox) -> None:
    """Hide the device from this one instance (an empty ICD list, as a missing driver looks to the
    Vulkan loader) in an admin's own drop-in: the start fails and says so."""
    port = add(vk, "vkhidden", "--gpus", "0")
    hide = f"{USER_UNIT_DIR}/llama@vkhidden.service.d/60-hide-gpu.conf"
    sandbox.exec(["sh", "-c", f"printf '[Service]\\nEnvironment=VK_DRIVER_FILES=/nonexistent "
                  f"VK_ICD_FILENAMES=/nonexistent\\n' > '{hide}'"])  # fmt: skip
    sandbox.systemctl("--user", "daemon-reload")
    res = sandbox.systemctl("--user", "start", "llama@vkhidden", check=False, timeout=START_TIMEOUT + 60)
    assert res.returncode != 0
    log = journal(sandbox, "vkhidden")
    # The Vulkan loader finds no driver, so llama-server lists no device: the start fails (after the
    # bounded wait for a late driver) before anything is served.
    reason = offload_failure(log)
    assert reason is not None and "found no GPU device" in reason, log[-3000:]
    assert "load_model" not in log
    # `status` says why, in its one error field.
    st = vk("status", "vkhidden", "--json").json()["instances"][0]
    assert st["error"] is not None and st["error"].startswith("offload check failed: "), st
    # And `doctor` lists it, with the verdict and where to look.
    found = vk("doctor", "--json").json()["findings"]
    unit = sandbox.show("llama@vkhidden.service", "ActiveState", "SubState", "Result")
    assert any(f["check"] == "offload" and "vkhidden did not start" in f["message"] for f in found), (
        unit,
        found,
    )
    sandbox.systemctl("--user", "stop", "llama@vkhidden", check=False)
    assert not healthy(port)


@pytest.mark.usefixtures("systemd_analyze")
def test_vulkan_system_unit_meets_the_exposure_target(tmp_path: Path) -> None:
    """The Vulkan drop-in (DevicePolicy=closed, char-drm, the device checks) graded by the real
    `systemd-analyze security --offline`, as the CPU and CUDA units are."""
    from nativellm.serve.dropins import render_instance_files, template_files
    from tests.e2e.test_security_offline import TARGET, _exposure, _resolved

    spec = InstanceSpec(name="vk", model="demo", port=8082, gpu_layers=99, gpus=(0,))
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    for rel, text in {**template_files(), **render_instance_files(spec, _resolved("vulkan"))}.items():
        (unit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / rel).write_text(text)
    score, report = _exposure(tmp_path, "llama@vk.service")
    print(f"\nvulkan: exposure {score}")
    assert score <= TARGET, report
