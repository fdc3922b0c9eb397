"""GPU preflight: fail in seconds, never train silently on the CPU while holding a GPU.

`preflight(require_gpu)` runs before training builds anything. When a GPU is required
(the Kubeflow train task requests one) and TensorFlow sees none -- CUDA/cuDNN libraries
missing or mismatched in the image, a node without the NVIDIA driver, a pod scheduled
without the device -- it raises `GPUUnavailableError` with what was found and what to
check. Either way it returns what TensorFlow sees (GPU names, count, compute capability,
the driver version from `nvidia-smi` when present, TensorFlow's build and its CUDA/cuDNN
versions) as flat string tags for the MLflow run (`gpu_tags`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
NVIDIA_SMI_TIMEOUT_S = 10


class GPUUnavailableError(RuntimeError):
    """A GPU was requested but TensorFlow cannot use one."""


def preflight(require_gpu: bool, requested: int = 1) -> dict[str, str]:
    """Check the GPUs TensorFlow sees; raise GPUUnavailableError if `require_gpu` and there
    are none. Returns `gpu_tags()` (for the training run's MLflow tags)."""
    tags = gpu_tags()
    tags["gpu.required"] = str(bool(require_gpu)).lower()
    count = int(tags["gpu.count"])
    if count:
        log.info("TensorFlow sees %d GPU(s): %s (driver %s, TF built with CUDA %s / cuDNN %s)", count,
                 tags.get("gpu.names"), tags.get("gpu.driver_version", "?"), tags.get("tf.cuda_version", "?"),
                 tags.get("tf.cudnn_version", "?"))
    elif require_gpu:
        raise GPUUnavailableError(_diagnosis(tags, requested))
    else:
        log.info("no GPU visible to TensorFlow; training on the CPU (require_gpu is false)")
    return tags


def gpu_tags() -> dict[str, str]:
    """What TensorFlow and the driver report, as MLflow tags (all strings)."""
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    gpus = tf.config.list_physical_devices("GPU")
    details = [_device_details(tf, d) for d in gpus]
    tags = {
        "gpu.count": str(len(gpus)),
        "tf.version": tf.__version__,
        "tf.git_version": tf.version.GIT_VERSION,
        "tf.is_cuda_build": str(bool(build.get("is_cuda_build"))).lower(),
    }
    if build.get("cuda_version"):
        tags["tf.cuda_version"] = str(build["cuda_version"])
    if build.get("cudnn_version"):
        tags["tf.cudnn_version"] = str(build["cudnn_version"])
    if details:
        tags["gpu.names"] = ", ".join(d.get("device_name") or "unknown" for d in details)
        capabilities = {".".join(map(str, d["compute_capability"])) for d in details if d.get("compute_capability")}
        if capabilities:
            tags["gpu.compute_capability"] = ", ".join(sorted(capabilities))
    smi = nvidia_smi()
    if smi:
        tags["gpu.driver_version"] = smi["driver_version"]
        tags["gpu.nvidia_smi_names"] = smi["names"]
    return tags


def _device_details(tf: Any, device: Any) -> dict[str, Any]:
    try:
        return dict(tf.config.experimental.get_device_details(device))
    except (ValueError, RuntimeError) as e:  # details are informative only
        log.debug("no device details for %s: %s", device, e)
        return {}


def nvidia_smi() -> dict[str, str] | None:
    """{"driver_version", "names"} from `nvidia-smi`, or None when it is absent or fails
    (it is mounted into the container by the NVIDIA runtime, not part of the image)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi failed: %s", e)
        return None
    rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows:
        return None
    return {"names": ", ".join(r[0] for r in rows),
            "driver_version": ", ".join(sorted({r[1] for r in rows if len(r) > 1}))}


def _diagnosis(tags: dict[str, str], requested: int) -> str:
    build = (f"TensorFlow {tags['tf.version']} built with CUDA {tags.get('tf.cuda_version', '?')} / "
             f"cuDNN {tags.get('tf.cudnn_version', '?')}")
    if tags["tf.is_cuda_build"] != "true":
        build = f"TensorFlow {tags['tf.version']} is a CPU-only build"
    if "gpu.driver_version" in tags:
        driver = (f"nvidia-smi sees {tags['gpu.nvidia_smi_names']} (driver {tags['gpu.driver_version']}), so the "
                  "CUDA/cuDNN libraries in the image are the likely cause")
    else:
        driver = ("nvidia-smi is not available, so the container has no NVIDIA driver mounted "
                  "(node without the driver or the NVIDIA container runtime, or no GPU assigned to the pod)")
    return (
        f"requested {requested} {GPU_RESOURCE} but TensorFlow sees none: check the CUDA libraries in the image "
        f"(pip install tensorflow[and-cuda]) and the node's NVIDIA driver. {build}; {driver}. "
        "Refusing to train on the CPU; set require_gpu=false to allow a CPU run."
    )
