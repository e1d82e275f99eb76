"""pytest fixtures for a real Slurm cluster (tests/slurm_cluster.py), loaded by conftest.py.

- `slurm_cluster`: one cluster per session, no accounting (squeue and scontrol only).
- `slurm_cluster_accounting`: one cluster per session with slurmdbd + MariaDB (sacct works);
  started only when a test asks for it.
- `any_slurm_cluster`: a test that takes it runs once on each of the two.
- `slurm_commands`: a `SlurmCommands` for `any_slurm_cluster`.

Where the packages are missing (or not root) these skip with the reason; .ci/run installs
them. Every test that used a cluster leaves it empty: its jobs are cancelled at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, running_cluster, unavailable_reason

from supervisor.executors.slurm.commands import SlurmCommands


def _session_cluster(
    tmp_path_factory: pytest.TempPathFactory, *, accounting: bool
) -> Iterator[SlurmCluster]:
    reason = unavailable_reason(accounting)
    if reason is not None:
        pytest.skip(reason)
    base: Path = tmp_path_factory.mktemp("slurm-acct" if accounting else "slurm")
    with running_cluster(base, accounting=accounting) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The session's cluster without accounting."""
    yield from _session_cluster(tmp_path_factory, accounting=False)


@pytest.fixture(scope="session")
def slurm_cluster_accounting_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SlurmCluster]:
    """The session's cluster with slurmdbd and MariaDB."""
    yield from _session_cluster(tmp_path_factory, accounting=True)


def _emptied(cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    yield cluster
    cluster.cancel_all()


@pytest.fixture
def slurm_cluster(slurm_cluster_session: SlurmCluster) -> Iterator[SlurmCluster]:
    """A running cluster without accounting; this test's jobs are cancelled after it."""
    yield from _emptied(slurm_cluster_session)


@pytest.fixture
def slurm_cluster_accounting(
    slurm_cluster_accounting_session: SlurmCluster,
) -> Iterator[SlurmCluster]:
    """A running cluster with accounting; this test's jobs are cancelled after it."""
    yield from _emptied(slurm_cluster_accounting_session)


@pytest.fixture(params=["plain", "accounting"])
def any_slurm_cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    """Each of the two clusters in turn."""
    name = "slurm_cluster" if request.param == "plain" else "slurm_cluster_accounting"
    cluster: SlurmCluster = request.getfixturevalue(name)
    return cluster


@pytest.fixture
def slurm_commands(any_slurm_cluster: SlurmCluster) -> SlurmCommands:
    """The command layer pointed at `any_slurm_cluster`."""
    return SlurmCommands(env=dict(any_slurm_cluster.env))
