"""A daemon harness whose runs go to the test Slurm cluster (tests and bench/ share it)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon_harness import TEST_SIM, DaemonHarness, wait_for
from slurm_cluster import KILL_WAIT_SECONDS, WHOLE_PARTITION, SlurmCluster

from supervisor.db import RunRecord

POLL_INTERVAL = 0.5
COMMAND_TIMEOUT = 5.0
JOB_DEADLINE = 60.0  # a job submitted, run and ended on the idle test cluster
# Longer than the cluster's KillWait: the daemon's own escalation is what ends the job.
GRACE_SECONDS = KILL_WAIT_SECONDS + 3


class ClusterDaemon(DaemonHarness):
    """A daemon with `[executors.cluster]` on the test cluster and a `cl` template."""

    def __init__(
        self,
        tmp: Path,
        cluster: SlurmCluster,
        *,
        executor_extra: str = "",
        poll_interval: float = POLL_INTERVAL,
        **settings: Any,
    ) -> None:
        self.cluster = cluster
        self.cluster_runs = tmp / "cluster-runs"
        self.executor_extra = executor_extra  # more keys of [executors.cluster]
        self.poll_interval = poll_interval
        super().__init__(tmp, **{"cancel_grace_seconds": GRACE_SECONDS, **settings})

    def write_config(self, extra_templates: str = "") -> None:
        """The harness's config plus the cluster executors and their templates (`cl` on the
        default partition; `whole`, every CPU, on the OverSubscribe=NO one)."""
        py, sim = json.dumps(sys.executable), json.dumps(str(TEST_SIM))
        command = f'command = [{py}, {sim}, "{{config_path}}"]'
        runs = json.dumps(str(self.cluster_runs))
        cpus = self.cluster.cpus
        extra = "\n".join(
            [
                "[templates.cl]",
                command,
                'executor = "cluster"',
                # Every CPU of the node, in the OverSubscribe=NO partition: a second one waits.
                "[templates.whole]",
                command,
                'executor = "whole"',
                f"cpus = {cpus}",
                extra_templates,
                "[executors.cluster]",
                'kind = "slurm"',
                f"runs_dir = {runs}",
                f"poll_interval_seconds = {self.poll_interval}",
                # How long a restarted daemon waits out an sbatch its predecessor may have
                # left running before it looks for a job by name.
                f"command_timeout_seconds = {COMMAND_TIMEOUT}",
                self.executor_extra,
                "[executors.whole]",
                'kind = "slurm"',
                f"runs_dir = {runs}",
                f'partition = "{WHOLE_PARTITION}"',
                f"poll_interval_seconds = {POLL_INTERVAL}",
            ]
        )
        super().write_config(extra)

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        """Start the daemon with the cluster's client environment (SLURM_CONF, PATH)."""
        super().start({**self.cluster.env, **(env or {})}, wait_ready)

    def wait_running(self, run_id: str, deadline: float = JOB_DEADLINE) -> RunRecord:
        """Wait until the run is RUNNING with its job's id."""
        return wait_for(
            f"run {run_id} RUNNING on the cluster",
            lambda: self._running_or_fail(run_id),
            deadline,
        )

    def _running_or_fail(self, run_id: str) -> RunRecord | None:
        record = self.run(run_id)
        if record.status in ("COMPLETED", "FAILED", "CANCELLED"):
            raise AssertionError(f"run {run_id} ended: {record.status} {record.error_message}")
        return record if record.status == "RUNNING" and record.external_id else None

    def jobs_named(self, run_id: str) -> list[str]:
        """Every job of the run that slurmctld lists (any state, every attempt), oldest first:
        never more than one for one attempt."""
        return [job for job, _ in self.jobs_by_attempt(run_id)]

    def jobs_by_attempt(self, run_id: str) -> list[tuple[str, int]]:
        """(job id, attempt) of every job of the run slurmctld lists, oldest first (the
        attempt from the job's name, `runsup-<run id>-<attempt>`)."""
        out = self.cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%j")
        prefix = f"runsup-{run_id}-"
        jobs = []
        for line in out.stdout.splitlines():
            job_id, _, name = line.partition("|")
            if name.startswith(prefix):
                jobs.append((job_id, int(name.removeprefix(prefix))))
        return sorted(jobs, key=lambda job: int(job[0]))

    def ask_cancel(self, run_id: str) -> None:
        """Ask for a cancel as any program may (the row's cancel_requested_at)."""
        assert self.store.request_cancel(run_id)


@contextlib.contextmanager
def started_daemon(
    tmp_path: Path, cluster: SlurmCluster, **settings: Any
) -> Iterator[ClusterDaemon]:
    """A started daemon, closed (its stand-ins ended) however the block ends."""
    d = ClusterDaemon(tmp_path, cluster, **settings)
    try:
        d.start()
        yield d
    finally:
        d.close()
