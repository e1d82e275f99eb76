"""The shipped unit under a real systemd 252 (PID 1 of isolated namespaces), as installed.

Each test boots systemd with the unit file exactly as shipped (ExecStart
/opt/run-supervisor/venv/bin/runsup, User run-supervisor, every hardening setting), a
journald of the namespace's own, private /etc/passwd and /etc/group with the accounts
run-supervisor, gui (a member of the group run-supervisor, as a GUI's account would be)
and outsider (not a member), and a venv built from Debian's python3 bound on /opt (see
systemd_install.py). Runs are submitted, read and cancelled from inside the namespace by
gui, through `runsup` and through plain sqlite3, as other programs do (SPEC section 3).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

# --import-mode=importlib does not put the test's folder on sys.path; the helpers are plain
# modules next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_harness import wait_for as until
from systemd_harness import SystemdNamespace, booted_systemd, skip_reason
from systemd_install import INNER_RUNSUP, install_skip_reason, service_opt

REPO = Path(__file__).resolve().parents[2]
UNIT = "run-supervisor.service"
UNIT_TEXT = (REPO / "systemd" / UNIT).read_text()
TEST_SIM = REPO / "tests" / "sims" / "testsim.py"
SERVICE_USER = "run-supervisor"
GUI_USER = "gui"
OUTSIDER = "outsider"
STATE_DIR = "/var/lib/run-supervisor"
DATABASE = f"{STATE_DIR}/runs.db"
RUNS_DIR = f"{STATE_DIR}/runs"
INNER_CONFIG = "/run/harness/config.toml"
INNER_SIM = "/run/harness/testsim.py"
CONFIG_DROP_IN = f"{UNIT}.d/config.conf"
CONFIG_DROP_IN_TEXT = f"[Service]\nEnvironment=RUNSUP_CONFIG={INNER_CONFIG}\n"
DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.05
GRACE_SECONDS = 1
SIGTERM = 15
SIGKILL = 9

T = TypeVar("T")


def _skip_reason() -> str | None:
    return skip_reason() or install_skip_reason()


pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]

# A foreign reader: Python's own sqlite3, no SQLAlchemy, no runsup (SPEC section 3).
QUERY_CODE = """
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
con.row_factory = sqlite3.Row
rows = [dict(r) for r in con.execute(sys.argv[2])]
con.close()
print(json.dumps(rows))
"""
# Holds a read connection (so -wal/-shm exist, created by this user) until stdin closes.
HOLD_CODE = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
mode = con.execute("PRAGMA journal_mode").fetchone()[0]
print(mode, con.execute("SELECT count(*) FROM runs").fetchone()[0], flush=True)
sys.stdin.read()
con.close()
"""


def config_text(*, on_stop: str = "detach", extra: str = "") -> str:
    """The service's configuration: the state directory's files, fast rescans, testsim."""
    return f"""
database = "{DATABASE}"
runs_dir = "{RUNS_DIR}"
max_concurrent_runs = 2
cancel_grace_seconds = {GRACE_SECONDS}
rescan_interval_seconds = 0.5
db_poll_interval_seconds = 0.5
on_stop = "{on_stop}"

[templates.testsim]
command = ["{{python}}", "{INNER_SIM}", "{{config_path}}"]
{extra}"""


