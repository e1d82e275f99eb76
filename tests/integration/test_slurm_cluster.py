"""The test cluster itself: on loopback only, and gone without a trace after stop()."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from daemon_harness import pid_alive, wait_for
from slurm_cluster import (
    WHOLE_PARTITION,
    SlurmCluster,
    listening_addresses,
    running_cluster,
    unavailable_reason,
)


def test_slurm_daemons_listen_on_loopback_only(any_slurm_cluster: SlurmCluster) -> None:
    ports = any_slurm_cluster.ports
    # slurmdbd has no setting for its address in 22.05 (it binds every interface); every
    # request to it still needs a credential from this cluster's own munge key.
    local = [ports[name] for name in ("slurmctld", "slurmd", "mysql") if name in ports]
    assert listening_addresses(local) == {"127.0.0.1"}


def test_two_partitions(slurm_cluster: SlurmCluster) -> None:
    out = slurm_cluster.run("sinfo", "-h", "-o", "%P %a %t").stdout.split("\n")
    assert "debug* up idle" in out and f"{WHOLE_PARTITION} up idle" in out


def test_stop_leaves_no_process_and_no_socket(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_cluster(tmp_path / "c") as cluster:
        job = cluster.run("sbatch", "--parsable", "--output=/dev/null", "--wrap=sleep 300")
        cluster.wait_job_state(job.stdout.strip(), ("RUNNING",), 30)
        assert _processes_under(cluster.base)  # the job's script runs from the spool dir
        pids = [process.pid for process in cluster.processes.values()]
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
    assert cluster.processes == {}
    assert not any(pid_alive(pid) for pid in pids)
    assert not cluster.munge_dir.exists()
    assert listening_addresses(list(cluster.ports.values())) == set()
    wait_for("the job's processes to be gone", lambda: not _processes_under(cluster.base))


def _processes_under(base: Path) -> list[int]:
    """Processes whose command line names a file under `base` (a job's slurm_script)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(str(base) in arg for arg in process.info["cmdline"] or ()):
            found.append(process.info["pid"])
    return found
