"""sd_notify datagrams, checked on real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import notify
from supervisor.notify import SYSTEMD_VARIABLES, Notifier, scrub_environment

RECV_TIMEOUT_SECONDS = 2.0
RECV_BUFFER_BYTES = 4096
WATCHDOG_USEC = 30_000_000


class Receiver:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str, notify_socket: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(RECV_TIMEOUT_SECONDS)
        self.notify_socket = notify_socket

    def recv(self) -> str:
        """Next datagram, decoded."""
        return self.sock.recv(RECV_BUFFER_BYTES).decode()

    def assert_empty(self) -> None:
        """No datagram is waiting."""
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(RECV_BUFFER_BYTES)
        finally:
            self.sock.settimeout(RECV_TIMEOUT_SECONDS)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for sun_path (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sdn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_receiver(short_dir: Path) -> Iterator[Receiver]:
    """A receiver bound to a socket file."""
    path = str(short_dir / "notify.sock")
    receiver = Receiver(path, path)
    yield receiver
    receiver.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    """A receiver bound in the abstract namespace."""
    name = f"runsup-test-{uuid.uuid4().hex}"
    receiver = Receiver("\0" + name, "@" + name)
    yield receiver
    receiver.sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    """Each kind of NOTIFY_SOCKET in turn."""
    return request.getfixturevalue(f"{request.param}_receiver")  # type: ignore[no-any-return]


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    """A notifier built from an environment naming the receiver."""
    with Notifier.from_environ({"NOTIFY_SOCKET": receiver.notify_socket}) as n:
        yield n


def test_enabled_when_socket_set(notifier: Notifier) -> None:
    assert notifier.enabled


def test_ready_payload(notifier: Notifier, receiver: Receiver) -> None:
    notifier.ready()
    assert receiver.recv() == "READY=1"


def test_ready_with_status_payload(notifier: Notifier, receiver: Receiver) -> None:
    notifier.ready("2 running, 3 pending")
    assert receiver.recv() == "READY=1\nSTATUS=2 running, 3 pending"


def test_status_payload(notifier: Notifier, receiver: Receiver) -> None:
    notifier.status("1 running, 0 pending")
    assert receiver.recv() == "STATUS=1 running, 0 pending"


def test_status_newlines_folded(notifier: Notifier, receiver: Receiver) -> None:
    notifier.status("line one\nline two")
    assert receiver.recv() == "STATUS=line one line two"


def test_watchdog_payload(notifier: Notifier, receiver: Receiver) -> None:
    notifier.watchdog()
    assert receiver.recv() == "WATCHDOG=1"


def test_stopping_payload(notifier: Notifier, receiver: Receiver) -> None:
    notifier.stopping()
    assert receiver.recv() == "STOPPING=1"


def test_stopping_payload_with_status(notifier: Notifier, receiver: Receiver) -> None:
    notifier.stopping("stopped, 2 left running")
    assert receiver.recv() == "STOPPING=1\nSTATUS=stopped, 2 left running"


def test_reloading_payload_carries_monotonic_usec(notifier: Notifier, receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.recv().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_one_datagram_per_message(notifier: Notifier, receiver: Receiver) -> None:
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    assert [receiver.recv() for _ in range(3)] == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    receiver.assert_empty()


def test_socket_is_close_on_exec(notifier: Notifier) -> None:
    assert notifier._sock is not None
    assert not os.get_inheritable(notifier._sock.fileno())


def test_abstract_address_has_leading_nul() -> None:
    assert notify.socket_address("@foo/bar") == "\0foo/bar"
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.socket_address("vsock:2:1234") is None


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_disabled_without_notify_socket(environ: dict[str, str]) -> None:
    n = Notifier.from_environ(environ)
    assert not n.enabled
    assert n.watchdog_interval is None
    n.ready("x")
    n.status("x")
    n.watchdog()
    n.reloading()
    n.stopping()
    n.close()


def test_disabled_for_unsupported_address() -> None:
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_from_environ_defaults_to_process_environment(
    monkeypatch: pytest.MonkeyPatch, path_receiver: Receiver
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.notify_socket)
    with Notifier.from_environ() as n:
        n.watchdog()
    assert path_receiver.recv() == "WATCHDOG=1"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": str(WATCHDOG_USEC)}, 15.0),
        ({"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "SELF"}, 15.0),
        ({"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "garbage"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "3"}, 1.5e-6),
    ],
)
def test_watchdog_interval_rules(
    path_receiver: Receiver, extra: dict[str, str], expected: float | None
) -> None:
    pids = {"SELF": str(os.getpid()), "OTHER": str(os.getpid() + 1)}
    environ = {"NOTIFY_SOCKET": path_receiver.notify_socket}
    environ.update({key: pids.get(value, value) for key, value in extra.items()})
    with Notifier.from_environ(environ) as n:
        assert n.watchdog_interval == expected


class RecordingLogger:
    """Stands in for the module's structlog logger."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []  # warnings
        self.infos: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.infos.append((event, kw))


