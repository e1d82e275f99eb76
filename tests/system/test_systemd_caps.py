"""Memory caps under the shipped unit and a real systemd 252, as installed (README "Memory caps
under systemd").

Two layouts of the machine's cgroups, each booted in private namespaces (systemd_harness.py):

- hybrid, as on a cgroup v1 host: systemd puts the unit in the v1 memory hierarchy, the
  unit's ExecStartPre=+ hands that cgroup to run-supervisor, and the daemon caps each run in a
  cgroup of its own under it: under the cap a run completes with its peak, past it the run
  fails "out of memory", and `systemctl restart` in the middle neither kills nor loses a
  capped run nor lifts its cap;
- unified (cgroup v2 only), the harness's default: Delegate=yes gives the unit's cgroup to
  run-supervisor, but this machine's v2 hierarchy offers no memory controller (the kernel
  has it bound to the v1 hierarchy), so a capped run fails to start, saying why and how to
  enable caps, while an uncapped one runs; and a process in a sub-cgroup of the unit (where
  a capped run's cgroup would go) outlives `systemctl restart`, still in that sub-cgroup.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# --import-mode=importlib does not put the test's folder on sys.path (see the sibling tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_harness import wait_for as until
from systemd_harness import booted_systemd, v1_memory_skip_reason
from systemd_install import install_skip_reason, service_opt
from test_systemd_service import (
    CONFIG_DROP_IN,
    CONFIG_DROP_IN_TEXT,
    GUI_USER,
    OUTSIDER,
    RUNS_DIR,
    SERVICE_USER,
    SIGKILL,
    UNIT,
    UNIT_TEXT,
    Service,
    config_text,
)
from test_systemd_service import (
    _skip_reason as _unified_skip_reason,
)

MIB = 1024 * 1024
CAP = 128 * MIB
UNDER_MIB = 32  # what a run allocates before its gate: well under CAP
PAST_MIB = 400  # what the hog allocates after its gate: far past CAP
UNIT_MEMORY_CGROUP = f"/sys/fs/cgroup/memory/system.slice/{UNIT}"
INNER_ALLOC = "/run/harness/alloc.py"
# Touches N MiB, says so, waits for its gate file, then touches M MiB more and exits 0.
ALLOC_CODE = """
import pathlib, sys, time
def touch(mib):
    chunks = [bytearray(1024 * 1024) for _ in range(mib)]
    for chunk in chunks:
        chunk[::4096] = b"x" * len(chunk[::4096])
    return chunks
held = touch(int(sys.argv[1]))
print("allocated", flush=True)
gate = pathlib.Path(sys.argv[2])
while not gate.exists():
    time.sleep(0.05)
