"""GPUs and the environment a run's resources give it (SPEC section 10).

GPU ids are what `CUDA_VISIBLE_DEVICES` takes: with `CUDA_DEVICE_ORDER=PCI_BUS_ID` (which every
run that has GPUs managed gets), CUDA numbers devices in PCI bus order, the order NVML and
`nvidia-smi` use, so an index found here names the same device inside the run. `gpus = "auto"`
asks NVML (the nvidia-ml-py bindings), then `nvidia-smi -L`; a machine without an NVIDIA driver
has none, which is not an error (one debug log line says why).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import structlog

log = structlog.get_logger(__name__)

AUTO = "auto"
NVIDIA_SMI = "nvidia-smi"
# A hung driver makes nvidia-smi hang; the daemon must start anyway.
NVIDIA_SMI_TIMEOUT_SECONDS = 10.0
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
CUDA_DEVICE_ORDER = "CUDA_DEVICE_ORDER"
PCI_BUS_ID = "PCI_BUS_ID"
OMP_NUM_THREADS = "OMP_NUM_THREADS"
_SMI_GPU_LINE = re.compile(r"^GPU ([0-9]+):", re.MULTILINE)


def _nvml_indexes() -> list[str] | None:
    """GPU indexes from NVML; None when NVML cannot be used here (no bindings, no driver)."""
    try:
        import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no type hints
    except ImportError:
        log.debug("gpu_nvml_unavailable", reason="nvidia-ml-py is not installed")
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("gpu_nvml_unavailable", reason=str(exc))
        return None
    try:
        return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        log.debug("gpu_nvml_unavailable", reason=str(exc))
        return None
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi_list(text: str) -> list[str]:
    """The GPU indexes in `nvidia-smi -L` output (MIG lines are not GPUs of their own)."""
    return _SMI_GPU_LINE.findall(text)


def _nvidia_smi_indexes(command: str) -> list[str] | None:
    """GPU indexes from `nvidia-smi -L`; None when it is missing or fails."""
    path = shutil.which(command)
    if path is None:
        log.debug("gpu_nvidia_smi_unavailable", reason=f"{command} is not on PATH")
        return None
    try:
        done = subprocess.run(
            [path, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("gpu_nvidia_smi_unavailable", reason=str(exc))
        return None
    if done.returncode != 0:
        log.debug("gpu_nvidia_smi_unavailable", reason=done.stderr.strip()[:200])
        return None
    return parse_nvidia_smi_list(done.stdout)


def discover_gpus(nvidia_smi: str = NVIDIA_SMI) -> list[str]:
    """The GPUs NVIDIA's driver lists, as indexes ("0", "1", ...); [] on a machine without."""
    found = _nvml_indexes()
    if found is None:
        found = _nvidia_smi_indexes(nvidia_smi)
    if found is None:
        log.debug("gpu_none_found", reason="no NVIDIA driver answered")
        return []
    log.debug("gpu_found", gpu_ids=",".join(found))
    return found


def resolve_gpus(setting: str | Sequence[str], nvidia_smi: str = NVIDIA_SMI) -> tuple[str, ...]:
    """`[resources] gpus` as GPU ids: "auto" asks the driver; a list (checked by the settings
    reader) passes through."""
    if isinstance(setting, str):
        if setting != AUTO:
            raise ValueError(f'resources.gpus must be "auto" or a list of ids, not {setting!r}')
        return tuple(discover_gpus(nvidia_smi))
    return tuple(setting)


def resource_env(
    *, cpus: int, gpu_ids: Sequence[str] | None, template_env: Mapping[str, str]
) -> dict[str, str]:
    """The variables a run's resources set, to apply over the template's `env`.

    `gpu_ids` None: GPUs are not managed for the run and the CUDA variables are left alone;
    an empty sequence (`gpus = 0`) hides every GPU. The GPU variables override the template's
    (a run must never see a GPU another run holds); `OMP_NUM_THREADS` yields to it.
    """
    env: dict[str, str] = {}
    if gpu_ids is not None:
        env[CUDA_VISIBLE_DEVICES] = ",".join(gpu_ids)
        env[CUDA_DEVICE_ORDER] = PCI_BUS_ID
    if OMP_NUM_THREADS not in template_env:
        env[OMP_NUM_THREADS] = str(cpus)
    return env


def run_environment(
    base: Mapping[str, str],
    template_env: Mapping[str, str],
    *,
    cpus: int,
    gpu_ids: Sequence[str] | None,
) -> dict[str, str]:
    """`base` (the daemon's, cleaned) + the template's `env` + what the resources set."""
    env = dict(base)
    env.update(template_env)
    env.update(resource_env(cpus=cpus, gpu_ids=gpu_ids, template_env=template_env))
    return env
