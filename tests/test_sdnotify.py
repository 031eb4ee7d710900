"""agent.sdnotify against a real NOTIFY_SOCKET: a datagram socket the test binds, as systemd does.

systemd reads each datagram with SO_PASSCRED and, under NotifyAccess=main, believes it only if
the sender's pid is the service's main pid; the receiver here checks those credentials too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import time
import uuid

import pytest
import structlog

from agent import logs
from agent.main import Heartbeat
from agent.sdnotify import Notifier, watchdog_interval


class NotifySocket:
    """What systemd binds for a Type=notify service: returns each datagram's lines and pid."""

    def __init__(self, address: str) -> None:
        self.address = address  # as in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(5)
        self.sender_pid = 0

    def receive(self) -> list[str]:
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                self.sender_pid, _uid, _gid = struct.unpack("3i", payload)
        return data.decode().split("\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path, monkeypatch):
    s = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    yield s
    s.close()


@pytest.fixture
def abstract_socket(monkeypatch):
    s = NotifySocket(f"@andromede-test-{uuid.uuid4().hex}")
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    yield s
    s.close()


def test_ready_status_watchdog_stopping_reach_a_path_socket(path_socket):
    notifier = Notifier.from_environ()
    assert notifier.enabled
    assert notifier.status("reconciling: first full pass")
    assert path_socket.receive() == ["STATUS=reconciling: first full pass"]
    assert path_socket.sender_pid == os.getpid()  # what NotifyAccess=main checks
    assert notifier.ready("serving; generation 42 applied")
    assert path_socket.receive() == ["READY=1", "STATUS=serving; generation 42 applied"]
    assert notifier.watchdog()
    assert path_socket.receive() == ["WATCHDOG=1"]
    assert notifier.extend_timeout(5)
    assert path_socket.receive() == ["EXTEND_TIMEOUT_USEC=5000000"]
    assert notifier.stopping()
    assert path_socket.receive() == ["STOPPING=1"]
    notifier.close()


def test_reloading_carries_the_monotonic_time(path_socket):
    notifier = Notifier.from_environ()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reading agent.toml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic, status = path_socket.receive()
    assert reloading == "RELOADING=1" and status == "STATUS=reading agent.toml"
    name, _, usec = monotonic.partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_abstract_socket_names_work(abstract_socket):
    notifier = Notifier.from_environ()
    assert notifier.ready()
    assert abstract_socket.receive() == ["READY=1"]
    assert notifier.watchdog()
    assert abstract_socket.receive() == ["WATCHDOG=1"]


def test_status_is_kept_to_one_line(path_socket):
    notifier = Notifier.from_environ()
    notifier.status("reconciling\n1000 ports")
    assert path_socket.receive() == ["STATUS=reconciling 1000 ports"]
    with pytest.raises(ValueError, match="one VAR=value line"):
        notifier.notify("READY=1\nSTATUS=x")


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environ()
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_unset_keeps_the_variables_from_children(path_socket):
    env = {
        "NOTIFY_SOCKET": path_socket.address,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environ(env, unset=True)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval == 15.0
    assert notifier.watchdog()
    assert path_socket.receive() == ["WATCHDOG=1"]


@pytest.fixture
def log_lines():
    """The agent's log, as JSON lines in a buffer; the logging set-up restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure("json", stream=buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, log_lines):
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    (warning,) = log_lines()
    assert warning["event"] == "sdnotify.failed" and warning["sent"] == "WATCHDOG=1"
    assert warning["socket"] == str(tmp_path / "gone")


def test_an_unusable_address_gives_a_no_op_notifier_and_says_why(log_lines):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and notifier.ready() is False
    (warning,) = log_lines()
    assert warning["event"] == "sdnotify.unusable_socket" and "vsock:2:1234" in warning["error"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30: ping every 15 s
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(env, expected):
    pid = os.getpid()
    env = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert watchdog_interval(env) == expected
    assert watchdog_interval(env, pid=pid) == expected


def test_the_heartbeat_pings_at_the_watchdog_rate_and_extends_the_start_until_ready(tmp_path):
    receiver = NotifySocket(str(tmp_path / "notify"))
    receiver.sock.settimeout(0.2)
    now = [100.0]
    notifier = Notifier(receiver.address, watchdog_interval=1.0)
    heartbeat = Heartbeat(notifier, clock=lambda: now[0])

    def sent() -> list[str]:
        lines = []
        try:
            while True:
                lines += receiver.receive()
        except TimeoutError:
            return lines

    try:
        heartbeat()  # the first progress: a ping and a start extension
        assert sent() == ["WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000"]
        now[0] += 0.5
        heartbeat()  # too soon for either
        assert sent() == []
        now[0] += 0.5
        heartbeat()
        assert sent() == ["WATCHDOG=1"]
        now[0] += Heartbeat.EXTEND_EVERY_S
        heartbeat()
        assert sent() == ["WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000"]
        heartbeat.ready = True  # after READY=1, only the watchdog
        now[0] += Heartbeat.EXTEND_EVERY_S
        heartbeat()
        assert sent() == ["WATCHDOG=1"]
    finally:
        notifier.close()
        receiver.close()