held += touch(int(sys.argv[3]))
print("done", flush=True)
"""


def _v1_skip_reason() -> str | None:
    return v1_memory_skip_reason() or install_skip_reason()


def capped_templates() -> str:
    """`modest` stays under its cap after its gate, `hog` goes far past it; both capped."""

    def template(name: str, after_gate_mib: int) -> str:
        command = f'["/usr/bin/python3", "{INNER_ALLOC}", "{UNDER_MIB}", "/tmp/{name}", '
        command += f'"{after_gate_mib}"]'
        return f'[templates.{name}]\ncommand = {command}\nmemory_max = "128M"\n'

    return template("modest", 0) + template("hog", PAST_MIB)


@pytest.fixture(scope="module")
def opt() -> Path:
    """The host folder holding /opt/run-supervisor/venv (built once, cached)."""
    return service_opt()


@pytest.fixture
def boot(opt: Path) -> Iterator[Callable[[bool], Service]]:
    """Boots the shipped unit with capped templates; v1_memory: the hybrid layout."""
    with contextlib.ExitStack() as stack:

        def start(v1_memory: bool) -> Service:
            ns = stack.enter_context(
                booted_systemd(
                    {UNIT: UNIT_TEXT, CONFIG_DROP_IN: CONFIG_DROP_IN_TEXT},
                    users=[SERVICE_USER, GUI_USER, OUTSIDER],
                    members={SERVICE_USER: [GUI_USER]},
                    opt_dir=opt,
                    journald=True,
                    v1_memory=v1_memory,
                )
            )
            service = Service(ns)
            service.write_config(config_text(extra=capped_templates()))
            service.install_sim()
            script = ns.workdir / "alloc.py"
            script.write_text(ALLOC_CODE)
            script.chmod(0o644)
            service.systemctl("start", UNIT)
            return service

        yield start


def submit(svc: Service, template: str) -> str:
    """Submit a run of template as the GUI user; its id."""
    return svc.runsup("submit", "--template", template).strip()


def memory_cgroup(svc: Service, pid: int) -> str:
    """The v1 memory cgroup of a process inside the namespace."""
    out = svc.ns.run("cat", f"/proc/{pid}/cgroup")
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if line.split(":")[1] == "memory"]
    return line.split(":", 2)[2]


def limit_of(svc: Service, run_id: str) -> int:
    """The cap the kernel holds for a run's cgroup."""
    path = f"{UNIT_MEMORY_CGROUP}/runsup-{run_id}/memory.limit_in_bytes"
    out = svc.ns.run("cat", path)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def wait_allocated(svc: Service, run_id: str) -> None:
    """Wait until the run has touched its first UNDER_MIB (it says so in its log)."""
    log = f"{RUNS_DIR}/{run_id}/logs/sim.log"
    until(
        f"{run_id} allocated",
        lambda: "allocated" in svc.as_user(GUI_USER, "cat", log).stdout,
    )


@pytest.mark.systemd
@pytest.mark.skipif(_v1_skip_reason() is not None, reason=str(_v1_skip_reason()))
def test_caps_hold_on_a_cgroup_v1_host_across_a_restart(
    boot: Callable[[bool], Service],
) -> None:
    svc = boot(True)
    modest, hog = submit(svc, "modest"), submit(svc, "hog")
    rows = {run_id: svc.wait_row(run_id, "RUNNING") for run_id in (modest, hog)}
    for run_id, row in rows.items():
        wait_allocated(svc, run_id)
        # In a cgroup of its own under the unit's, which the unit handed to run-supervisor.
        assert memory_cgroup(svc, row["pid"]) == f"/system.slice/{UNIT}/runsup-{run_id}"
        assert limit_of(svc, run_id) == CAP
        assert row["memory_max_bytes"] == CAP
    owner = svc.modes(UNIT_MEMORY_CGROUP)[UNIT_MEMORY_CGROUP]
    assert owner.split()[1:] == [SERVICE_USER, SERVICE_USER]
    (caps,) = {line["version"] for _, line in svc.journal() if line.get("event") == "memory_caps"}
    assert caps == "v1"
    born = {run_id: svc.identity(row["pid"]) for run_id, row in rows.items()}

    # restart in the middle: the same processes, still in their cgroups, still capped.
    main = svc.props()["MainPID"]
    svc.systemctl("restart", UNIT)
    props = svc.props()
    assert props["ActiveState"] == "active" and props["MainPID"] != main, props
    svc.wait_status_text("2 running, 0 pending")
    for run_id, row in rows.items():
        assert svc.identity(row["pid"]) == born[run_id], "the run survived the restart"
        assert memory_cgroup(svc, row["pid"]) == f"/system.slice/{UNIT}/runsup-{run_id}"
        assert limit_of(svc, run_id) == CAP
        assert svc.row(run_id)["status"] == "RUNNING"

    # Under its cap: completes, with its peak (what it touched, under the cap).
    svc.release("modest")
    done = svc.wait_row(modest, "COMPLETED", "FAILED", "CANCELLED")
    assert (done["status"], done["exit_code"]) == ("COMPLETED", 0), done
    assert UNDER_MIB * MIB <= done["peak_memory_bytes"] < CAP, done

    # Past its cap, after the restart: the kernel kills it; FAILED "out of memory".
    svc.release("hog")
    failed = svc.wait_row(hog, "COMPLETED", "FAILED", "CANCELLED")
    assert (failed["status"], failed["exit_signal"]) == ("FAILED", SIGKILL), failed
    assert failed["error_message"].startswith("out of memory"), failed
    assert "128M" in failed["error_message"], failed
    assert CAP // 2 < failed["peak_memory_bytes"] <= CAP, failed
    svc.wait_status_text("0 running, 0 pending")


