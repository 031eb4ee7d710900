"""agent.logs: JSON lines on a stream, and journald's native protocol on a real datagram socket.

The journald tests bind their own AF_UNIX datagram socket in tmp_path where journald's would
be (/run/systemd/journal/socket) and read what the agent sends with a parser of the native
protocol written here from its specification (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/),
independently of the encoder under test.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import socket
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import structlog

from agent import logs

FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")  # what journald accepts from a client


def parse_native(data: bytes) -> list[tuple[str, bytes]]:
    """journald's parser, in short: ``NAME=value\\n``, or ``NAME\\n`` + u64le size + value + ``\\n``."""
    fields = []
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "binary value not followed by newline"
            i = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields


class Journal:
    """A stand-in for journald's native socket: binds the path, returns each entry's fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)
        self.raw: bytes = b""
        self.memfd_seals = 0

    def entry(self) -> dict[str, str]:
        """The next entry as {name: value}; every name must be one journald accepts."""
        fields = self.entry_fields()
        names = [name for name, _ in fields]
        assert len(names) == len(set(names)), f"a field sent twice: {names}"
        return {name: value.decode() for name, value in fields}

    def entry_fields(self) -> list[tuple[str, bytes]]:
        data, ancdata, _flags, _addr = self.sock.recvmsg(1 << 22, socket.CMSG_SPACE(4))
        for level, kind, payload in ancdata:  # an entry too big for a datagram: a sealed memfd
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            (fd,) = struct.unpack("i", payload[:4])
            try:
                self.memfd_seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        self.raw = data
        fields = parse_native(data)
        for name, _ in fields:
            assert FIELD_NAME.match(name), f"journald would refuse the field name {name!r}"
        return fields

    def nothing_more(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs.configure("json", stream=io.StringIO())  # closes a journald socket left open
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.socket")
    yield j
    j.close()


def json_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# --- JSON lines -------------------------------------------------------------------------------


def test_json_mode_writes_one_object_per_line_with_bound_fields():
    buf = io.StringIO()
    assert logs.configure("json", level="info", stream=buf) == "json"
    log = structlog.get_logger("agent.network").bind(vm="vm-1", tenant="acme")
    log.info("port.bound", port="tap0", generation=7, ms=8.1)
    log.warning("flows.slow", flows=1234)

    first, second = json_lines(buf)
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["level"] == "info" and first["logger"] == "agent.network"
    assert first["event"] == "port.bound"
    assert (first["vm"], first["tenant"], first["port"], first["generation"], first["ms"]) == (
        "vm-1", "acme", "tap0", 7, 8.1,
    )
    stamp = datetime.fromisoformat(first["timestamp"])
    assert first["timestamp"].endswith("Z") and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60
    assert second["level"] == "warning" and second["flows"] == 1234 and second["vm"] == "vm-1"


def test_json_mode_drops_entries_below_the_level():
    buf = io.StringIO()
    logs.configure("json", level="warning", stream=buf)
    log = structlog.get_logger("agent.x")
    log.debug("a")
    log.info("b")
    log.error("c")
    assert [e["event"] for e in json_lines(buf)] == ["c"]


def test_json_exception_stays_on_one_line():
    buf = io.StringIO()
    logs.configure("json", stream=buf)
    try:
        raise RuntimeError("qmp socket closed")
    except RuntimeError:
        structlog.get_logger("agent.compute").exception("vm.adopt_failed", vm="vm-2")
    (entry,) = json_lines(buf)
    assert entry["level"] == "error" and entry["vm"] == "vm-2"
    assert "Traceback" in entry["exception"] and "qmp socket closed" in entry["exception"]


def test_context_variables_and_stdlib_records_come_out_the_same_way():
    buf = io.StringIO()
    logs.configure("json", stream=buf)
    structlog.contextvars.bind_contextvars(request_id="req-9")
    structlog.get_logger("agent.server").info("rpc.done", status="OK")
    logging.getLogger("grpc._server").warning("Exception calling application: %s", "boom")
    rpc, grpc_record = json_lines(buf)
    assert rpc["request_id"] == "req-9"
    assert grpc_record["logger"] == "grpc._server" and grpc_record["level"] == "warning"
    assert grpc_record["event"] == "Exception calling application: boom"


def test_configure_rejects_unknown_mode_and_level():
    with pytest.raises(ValueError, match="log mode"):
        logs.configure("syslog")
    with pytest.raises(ValueError, match="log level"):
        logs.configure("json", level="loud")


# --- journald ---------------------------------------------------------------------------------


def test_journald_entry_carries_message_priority_and_bound_fields(journal):
    assert logs.configure("journald", journal_socket=str(journal.path)) == "journald"
    log = structlog.get_logger("agent.network").bind(vm="vm-1", tenant="acme", generation=42)
    line = sys._getframe().f_lineno + 1
    log.info("port.bound", port="tap0", request_id="req-1", ms=8.1)

    entry = journal.entry()
    assert entry["MESSAGE"] == (
        "port.bound vm=vm-1 tenant=acme generation=42 port=tap0 request_id=req-1 ms=8.1"
    )
    assert entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "andromede-agent"
    assert (entry["VM"], entry["TENANT"], entry["GENERATION"]) == ("vm-1", "acme", "42")
    assert entry["PORT"] == "tap0"
    assert entry["REQUEST_ID"] == "req-1" and entry["MS"] == "8.1"
    assert entry["EVENT"] == "port.bound" and entry["LOGGER"] == "agent.network"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_LINE"] == str(line)
    assert entry["CODE_FUNC"] == "test_journald_entry_carries_message_priority_and_bound_fields"
    assert "LEVEL" not in entry and "TIMESTAMP" not in entry  # journald has its own
    assert journal.nothing_more()  # one datagram per entry


def test_journald_priorities_are_syslog_numbers(journal):
    logs.configure("journald", level="debug", journal_socket=str(journal.path))
    log = structlog.get_logger("agent.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise OSError("tap gone")
    except OSError:
        log.exception("x")
    priorities = [(e["EVENT"], e["PRIORITY"]) for e in (journal.entry() for _ in range(6))]
    assert priorities == [("d", "7"), ("i", "6"), ("w", "4"), ("e", "3"), ("c", "2"), ("x", "3")]


def test_journald_multiline_values_use_the_binary_length_form(journal):
    logs.configure("journald", journal_socket=str(journal.path))
    structlog.get_logger("agent.compute").info("vm.console", vm="vm-3", output="line one\nline two")
    entry = journal.entry()
    value = b"line one\nline two"
    assert b"OUTPUT\n" + struct.pack("<Q", len(value)) + value + b"\n" in journal.raw
    assert entry["OUTPUT"] == "line one\nline two"
    assert entry["MESSAGE"] == 'vm.console vm=vm-3 output="line one\\nline two"'

    try:
        raise RuntimeError("qmp socket closed")
    except RuntimeError:
        structlog.get_logger("agent.compute").exception("vm.adopt_failed", vm="vm-3")
    entry = journal.entry()
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("vm.adopt_failed vm=vm-3\nTraceback (most recent call last):")
    assert entry["EXCEPTION"].rstrip().endswith("RuntimeError: qmp socket closed")


def test_journald_field_names_are_made_valid(journal):
    logs.configure("journald", journal_socket=str(journal.path))
    structlog.get_logger("agent.x").info(
        "names",
        **{"vm-id": "a", "a.b c": "b", "9lives": "c", "message": "d", "_private": "e", "Côté": "f"},
    )
    entry = journal.entry()  # also checks every name against journald's rules, and no duplicates
    assert entry["VM_ID"] == "a" and entry["A_B_C"] == "b" and entry["ANDROMEDE_9LIVES"] == "c"
    assert entry["ANDROMEDE_MESSAGE"] == "d" and entry["MESSAGE"].startswith("names ")
    assert entry["C_T_"] == "f"
    assert "e" not in entry.values()  # keys starting with "_" are private to the chain


def test_journald_entry_too_big_for_a_datagram_goes_as_a_sealed_memfd(journal):
    logs.configure("journald", journal_socket=str(journal.path))
    big = "x" * (1 << 20)  # beyond any default socket send buffer
    structlog.get_logger("agent.x").warning("dump", blob=big, vm="vm-4")
    entry = journal.entry()
    assert journal.memfd_seals & fcntl.F_SEAL_WRITE, "journald accepts only sealed memfds"
    assert entry["BLOB"] == big and entry["VM"] == "vm-4" and entry["PRIORITY"] == "4"
    # journalctl's line shows the start of the value; the field holds all of it
    assert entry["MESSAGE"] == "dump blob=" + "x" * logs.SUMMARY_VALUE_MAX + "… vm=vm-4"


def test_journald_missing_falls_back_to_json_with_one_warning(tmp_path):
    buf = io.StringIO()
    mode = logs.configure("journald", stream=buf, journal_socket=str(tmp_path / "no-journal"))
    assert mode == "json"
    structlog.get_logger("agent.x").info("still.logging", vm="vm-5")
    warning, entry = json_lines(buf)
    assert warning["event"] == "log.journald_unavailable" and warning["level"] == "warning"
    assert warning["socket"] == str(tmp_path / "no-journal")
    assert entry["event"] == "still.logging" and entry["vm"] == "vm-5"


def test_journald_going_away_falls_back_per_entry_and_comes_back(journal):
    buf = io.StringIO()
    logs.configure("journald", stream=buf, journal_socket=str(journal.path))
    log = structlog.get_logger("agent.x")
    journal.close()  # journald stops
    log.info("one")
    log.error("two")
    warning, one, two = json_lines(buf)
    assert warning["event"] == "log.journald_unavailable"
    assert (one["event"], one["level"], two["event"], two["level"]) == ("one", "info", "two", "error")
    assert "pathname" not in one and "lineno" not in one

    back = Journal(journal.path)  # journald starts again, a new socket at the same path
    try:
        log.info("three")
        assert back.entry()["EVENT"] == "three"
    finally:
        back.close()
    assert len(json_lines(buf)) == 3


# --- auto ---------------------------------------------------------------------------------------


def test_auto_uses_journald_only_when_journal_stream_names_the_stream(journal, tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.configure("auto", stream=stream, journal_socket=str(journal.path)) == "journald"
        assert logs.configure("auto", stream=other, journal_socket=str(journal.path)) == "json"
        assert logs.configure("auto", stream=io.StringIO(), journal_socket=str(journal.path)) == "json"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert logs.configure("auto", stream=stream, journal_socket=str(journal.path)) == "json"