@dataclass
class Service:
    """The booted namespace with the unit installed, and ways to look at it."""

    ns: SystemdNamespace

    # -- setting up ----------------------------------------------------------

    def write_config(self, text: str) -> None:
        """(Re)write the config file the drop-in names (read at start and on reload)."""
        path = self.ns.workdir / "config.toml"
        path.write_text(text)
        path.chmod(0o644)

    def install_sim(self) -> None:
        """Put the test simulation where the service user can read it."""
        target = self.ns.workdir / "testsim.py"
        shutil.copy(TEST_SIM, target)
        target.chmod(0o644)

    # -- systemd -------------------------------------------------------------

    def systemctl(self, *args: str) -> None:
        """systemctl that must succeed."""
        result = self.ns.systemctl(*args)
        assert result.returncode == 0, f"systemctl {args}: {result.stderr}\n{self.ns.console()}"

    def props(self) -> dict[str, str]:
        """The unit's state."""
        return self.ns.show(
            UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result"
        )

    def wait_status_text(self, text: str) -> None:
        """Wait until the unit's STATUS= line reads text."""
        until(f"StatusText {text!r}", lambda: self.props()["StatusText"] == text)

    def journal(self, *args: str) -> list[tuple[int, dict[str, Any]]]:
        """The daemon's journal entries as (PRIORITY, parsed JSON log line)."""
        out = self.ns.run("journalctl", "--no-pager", "-o", "json", "-u", UNIT, *args)
        assert out.returncode == 0, out.stderr
        entries = []
        for line in out.stdout.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                entries.append((int(entry["PRIORITY"]), json.loads(message)))
        return entries

    def events(self, *args: str) -> list[str]:
        """Event names the daemon logged, in order."""
        return [line.get("event", "") for _, line in self.journal(*args)]

    def wait_event(self, event: str, count: int = 1) -> None:
        """Wait until the daemon has logged event count times."""
        until(f"{count} x {event} in the journal", lambda: self.events().count(event) >= count)

    # -- as other users ------------------------------------------------------

    def as_user(self, user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run cmd inside as user (with that user's groups)."""
        return self.ns.run(
            "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd
        )

    def runsup(self, *args: str, user: str = GUI_USER) -> str:
        """The installed runsup, run by user with the service's config; its stdout."""
        out = self.as_user(user, INNER_RUNSUP, "--config", INNER_CONFIG, *args)
        assert out.returncode == 0, f"runsup {args} as {user}: {out.stderr}"
        return out.stdout

    def submit(self, config: dict[str, Any], user: str = GUI_USER) -> str:
        """Submit a testsim run as user; its id."""
        return self.runsup(
            "submit", "--template", "testsim", "--config-json", json.dumps(config), user=user
        ).strip()

    def query(self, sql: str, user: str = GUI_USER) -> list[dict[str, Any]]:
        """Rows from the service's database, read by user with plain sqlite3."""
        out = self.as_user(user, "/usr/bin/python3", "-c", QUERY_CODE, DATABASE, sql)
        assert out.returncode == 0, f"query as {user}: {out.stderr}"
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows

    def row(self, run_id: str) -> dict[str, Any]:
        """A run's row (ids are 12 hex characters, checked by runsup)."""
        assert len(run_id) == 12 and all(c in "0123456789abcdef" for c in run_id), run_id
        (found,) = self.query(f"SELECT * FROM runs WHERE id = '{run_id}'")
        return found

    def wait_row(self, run_id: str, *statuses: str) -> dict[str, Any]:
        """Wait until the run has one of statuses; its row."""
        return until(
            f"run {run_id} in {statuses}",
            lambda: r if (r := self.row(run_id))["status"] in statuses else None,
        )

    def identity(self, pid: int) -> str | None:
        """A live process's start time inside the namespace (pid + this = identity)."""
        out = self.ns.run("cat", f"/proc/{pid}/stat")
        if out.returncode != 0:
            return None
        fields = out.stdout.rpartition(")")[2].split()
        return None if fields[0] == "Z" else fields[19]

    def modes(self, *paths: str) -> dict[str, str]:
        """'mode owner group' of each path."""
        out = self.ns.run("stat", "-c", "%n %a %U %G", *paths)
        assert out.returncode == 0, out.stderr
        return {n: rest for n, _, rest in (line.partition(" ") for line in out.stdout.splitlines())}

    def release(self, name: str) -> None:
        """Create /tmp/name inside: a held testsim run waiting for it ends."""
        assert self.ns.run("touch", f"/tmp/{name}").returncode == 0


@pytest.fixture(scope="module")
def opt() -> Path:
    """The host folder holding /opt/run-supervisor/venv (built once, cached)."""
    return service_opt()


@pytest.fixture
def boot(opt: Path) -> Iterator[Callable[[str | None], Service]]:
    """Boots the shipped unit; with a config, also the drop-in that points RUNSUP_CONFIG at it."""
    with contextlib.ExitStack() as stack:

        def start(config: str | None) -> Service:
            units = {UNIT: UNIT_TEXT}
            if config is not None:
                units[CONFIG_DROP_IN] = CONFIG_DROP_IN_TEXT
            ns = stack.enter_context(
                booted_systemd(
                    units,
                    users=[SERVICE_USER, GUI_USER, OUTSIDER],
                    members={SERVICE_USER: [GUI_USER]},
                    opt_dir=opt,
                    journald=True,
                )
            )
            service = Service(ns)
            if config is not None:
                service.write_config(config)
                service.install_sim()
            return service

        yield start


def held(name: str, **extra: Any) -> dict[str, Any]:
    """A testsim run that reports progress, then waits for /tmp/name, then exits 0."""
    return {
        "progress": [
            {"type": "start", "config": {"total_erlangs": 1, "total_iterations": 4}},
            {"type": "iteration", "erlang": 300.0, "iteration": 2, "total_iterations": 4},
        ],
        "wait_for_file": f"/tmp/{name}",
        "exit_code": 0,
        **extra,
    }


def test_shipped_unit_serves_as_its_user_with_group_modes(
    boot: Callable[[str | None], Service],
) -> None:
    svc = boot(None)
    svc.systemctl("start", UNIT)
    props = svc.props()
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"] == "0 running, 0 pending"
    assert props["NRestarts"] == "0"
    main = props["MainPID"]
    owner = svc.ns.run("stat", "-c", "%U %G", f"/proc/{main}").stdout.split()
    assert owner == [SERVICE_USER, SERVICE_USER]

    # No config: $STATE_DIRECTORY is the default home of the database and the runs.
    (ready,) = until(
        "daemon_ready in the journal",
        lambda: [line for _, line in svc.journal() if line.get("event") == "daemon_ready"],
    )
    assert ready["database"] == DATABASE
    assert ready["runs_dir"] == RUNS_DIR
    modes = svc.modes(STATE_DIR, DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", RUNS_DIR)
    group_rw = f"660 {SERVICE_USER} {SERVICE_USER}"
    assert modes == {
        STATE_DIR: f"2770 {SERVICE_USER} {SERVICE_USER}",
        DATABASE: group_rw,
        f"{DATABASE}-wal": group_rw,
        f"{DATABASE}-shm": group_rw,
        RUNS_DIR: f"2750 {SERVICE_USER} {SERVICE_USER}",
    }

    svc.systemctl("stop", UNIT)
    props = svc.props()
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
    # systemd clears the status of a unit with no process left; else our last line stays.
    assert props["StatusText"] in ("", "stopped, 0 left running"), props


def test_reload_restart_and_stop_never_touch_a_run(boot: Callable[[str | None], Service]) -> None:
    svc = boot(config_text())
    svc.systemctl("start", UNIT)
    svc.wait_status_text("0 running, 0 pending")

    run_id = svc.submit(held("release-a"))
    row = svc.wait_row(run_id, "RUNNING")
    pid, pgid = row["pid"], row["pgid"]
    assert pid and pgid
    born = svc.identity(pid)
    assert born is not None
    svc.wait_status_text("1 running, 0 pending")

    # reload: a new template and limit, the run untouched.
    main = svc.props()["MainPID"]
    svc.write_config(config_text(extra='[templates.added]\ncommand = ["/bin/true"]\n'))
    svc.systemctl("reload", UNIT)
    svc.wait_event("config_reloaded")
    reloaded = [line for _, line in svc.journal() if line.get("event") == "config_reloaded"]
    assert "added" in reloaded[-1]["templates"]
    assert svc.props()["MainPID"] == main

    # A broken file is refused at error priority; the old configuration stays.
    svc.write_config("max_concurrent_runs = [not toml\n")
    svc.systemctl("reload", UNIT)
    svc.wait_event("reload_refused")
    errors = svc.events("-p", "err")
    assert "reload_refused" in errors
    assert "config_reloaded" not in errors and "daemon_ready" not in errors
    props = svc.props()
    assert (props["ActiveState"], props["MainPID"]) == ("active", main), props
    assert props["StatusText"] == "1 running, 0 pending"
    svc.write_config(config_text())

    # restart: a new daemon, the same run process, adopted.
    svc.systemctl("restart", UNIT)
    props = svc.props()
    assert props["ActiveState"] == "active" and props["MainPID"] != main, props
    assert svc.identity(pid) == born, "the run's process survived the restart"
    svc.wait_event("run_adopted")
    svc.wait_status_text("1 running, 0 pending")
    assert svc.row(run_id)["status"] == "RUNNING"

    svc.release("release-a")
    done = svc.wait_row(run_id, "COMPLETED", "FAILED", "CANCELLED")
    assert (done["status"], done["exit_code"], done["exit_signal"]) == ("COMPLETED", 0, None)
    assert (done["current_iteration"], done["total_iterations"]) == (2, 4)
    svc.wait_status_text("0 running, 0 pending")

    # stop with on_stop="detach": the service goes, the run goes on, the next start adopts it.
    second = svc.submit(held("release-b"))
    row = svc.wait_row(second, "RUNNING")
    born = svc.identity(row["pid"])
    svc.systemctl("stop", UNIT)
    props = svc.props()
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
    assert props["StatusText"] == "stopped, 1 left running", "what systemctl status shows"
    assert svc.identity(row["pid"]) == born, "stop (detach) leaves the run running"
    assert svc.row(second)["status"] == "RUNNING"
    svc.systemctl("start", UNIT)
    svc.wait_status_text("1 running, 0 pending")
    svc.release("release-b")
    assert svc.wait_row(second, "COMPLETED", "FAILED", "CANCELLED")["status"] == "COMPLETED"

    # Priorities: info lines at 6, no error line but the refused reload.
    priorities = {line.get("event"): prio for prio, line in svc.journal()}
    assert priorities["daemon_ready"] == 6
    assert priorities["reload_refused"] == 3
    raw = svc.ns.run("journalctl", "--no-pager", "-o", "cat", "-u", UNIT).stdout.splitlines()
    assert raw and all(json.loads(line)["event"] for line in raw), "journald ate the <N>"


def test_stop_with_on_stop_cancel_cancels_runs_before_the_unit_is_inactive(
    boot: Callable[[str | None], Service],
) -> None:
    svc = boot(config_text(on_stop="cancel"))
    svc.systemctl("start", UNIT)
    polite = svc.submit(held("never"))
    stubborn = svc.submit(held("never", ignore_term=True))
    pids = [svc.wait_row(run_id, "RUNNING")["pid"] for run_id in (polite, stubborn)]
    svc.wait_status_text("2 running, 0 pending")

    svc.systemctl("stop", UNIT)  # returns once the unit is inactive
    props = svc.props()
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props
    # systemd clears the status of a unit with no process left; else our last line stays.
    assert props["StatusText"] in ("", "stopped, 0 left running"), props
    first, second = svc.row(polite), svc.row(stubborn)
    assert (first["status"], first["exit_signal"]) == ("CANCELLED", SIGTERM), first
    assert (second["status"], second["exit_signal"]) == ("CANCELLED", SIGKILL), second
    assert first["cancel_requested_at"] and second["cancel_requested_at"]
    assert all(svc.identity(pid) is None for pid in pids)
    procs = svc.ns.cgroup / "system.slice" / UNIT / "cgroup.procs"
    assert not procs.exists() or procs.read_text().split() == [], "nothing left in the unit"
    events = svc.events()
    assert events.index("daemon_stopped") > max(
        i for i, e in enumerate(events) if e == "run_finished"
    )


def test_group_member_reads_and_writes_the_database_outsider_cannot(
    boot: Callable[[str | None], Service],
) -> None:
    svc = boot(config_text())
    svc.systemctl("start", UNIT)

    # Read: plain sqlite3 and runsup, while the daemon holds the database.
    assert svc.query("PRAGMA journal_mode") == [{"journal_mode": "wal"}]
    assert json.loads(svc.runsup("list", "--json")) == []

    # Write: submit (an INSERT) and cancel (cancel_requested_at), as SPEC lets programs do.
    quick = svc.submit({"progress": [{"iteration": 1, "total_iterations": 1}]})
    assert svc.wait_row(quick, "COMPLETED", "FAILED", "CANCELLED")["status"] == "COMPLETED"
    waiting = svc.submit(held("never"))
    svc.wait_row(waiting, "RUNNING")
    svc.runsup("cancel", waiting)
    assert svc.wait_row(waiting, "CANCELLED", "COMPLETED", "FAILED")["status"] == "CANCELLED"

    # The run directories: readable by the group, not writable.
    run_dir = f"{RUNS_DIR}/{quick}"
    files = [f"{run_dir}/{name}" for name in ("config.json", "progress.jsonl", "logs/sim.log")]
    owned = f"{SERVICE_USER} {SERVICE_USER}"
    assert svc.modes(RUNS_DIR, run_dir, f"{run_dir}/logs", *files) == {
        RUNS_DIR: f"2750 {owned}",
        run_dir: f"750 {owned}",
        f"{run_dir}/logs": f"750 {owned}",
        **{name: f"640 {owned}" for name in files},
    }
    assert svc.as_user(GUI_USER, "cat", f"{run_dir}/progress.jsonl").returncode == 0
    assert svc.as_user(GUI_USER, "cat", f"{run_dir}/logs/sim.log").returncode == 0
    assert svc.as_user(GUI_USER, "touch", f"{run_dir}/planted").returncode != 0

    # Someone outside the group sees nothing.
    for cmd in (
        ["ls", STATE_DIR],
        ["cat", DATABASE],
        ["/usr/bin/python3", "-c", QUERY_CODE, DATABASE, "SELECT 1"],
    ):
        denied = svc.as_user(OUTSIDER, *cmd)
        assert denied.returncode != 0, cmd
    assert "Permission denied" in svc.as_user(OUTSIDER, "ls", STATE_DIR).stderr

    # The GUI opens the database while the service is down, so its -wal/-shm are the GUI's:
    # the daemon still starts, writes and runs.
    svc.systemctl("stop", UNIT)
    assert svc.ns.run("test", "-e", f"{DATABASE}-wal").returncode != 0, "daemon closed cleanly"
    holder = svc.ns.popen(
        "setpriv",
        f"--reuid={GUI_USER}",
        f"--regid={GUI_USER}",
        "--init-groups",
        "--",
        "/usr/bin/python3",
        "-c",
        HOLD_CODE,
        DATABASE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["wal", "2"]
        planted = svc.modes(f"{DATABASE}-wal", f"{DATABASE}-shm")
        assert set(planted.values()) == {f"660 {GUI_USER} {SERVICE_USER}"}, planted
        svc.systemctl("start", UNIT)
        after = svc.submit({})
        assert svc.wait_row(after, "COMPLETED", "FAILED", "CANCELLED")["status"] == "COMPLETED"
        assert svc.props()["ActiveState"] == "active"
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(DEADLINE_SECONDS)