@pytest.mark.systemd
@pytest.mark.skipif(_unified_skip_reason() is not None, reason=str(_unified_skip_reason()))
def test_without_a_memory_controller_a_capped_run_fails_to_start_saying_how(
    boot: Callable[[bool], Service],
) -> None:
    svc = boot(False)
    # Delegate=yes took effect: the unit's v2 cgroup is run-supervisor's to divide...
    unit_cgroup = f"/sys/fs/cgroup/system.slice/{UNIT}"
    handed = [f"{unit_cgroup}/{name}" for name in ("cgroup.procs", "cgroup.subtree_control")]
    modes = svc.modes(unit_cgroup, *handed)
    assert {mode.split(" ", 1)[1] for mode in modes.values()} == {
        f"{SERVICE_USER} {SERVICE_USER}"
    }, modes
    # ...but the kernel offers it no memory controller (bound to v1 on this machine).
    controllers = svc.ns.run("cat", f"{unit_cgroup}/cgroup.controllers").stdout.split()
    if "memory" in controllers:
        pytest.skip("this machine's cgroup v2 offers the memory controller: caps would work")

    capped = submit(svc, "modest")
    failed = svc.wait_row(capped, "FAILED", "COMPLETED", "CANCELLED")
    assert failed["status"] == "FAILED" and failed["pid"] is None, failed
    message = failed["error_message"]
    assert "memory_max cannot be enforced here" in message, message
    assert "offers no memory controller" in message, message
    assert "Delegate=yes" in message, message  # how to enable them

    # A run that asks for no cap is not held back.
    plain = svc.submit({})
    assert svc.wait_row(plain, "COMPLETED", "FAILED", "CANCELLED")["status"] == "COMPLETED"
    assert svc.props()["ActiveState"] == "active"


@pytest.mark.systemd
@pytest.mark.skipif(_unified_skip_reason() is not None, reason=str(_unified_skip_reason()))
def test_a_process_in_a_sub_cgroup_of_the_unit_outlives_a_restart(
    boot: Callable[[bool], Service],
) -> None:
    # What caps on v2 rely on (Delegate=yes with KillMode=process): a process in a sub-cgroup
    # of the unit, where a run's capped cgroup goes, outlives `systemctl restart`, still there.
    svc = boot(False)
    unit_cgroup = f"/sys/fs/cgroup/system.slice/{UNIT}"
    sub = f"{unit_cgroup}/runsup-0123456789ab"
    holder = svc.ns.popen(
        "/bin/sh", "-c", f"mkdir {sub} && echo $$ > {sub}/cgroup.procs && echo in && exec sleep 300"
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "in"
    pid = int(svc.ns.run("cat", f"{sub}/cgroup.procs").stdout.split()[0])
    born = svc.identity(pid)
    svc.systemctl("restart", UNIT)
    svc.wait_status_text("0 running, 0 pending")
    assert svc.identity(pid) == born, "the process in the sub-cgroup survived the restart"
    lines = svc.ns.run("cat", f"/proc/{pid}/cgroup").stdout.splitlines()
    assert f"0::/system.slice/{UNIT}/runsup-0123456789ab" in lines, lines
    assert svc.ns.run("kill", str(pid)).returncode == 0
    holder.wait(timeout=30)
