"""What each GPU backend needs from /dev: one table, used by the instance units (serve/dropins.py)
and by the confined smoke test of an artifact (build/confine.py), so both open the same devices."""

from __future__ import annotations

import enum


class DeviceClass(str, enum.Enum):
    """What a build's backend needs from /dev. Table-driven: backend -> class -> directives."""

    CPU = "cpu"
    NVIDIA = "nvidia"
    AMD = "amd"
    DRI = "dri"
    # Vulkan through Mesa (RADV, ANV) opens the GPU's render node /dev/dri/renderD* (char-drm);
    # Mesa's software device (lavapipe) opens no device node at all, so the same allow-list serves
    # both. Vulkan on an NVIDIA card needs /dev/nvidia*: build that host with --backend cuda.
    VULKAN = "vulkan"

    @classmethod
    def for_backend(cls, backend: str) -> DeviceClass:
        table = {"cuda": cls.NVIDIA, "hip": cls.AMD, "vulkan": cls.VULKAN, "sycl": cls.DRI}
        return table.get(backend, cls.CPU)

    @property
    def device_allow(self) -> tuple[str, ...]:
        return {
            DeviceClass.CPU: (),
            # nvidia-uvm and nvidia-modeset have their own majors; char-nvidia covers nvidia0..N
            # and nvidiactl (major 195).
            DeviceClass.NVIDIA: (
                "char-nvidia rw",
                "char-nvidia-uvm rw",
                "/dev/nvidiactl rw",
                "/dev/nvidia-uvm rw",
                "/dev/nvidia-uvm-tools rw",
            ),
            DeviceClass.AMD: ("/dev/kfd rw", "char-drm rw"),
            DeviceClass.DRI: ("char-drm rw",),
            DeviceClass.VULKAN: ("char-drm rw",),
        }[self]

    @property
    def visible_devices_var(self) -> str:
        """The variable that hides all but the `--gpus` devices from the backend."""
        return {
            DeviceClass.AMD: "HIP_VISIBLE_DEVICES",
            # ggml-vulkan's own filter; it is also the only way it uses a CPU-type (software) device.
            DeviceClass.VULKAN: "GGML_VK_VISIBLE_DEVICES",
        }.get(self, "CUDA_VISIBLE_DEVICES")

    @property
    def ready_path(self) -> str | None:
        """A device that must exist before start (waited for, bounded: a driver may load late at
        boot). Vulkan has none: lavapipe needs no device node, and a missing Vulkan GPU is caught
        by the readiness check's offload test instead."""
        return {
            DeviceClass.NVIDIA: "/dev/nvidiactl",
            DeviceClass.AMD: "/dev/kfd",
            DeviceClass.DRI: "/dev/dri",
        }.get(self)
