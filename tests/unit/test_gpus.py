"""supervisor.queue.gpus: the environment a run's resources give it, and GPU discovery.

Discovery runs for real: on this machine (no NVIDIA driver) NVML is absent; the `nvidia-smi -L`
fallback is exercised with a stand-in executable that prints what the real one prints.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import structlog.testing

from supervisor.queue import gpus

SMI_OUTPUT = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5f2b7c3e-0000-1111-2222-333344445555)
  MIG 1g.5gb      Device  0: (UUID: MIG-aaaa)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5f2b7c3e-0000-1111-2222-333344446666)
"""
HAS_NVIDIA = shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def test_gpus_not_managed_leave_cuda_alone_and_set_omp() -> None:
    env = gpus.resource_env(cpus=4, gpu_ids=None, template_env={})
    assert env == {"OMP_NUM_THREADS": "4"}


def test_a_run_sees_exactly_its_gpus_in_pci_order() -> None:
    env = gpus.resource_env(cpus=1, gpu_ids=["2", "0"], template_env={})
    assert env == {
        "CUDA_VISIBLE_DEVICES": "2,0",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": "1",
    }


def test_gpus_zero_hides_every_gpu() -> None:
    env = gpus.resource_env(cpus=2, gpu_ids=[], template_env={})
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_template_omp_wins_but_template_cuda_does_not() -> None:
    template_env = {"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    merged = gpus.run_environment(
        {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "7"},
        template_env,
        cpus=2,
        gpu_ids=["1"],
    )
    assert merged["OMP_NUM_THREADS"] == "8"
    assert merged["CUDA_VISIBLE_DEVICES"] == "1"
    assert merged["PATH"] == "/usr/bin"


def test_unmanaged_gpus_keep_what_the_daemon_and_template_give() -> None:
    merged = gpus.run_environment({"CUDA_VISIBLE_DEVICES": "3"}, {}, cpus=1, gpu_ids=None)
    assert merged["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_DEVICE_ORDER" not in merged


def test_parse_nvidia_smi_list_ignores_mig_lines() -> None:
    assert gpus.parse_nvidia_smi_list(SMI_OUTPUT) == ["0", "1"]
    assert gpus.parse_nvidia_smi_list("No devices were found\n") == []


def test_configured_lists_pass_through() -> None:
    assert gpus.resolve_gpus(("0", "1")) == ("0", "1")
    assert gpus.resolve_gpus(["GPU-5f2b7c3e-0000"]) == ("GPU-5f2b7c3e-0000",)
    with pytest.raises(ValueError, match='"auto"'):
        gpus.resolve_gpus("all")


@pytest.mark.skipif(HAS_NVIDIA, reason="this machine has an NVIDIA driver")
def test_auto_finds_none_without_a_driver_and_says_so_at_debug() -> None:
    with structlog.testing.capture_logs() as logs:
        assert gpus.resolve_gpus("auto") == ()
    assert [e["log_level"] for e in logs if e["event"] == "gpu_none_found"] == ["debug"]
    assert all(e["log_level"] == "debug" for e in logs)


def fake_nvidia_smi(directory: Path, body: str) -> Path:
    """An executable that behaves like `nvidia-smi` as far as `-L` goes."""
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.skipif(HAS_NVIDIA, reason="NVML would answer before the fallback")
def test_auto_falls_back_to_nvidia_smi(tmp_path: Path) -> None:
    listing = tmp_path / "listing"
    listing.write_text(SMI_OUTPUT)
    smi = fake_nvidia_smi(tmp_path, f'[ "$1" = -L ] && exec cat {listing}; exit 2')
    assert gpus.discover_gpus(str(smi)) == ["0", "1"]


@pytest.mark.skipif(HAS_NVIDIA, reason="NVML would answer before the fallback")
def test_a_failing_nvidia_smi_means_no_gpus_without_error(tmp_path: Path) -> None:
    smi = fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    with structlog.testing.capture_logs() as logs:
        assert gpus.discover_gpus(str(smi)) == []
    reasons = [e.get("reason") for e in logs if e["event"] == "gpu_nvidia_smi_unavailable"]
    assert reasons == ["NVIDIA-SMI has failed"]