@pytest.fixture
def recording_log(monkeypatch: pytest.MonkeyPatch) -> RecordingLogger:
    """Capture what the notifier logs."""
    log = RecordingLogger()
    monkeypatch.setattr(notify, "_log", log)
    return log


def test_vanished_socket_does_not_raise_and_logs_once(
    short_dir: Path, recording_log: RecordingLogger
) -> None:
    path = str(short_dir / "notify.sock")
    receiver = Receiver(path, path)
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as n:
        n.ready()
        assert receiver.recv() == "READY=1"
        receiver.sock.close()
        os.unlink(path)
        n.status("nobody listens")
        n.watchdog()
        n.stopping()
    assert [event for event, _ in recording_log.calls] == ["sd_notify_failed"]
    assert recording_log.calls[0][1]["notify_socket"] == path


def test_vanished_abstract_socket_does_not_raise(recording_log: RecordingLogger) -> None:
    name = f"runsup-test-{uuid.uuid4().hex}"
    with Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}) as n:
        n.ready()
        n.watchdog()
    assert [event for event, _ in recording_log.calls] == ["sd_notify_failed"]
    assert recording_log.calls[0][1]["notify_socket"] == "@" + name


def test_failure_logged_again_after_recovery(
    short_dir: Path, recording_log: RecordingLogger
) -> None:
    path = str(short_dir / "notify.sock")
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as n:
        n.watchdog()
        n.watchdog()
        receiver = Receiver(path, path)
        n.watchdog()
        assert receiver.recv() == "WATCHDOG=1"
        receiver.sock.close()
        os.unlink(path)
        n.watchdog()
    assert len(recording_log.calls) == 2


def test_send_after_close_is_dropped(notifier: Notifier, receiver: Receiver) -> None:
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    notifier.ready()
    receiver.assert_empty()


def test_scrub_environment_removes_systemd_variables() -> None:
    env = {name: "x" for name in SYSTEMD_VARIABLES}
    kept = {"PATH": "/usr/bin", "HOME": "/var/lib/run-supervisor", "OMP_NUM_THREADS": "1"}
    env.update(kept)
    assert scrub_environment(env) == kept
    assert "NOTIFY_SOCKET" in env, "the input is not modified"


def test_scrub_environment_returns_a_copy() -> None:
    env = {"PATH": "/usr/bin"}
    scrubbed = scrub_environment(env)
    scrubbed["X"] = "1"
    assert env == {"PATH": "/usr/bin"}


def test_systemd_variables_cover_the_brief() -> None:
    required = {
        "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
        "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM", "MAINPID", "MANAGERPID",
        "SYSTEMD_EXEC_PID", "TRIGGER_UNIT", "TRIGGER_PATH", "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE", "CREDENTIALS_DIRECTORY",
    }  # fmt: skip
    assert required <= SYSTEMD_VARIABLES
    assert not {"PATH", "LANG", "HOME", "USER"} & SYSTEMD_VARIABLES
