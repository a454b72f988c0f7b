"""A real Vulkan build on Mesa's software device (lavapipe): detect lists the device, plan plans for
it only when asked, the build compiles ggml-vulkan, and its smoke test runs inference on the device
and confirms the offload from llama-server's own log (issue 15). The Vulkan compile runs once per
test session (tests/conftest.py `vulkan_build`, ccache-backed); the e2e tier serves from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nativellm.build.smoke import SmokeOffload, base_model, quantize, serve_once
from nativellm.build.synth import VOCAB_FILE
from nativellm.serve import healthcheck
from tests.conftest import VulkanBuild
from tests.helpers import nativellm

pytestmark = [pytest.mark.slow, pytest.mark.vulkan]


def test_detect_lists_the_software_device(tmp_path: Path, vulkan_build: VulkanBuild) -> None:
    doc = nativellm("detect", "--json", home=tmp_path).json()
    software = doc["software_gpus"]
    assert software and software[0]["arch"] == "cpu" and "llvmpipe" in software[0]["name"]
    assert not [g for g in doc["gpus"] if "llvmpipe" in g["name"]]
    text = nativellm("detect", home=tmp_path).stdout
    assert "llvmpipe" in text and "software" in text


def test_plan_uses_the_software_device_only_when_asked(tmp_path: Path, vulkan_build: VulkanBuild) -> None:
    auto = nativellm("plan", "--json", home=tmp_path).json()
    assert auto["backend"] == "cpu"
    asked = nativellm("plan", "--backend", "vulkan", "--json", home=tmp_path).json()
    assert asked["backend"] == "vulkan" and "software device" in asked["reasons"]["GGML_VULKAN"]


def test_vulkan_build_passes_its_smoke_test_on_the_device(vulkan_build: VulkanBuild) -> None:
    data = vulkan_build.result["data"]
    assert data["plan"]["backend"] == "vulkan" and data["activated"], data
    manifest = json.loads(next(vulkan_build.home.rglob(f"{data['build_id']}/manifest.json")).read_text())
    assert manifest["plan"]["cmake_defines"]["GGML_VULKAN"] == "ON"
    cases = {c["quant"]: c for c in manifest["smoke_test"]["cases"]}
    assert all(c["passed"] for c in cases.values()), cases
    assert "Vulkan0 (llvmpipe" in cases["Q4_0"]["offload"], cases["Q4_0"]
    assert "offload" not in cases["Q8_0"]  # the CPU kernels are still exercised (-ngl 0)
    print(f"\n[timing] vulkan build + smoke: {vulkan_build.seconds:.1f}s")


def test_smoke_fails_when_the_device_is_hidden(tmp_path: Path, vulkan_build: VulkanBuild) -> None:
    """The device case must fail, not pass on the CPU, when the Vulkan loader sees no device."""
    current = vulkan_build.home / "data" / "current"
    bins = current / "bin"
    vocab = current / "share" / "nativellm" / VOCAB_FILE
    model = tmp_path / "q4_0.gguf"
    assert quantize(bins, base_model(tmp_path, vocab), model, "Q4_0", tmp_path / "q.log") is None
    # No GGML_VK_VISIBLE_DEVICES: ggml skips the CPU-type device, and -ngl 99 would run on the CPU.
    hidden = SmokeOffload(env={"VK_DRIVER_FILES": "/nonexistent", "VK_ICD_FILENAMES": "/nonexistent"})
    case = serve_once(bins, model, "Q4_0", tmp_path / "smoke.log", 2, offload=hidden)
    assert not case.passed and "found no usable GPU" in case.detail, case


def test_the_pre_start_device_check_asks_llama_server(
    vulkan_build: VulkanBuild, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unit's ExecStartPre (healthcheck devices) on the real llama-server: lavapipe is listed
    only when GGML_VK_VISIBLE_DEVICES names it; a wrong index or no driver fails, bounded."""
    argv = [str(vulkan_build.home / "data" / "current" / "bin" / "llama-server"), "--list-devices"]
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "0")
    assert healthcheck.wait_devices(argv, timeout=30) == 0
    assert "lists Vulkan0 llvmpipe" in capsys.readouterr().err
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "3")
    assert healthcheck.wait_devices(argv, timeout=1, interval=0.5) == 1
    assert "Invalid device index 3" in capsys.readouterr().err
    monkeypatch.delenv("GGML_VK_VISIBLE_DEVICES")
    monkeypatch.setenv("VK_DRIVER_FILES", "/nonexistent")
    assert healthcheck.wait_devices(argv, timeout=1, interval=0.5) == 1
    assert healthcheck.OFFLOAD_FAILED + "llama-server --list-devices found no GPU" in capsys.readouterr().err
