"""No silent CPU fallback: the readiness helper's offload verdict on llama-server load logs, the
units that ask for it, the smoke test's device case, and planning for a software Vulkan device.

The logs under tests/fixtures/llama_server/ are real captures from this llama.cpp tree on lavapipe
(vulkan_*.log) and, for CUDA and HIP (no such device here), logs built from the exact strings the
tree prints (ggml-cuda.cu, llama.cpp, llama-model.cpp, common/arg.cpp); see the README there.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from pathlib import Path

import pytest

from nativellm.build.draft import Backend, PlanOptions
from nativellm.build.plan import plan_build
from nativellm.build.smoke import SmokeCase, SmokeResult, plan_smoke_offload
from nativellm.build.toolchain import troubleshoot
from nativellm.errors import PlanError
from nativellm.hardware.devices import DeviceClass
from nativellm.hardware.profile import GpuInfo, HostProfile
from nativellm.hardware.vulkan import parse_vulkaninfo, software_from_vulkan
from nativellm.paths import Scope
from nativellm.serve import healthcheck
from nativellm.serve.dropins import Resolved, render_dropin
from nativellm.serve.healthcheck import OFFLOAD_FAILED, offload_problem, read_offload
from nativellm.serve.observe import find_error_line, offload_failure
from nativellm.specs import InstanceSpec

FIXTURES = Path(__file__).parents[1] / "fixtures"
LOGS = FIXTURES / "llama_server"


def log(name: str) -> str:
    return (LOGS / name).read_text()


# --- the verdict on real and realistic load logs ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "device", "layers"),
    [
        ("vulkan_lavapipe_offloaded.log", "Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))", (3, 3)),
        ("cuda_h100_offloaded.log", "CUDA0 (NVIDIA H100 80GB HBM3)", (29, 29)),
        ("hip_mi300x_offloaded.log", "ROCm0 (AMD Instinct MI300X)", (29, 29)),
        # Real: the H200 run of scripts/gpu_validate.py (7B-shape Q4_K_M, -ngl 99 -lv 4).
        ("cuda_h200_offloaded_real.log", "CUDA0 (NVIDIA H200)", (33, 33)),
    ],
)
def test_offloaded_logs_pass(name: str, device: str, layers: tuple[int, int]) -> None:
    text = log(name)
    assert offload_problem(text, 99) is None
    o = read_offload(text)
    assert o.devices == (device,) and (o.offloaded, o.total) == layers and not o.no_gpu


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        (
            "cuda_no_device.log",
            "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
        ),
        (
            "hip_no_device.log",
            "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected",
        ),
        # Real: the same H200 with the GPU hidden (CUDA_VISIBLE_DEVICES=). That llama-server went on
        # to load onto the CPU (and there died in the AMX kernels): the verdict must come first.
        (
            "cuda_h200_hidden_real.log",
            "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
        ),
    ],
)
def test_missing_gpu_fails_and_quotes_the_driver(name: str, cause: str) -> None:
    problem = offload_problem(log(name), 99)
    assert problem is not None
    assert "found no usable GPU" in problem and cause in problem and "serve from the CPU" in problem


@pytest.mark.parametrize("name", ["vulkan_lavapipe_skipped.log", "vulkan_no_icd.log"])
def test_real_vulkan_cpu_fallback_fails(name: str) -> None:
    for strict in (True, False):  # the smoke test's rule and the unit's
        problem = offload_problem(log(name), 99, require_evidence=strict)
        assert problem is not None and "found no usable GPU" in problem


def test_a_log_silent_about_placement() -> None:
    # This tree logs "using device"/"offloaded" only at -lv 4: the smoke test (which passes -lv 4)
    # insists on them; a unit, whose devices were listed before start, accepts the silence.
    quiet = log("vulkan_lavapipe_offloaded_lv3.log")
    assert offload_problem(quiet, 99) is not None
    assert offload_problem(quiet, 99, require_evidence=False) is None


def test_list_devices_output() -> None:
    assert healthcheck.parse_list_devices(log("list_devices_lavapipe.txt")) == [
        "Vulkan0 llvmpipe (LLVM 15.0.6, 256 bits) (2048 MiB, 2048 MiB free)"
    ]
    assert healthcheck.parse_list_devices(log("list_devices_none.txt")) == []
    # Real, from a portable (GGML_BACKEND_DL) CUDA build on an H200: the backend module is loaded for
    # --list-devices too, and a hidden GPU lists nothing.
    assert healthcheck.parse_list_devices(log("list_devices_cuda_h200_real.txt")) == [
        "CUDA0 NVIDIA H200 (143155 MiB, 142629 MiB free)"
    ]
    assert healthcheck.parse_list_devices(log("list_devices_cuda_hidden_real.txt")) == []
    assert healthcheck.parse_list_devices("") == []


def test_no_gpu_layers_asked_means_no_check() -> None:
    assert offload_problem(log("cuda_no_device.log"), 0) is None


def test_zero_layers_on_the_gpu_is_a_failure() -> None:
    text = log("cuda_h100_offloaded.log").replace("offloaded 29/29", "offloaded 0/29")
    assert (
        offload_problem(text, 99)
        == "--gpu-layers 99 was asked for, but llama-server put 0/29 layers on a GPU"
    )


def test_offloaded_line_without_a_device_is_not_trusted() -> None:
    # The tree prints "offloaded N/M" whenever a GPU backend is registered, even if the model uses
    # no device (--main-gpu beyond the list): "using device" is the proof of placement.
    text = "\n".join(ln for ln in log("cuda_h100_offloaded.log").splitlines() if "using device" not in ln)
    assert offload_problem(text, 99) is not None


def test_wrong_vulkan_index_is_quoted() -> None:
    text = "ggml_vulkan: Invalid device index 3 in GGML_VK_VISIBLE_DEVICES.\n" + log("cuda_no_device.log")
    problem = offload_problem(text, 99)
    assert problem is not None and "Invalid device index 3" in problem


def test_the_helper_cli_judges_a_saved_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok.log").write_text(log("cuda_h100_offloaded.log"))
    (tmp_path / "bad.log").write_text(log("hip_no_device.log"))
    assert healthcheck.main(["offload", "--gpu-layers", "99", "--log", str(tmp_path / "ok.log")]) == 0
    assert "offloaded 29/29 layers to CUDA0 (NVIDIA H100 80GB HBM3)" in capsys.readouterr().err
    assert healthcheck.main(["offload", "--gpu-layers", "99", "--log", str(tmp_path / "bad.log")]) == 1
    assert capsys.readouterr().err.startswith(OFFLOAD_FAILED)
    assert healthcheck.main(["offload", "--gpu-layers", "9", "--log", str(tmp_path / "none.log")]) == 1


def test_ready_with_gpu_layers_outside_a_unit_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/health"
        monkeypatch.delenv("INVOCATION_ID", raising=False)
        assert healthcheck.main(["ready", "--url", url, "--timeout", "5"]) == 0
        assert healthcheck.main(["ready", "--url", url, "--timeout", "5", "--gpu-layers", "99"]) == 1
        assert "no $INVOCATION_ID" in capsys.readouterr().err
    finally:
        srv.shutdown()
        srv.server_close()


def test_device_wait_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.wait_device(str(tmp_path), 1) == 0
    assert healthcheck.wait_device(str(tmp_path / "nvidiactl"), 0.3, interval=0.1) == 1
    assert "did not appear within 0.3s" in capsys.readouterr().err


def test_status_reads_the_verdict_from_the_journal() -> None:
    journal = "\n".join([
        *log("cuda_no_device.log").splitlines(),
        OFFLOAD_FAILED + "--gpu-layers 99 was asked for, but llama-server found no usable GPU (x)",
    ])  # fmt: skip
    assert (
        offload_failure(journal) == "--gpu-layers 99 was asked for, but llama-server found no usable GPU (x)"
    )
    assert offload_failure(log("cuda_h100_offloaded.log")) is None
    # llama-server's own error line stays llama-server's, not the helper's verdict.
    assert OFFLOAD_FAILED not in (find_error_line(journal) or "")


# --- units -------------------------------------------------------------------------------------------


def _resolved(backend: str) -> Resolved:
    return Resolved(
        scope=Scope.USER,
        server_binary=Path("/srv/nl/current/bin/llama-server"),
        model_path=Path("/srv/nl/models/demo.gguf"),
        backend=backend,
        python="/usr/bin/python3",
        healthcheck=Path("/srv/nl/libexec/nativellm-healthcheck.py"),
        systemctl="/usr/bin/systemctl",
        spec_path=Path("/srv/nl/instances/vk.toml"),
    )


def test_vulkan_unit_is_closed_with_drm_only_and_checks_the_offload() -> None:
    spec = InstanceSpec(name="vk", model="demo", port=8099, gpu_layers=99, gpus=(0,))
    text = render_dropin(spec, _resolved("vulkan"))
    lines = text.splitlines()
    assert "DevicePolicy=closed" in lines and "PrivateDevices=no" in lines
    assert [ln for ln in lines if ln.startswith("DeviceAllow=")] == ["DeviceAllow=char-drm rw"]
    assert 'Environment="GGML_VK_VISIBLE_DEVICES=0"' in lines
    assert "CUDA_VISIBLE_DEVICES" not in text
    # lavapipe has no device node: no wait for /dev/dri, which would keep it from ever starting;
    # llama-server itself must list a device before it may serve.
    assert "/dev/dri" not in text and "AssertPathExists" not in text
    pre = [ln for ln in lines if ln.startswith("ExecStartPre=")]
    assert pre[0].endswith("devices --timeout 15 -- /srv/nl/current/bin/llama-server --list-devices")
    post = next(ln for ln in lines if ln.startswith("ExecStartPost="))
    assert post.endswith("ready --url http://127.0.0.1:8099/health --timeout 900 --gpu-layers 99")


def test_an_rpc_head_lists_its_workers_devices_before_start() -> None:
    """A CPU build serving --gpu-layers through RPC workers: the workers' devices are the GPUs, and
    `--list-devices` lists them only when --rpc comes first (each option acts as it is parsed)."""
    spec = InstanceSpec(name="head", model="demo", port=8099, gpu_layers=99, rpc=("127.0.0.1:50052",))
    pre = [ln for ln in render_dropin(spec, _resolved("cpu")).splitlines() if "--list-devices" in ln]
    assert len(pre) == 1 and pre[0].endswith("llama-server --rpc 127.0.0.1:50052 --list-devices")


def test_only_vulkan_gpu_instances_log_their_load_at_verbosity_4() -> None:
    """Vulkan's GPU memory in `status` comes from the load log, printed only at -lv 4 in this tree;
    CUDA/HIP have NVML/amd-smi and keep the quieter default, as does a Vulkan build run on the CPU."""
    spec = InstanceSpec(name="vk", model="demo", port=8099, gpu_layers=99, gpus=(0,))
    assert "--log-verbosity 4" in render_dropin(spec, _resolved("vulkan"))
    assert "--log-verbosity" not in render_dropin(spec, _resolved("cuda"))
    cpu_only = dataclasses.replace(spec, gpu_layers=0)
    assert "--log-verbosity" not in render_dropin(cpu_only, _resolved("vulkan"))


def test_cpu_instance_keeps_the_plain_readiness() -> None:
    text = render_dropin(InstanceSpec(name="q4", model="demo", port=8080), _resolved("cpu"))
    assert "--gpu-layers" not in text and "DevicePolicy" not in text and "--list-devices" not in text


@pytest.mark.parametrize(("backend", "node"), [("cuda", "/dev/nvidiactl"), ("hip", "/dev/kfd")])
def test_gpu_units_wait_bounded_for_the_device_node(backend: str, node: str) -> None:
    text = render_dropin(InstanceSpec(name="g", model="demo", port=8080, gpu_layers=99), _resolved(backend))
    pre = [ln for ln in text.splitlines() if ln.startswith("ExecStartPre=")]
    assert pre[0].endswith(f"device --path {node} --timeout 15")
    assert pre[1].endswith("--list-devices")
    assert "AssertPathExists" not in text


def test_visible_devices_variable_per_backend() -> None:
    assert DeviceClass.for_backend("vulkan").visible_devices_var == "GGML_VK_VISIBLE_DEVICES"
    assert DeviceClass.for_backend("cuda").visible_devices_var == "CUDA_VISIBLE_DEVICES"
    assert DeviceClass.for_backend("hip").visible_devices_var == "HIP_VISIBLE_DEVICES"


# --- a software Vulkan device: detected, planned only on request, smoke-tested on the device --------


def lavapipe_host() -> HostProfile:
    profile = HostProfile.from_dict(json.loads((FIXTURES / "profiles" / "this-dev-vm.json").read_text()))
    software = tuple(
        software_from_vulkan(
            parse_vulkaninfo((FIXTURES / "hw" / "vulkaninfo_summary_lavapipe.txt").read_text())
        )
    )
    toolkits = dataclasses.replace(profile.toolkits, vulkan="1.3")
    return dataclasses.replace(profile, gpus=(), software_gpus=software, toolkits=toolkits)


def test_detect_lists_lavapipe_as_a_software_device() -> None:
    host = lavapipe_host()
    assert [(g.vendor, g.index, g.arch) for g in host.software_gpus] == [("mesa", 0, "cpu")]
    assert host.software_gpus[0].name.startswith("llvmpipe")
    assert host.gpus == ()
    assert HostProfile.from_dict(host.to_dict()) == host  # the JSON contract round-trips


def test_auto_never_picks_the_software_device() -> None:
    assert plan_build(lavapipe_host(), PlanOptions()).backend == "cpu"


def test_backend_vulkan_plans_for_the_software_device_and_says_so() -> None:
    plan = plan_build(lavapipe_host(), PlanOptions(backend=Backend.VULKAN))
    assert plan.cmake_defines["GGML_VULKAN"] == "ON"
    assert "software device" in plan.reasons["GGML_VULKAN"] and "llvmpipe" in plan.reasons["GGML_VULKAN"]
    assert any("slower than the CPU backend" in w for w in plan.warnings)


def test_backend_vulkan_without_any_device_is_refused() -> None:
    host = dataclasses.replace(lavapipe_host(), software_gpus=())
    with pytest.raises(PlanError, match="software Vulkan device"):
        plan_build(host, PlanOptions(backend=Backend.VULKAN))


def test_smoke_offload_case_per_backend_and_host() -> None:
    host = lavapipe_host()
    vk = plan_smoke_offload("vulkan", host)
    assert vk is not None and vk.gpu_layers == 99 and vk.env == {"GGML_VK_VISIBLE_DEVICES": "0"}
    assert plan_smoke_offload("cpu", host) is None
    assert plan_smoke_offload("cuda", host) is None  # a cross-build: no device to confirm here
    h100 = dataclasses.replace(host, gpus=(GpuInfo("nvidia", 0, "NVIDIA H100", "sm_90", 80 << 30),))
    cuda = plan_smoke_offload("cuda", h100)
    assert cuda is not None and not cuda.env and "H100" in cuda.device
    real = plan_smoke_offload("vulkan", h100)
    assert real is not None and not real.env  # a real GPU is used without naming it


def test_smoke_result_keeps_the_offload_and_old_manifests_load() -> None:
    case = SmokeCase("Q4_0", True, "ok", tokens=8, offload="offloaded 3/3 layers to Vulkan0 (llvmpipe)")
    res = SmokeResult(True, (case, SmokeCase("Q8_0", True, "ok", tokens=8)))
    doc = res.to_dict()
    assert "offload" not in doc["cases"][1]
    assert SmokeResult.from_dict(doc) == res
    assert "Vulkan0" in res.summary()


@pytest.mark.parametrize(
    "line",
    [
        # g++ 12 against Debian 12's vulkan.hpp, in the C locale the build runs in, and in UTF-8.
        "ggml-vulkan.cpp:5214:21: error: 'LayerSettingEXT' is not a member of 'vk'",
        "ggml-vulkan.cpp:5214:21: error: \u2018LayerSettingEXT\u2019 is not a member of \u2018vk\u2019",
    ],
)
def test_old_vulkan_headers_are_named_with_the_fix(line: str) -> None:
    hint = troubleshoot(f"[12/545] Building CXX object ...\n{line}\nninja: build stopped\n")
    assert hint is not None and "scripts/vulkan-headers.sh" in hint
