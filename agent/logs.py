"""Where the agent's log entries go: JSON lines, or native journald entries with fields.

Every module logs with ``log = structlog.get_logger(__name__)`` and binds the ids it knows
(``log.bind(vm=..., tenant=...)``); records of libraries that use the standard ``logging``
module (grpc, ovs, pyroute2) are routed through the same chain. The daemon calls
:func:`configure` once at start, and that decides where entries go:

``json``
    One JSON object per line on a stream (stderr by default): for a terminal, a file, a
    container runtime or any log shipper. ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``
    and ``event`` come first, then every bound field::

        {"timestamp": "2026-11-26T16:27:18.123456Z", "level": "info", "logger": "agent.network",
         "event": "port.bound", "vm": "vm-1", "port": "tap0", "ms": 8.1}

``journald``
    One datagram per entry in journald's native protocol (systemd.journal-fields(7),
    https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) to ``/run/systemd/journal/socket``:

    ========================  ======================================================
    MESSAGE                   ``port.bound vm=vm-1 port=tap0 ms=8.1``: what ``journalctl``
                              shows; the event, the fields (long values cut), then any
                              traceback lines
    PRIORITY                  syslog number: debug 7, info 6, warning 4, error 3,
                              critical 2
    SYSLOG_IDENTIFIER         ``andromede-agent``
    CODE_FILE/LINE/FUNC       the call site
    EVENT, LOGGER, VM, ...    every field, its name upper-cased (``request_id`` ->
                              ``REQUEST_ID``), so ``journalctl -u andromede-agent VM=vm-1``
                              and ``journalctl EVENT=port.bound -o json`` work
    ========================  ======================================================

    Field names are reduced to what journald accepts (A-Z, 0-9, ``_``; not starting with
    ``_``, which is for fields journald adds itself, nor with a digit; 64 characters at
    most); a name that would clash with one of the fields above gets an ``ANDROMEDE_``
    prefix. A value that holds a newline (a traceback) is sent in the protocol's binary form
    (``NAME\\n`` + 64-bit little-endian length + bytes + ``\\n``). An entry too large for one
    datagram (beyond the socket's send buffer, about 200 KiB) is written to a sealed memfd
    whose descriptor is sent instead (SCM_RIGHTS), exactly as libsystemd does; no field is
    cut (only MESSAGE's one-line summary shortens long values).

``auto``
    ``journald`` when systemd connected our stderr to the journal, which it says by setting
    ``JOURNAL_STREAM`` to the device and inode of that stream (systemd.exec(5) documents this as
    the way to decide); else ``json``. Nothing else is guessed: the agent run by hand, with
    stderr piped or redirected to a file, writes JSON lines even on a host with journald.

Like libsystemd's sd_journal_send, a send waits while journald's queue is full rather than
drop the entry; journald drains it quickly.

Logging never takes the agent down: if journald cannot be reached when ``configure`` runs, it
falls back to JSON lines on the stream and says so in one warning; if journald stops
answering later, each entry goes to the stream as a JSON line instead, with one warning per
outage, and journald is tried again with the next entry. A broken stream is ignored.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import datetime, timezone
from typing import Any, TextIO

import structlog

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "andromede-agent"
MODES = ("json", "journald", "auto")

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog priorities (syslog(3)), which journald keeps in PRIORITY=.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# Fields this module sets itself; a bound field of the same name is renamed, not sent twice.
_RESERVED = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
# Keys of the event dict that are not fields of their own.
_CALLSITE = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}
_NOT_FIELDS = frozenset({"level", "timestamp", *_CALLSITE})
# Keys left out of the one-line summary in MESSAGE (they are fields, or follow on new lines).
_NOT_IN_SUMMARY = frozenset({"event", "logger", "exception", "stack", *_NOT_FIELDS})
_INVALID_NAME_CHARS = re.compile(r"[^A-Z0-9_]")
# A value in MESSAGE's summary is cut to this many characters; its own field has all of it.
SUMMARY_VALUE_MAX = 200

_lock = threading.Lock()
_journal: _Journal | None = None  # the open journald sender, closed on reconfigure


def configure(
    mode: str = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
    journal_socket: str = JOURNAL_SOCKET,
    identifier: str = IDENTIFIER,
) -> str:
    """Send the agent's log entries to ``stream`` as JSON lines or to journald.

    ``mode`` is ``json``, ``journald`` or ``auto`` (see the module docstring), ``level`` the
    least severe level written (``debug`` ... ``critical``, or a ``logging`` number), ``stream``
    the JSON destination (``sys.stderr`` at the time of the call when None), ``journal_socket``
    journald's native socket. Can be called again; the new setting replaces the old one.
    Returns the mode in effect: ``json`` or ``journald``.
    """
    global _journal
    if mode not in MODES:
        raise ValueError(f"log mode must be one of {', '.join(MODES)}; got {mode!r}")
    min_level = _level_number(level)
    lines = _Lines(sys.stderr if stream is None else stream)
    if mode == "auto":
        mode = "journald" if stream_is_journal(lines.stream) else "json"

    unavailable: OSError | None = None
    journal: _Journal | None = None
    if mode == "journald":
        try:
            journal = _Journal(journal_socket, identifier, lines)
        except OSError as exc:
            mode, unavailable = "json", exc

    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if journal is not None:
        sink = journal.send
        processors += [
            structlog.processors.CallsiteParameterAdder(
                {
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                },
                additional_ignores=[__name__],
            ),
            _pass_event_dict,
        ]
    else:
        sink = lines.write
        processors.append(_render_json)

    with _lock:
        if _journal is not None:
            _journal.close()
        _journal = journal
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(min_level),
            logger_factory=_LoggerFactory(sink),
            # Not cached, so that a later configure() reaches loggers made at import time.
            cache_logger_on_first_use=False,
        )
        _route_stdlib_logging(min_level)

    if unavailable is not None:
        structlog.get_logger(__name__).warning(
            "log.journald_unavailable",
            socket=journal_socket,
            error=str(unavailable),
            hint="writing JSON lines to stderr instead; is systemd-journald running?",
        )
    return mode


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``JOURNAL_STREAM`` names this stream's device and inode (systemd.exec(5))."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(sep) and (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (AttributeError, OSError, ValueError):  # no fileno (StringIO), closed, garbage
        return False


# --- the journald native protocol (pure functions: tested on their own) ---------------------


@functools.lru_cache(maxsize=1024)
def journal_field_name(key: str) -> str | None:
    """The journal field name for an event-dict key, or None if nothing of it is usable."""
    name = _INVALID_NAME_CHARS.sub("_", key.upper()).lstrip("_")
    if not name:
        return None
    if name[0].isdigit() or name in _RESERVED:
        name = "ANDROMEDE_" + name
    return name[:64]


def journal_fields(
    event_dict: Mapping[str, Any], identifier: str = IDENTIFIER
) -> list[tuple[str, bytes]]:
    """The (name, value) pairs of one journal entry for a finished structlog event dict."""
    level = str(event_dict.get("level", "info"))
    fields = [
        ("MESSAGE", _bytes(_message(event_dict))),
        ("PRIORITY", str(PRIORITIES.get(level, 6)).encode()),
        ("SYSLOG_IDENTIFIER", _bytes(identifier)),
    ]
    for key, name in _CALLSITE.items():
        if key in event_dict:
            fields.append((name, _bytes(event_dict[key])))
    for key, value in event_dict.items():
        if key.startswith("_") or key in _NOT_FIELDS:
            continue
        name = journal_field_name(key)
        if name is not None:
            fields.append((name, _bytes(value)))
    return fields


def encode_entry(fields: Iterable[tuple[str, bytes]]) -> bytes:
    """One datagram of the native protocol: ``NAME=value\\n``, or the binary form if needed."""
    parts: list[bytes] = []
    for name, value in fields:
        key = name.encode("ascii")
        if b"\n" in value:
            parts += (key, b"\n", struct.pack("<Q", len(value)), value, b"\n")
        else:
            parts += (key, b"=", value, b"\n")
    return b"".join(parts)


def _message(event_dict: Mapping[str, Any]) -> str:
    """``event k=v k=v`` for journalctl's one line, then the traceback or stack, if any."""
    words = [str(event_dict.get("event", ""))]
    for key, value in event_dict.items():
        if key.startswith("_") or key in _NOT_IN_SUMMARY:
            continue
        text = _text(value)
        if len(text) > SUMMARY_VALUE_MAX:
            text = text[:SUMMARY_VALUE_MAX] + "…"
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text, ensure_ascii=False)
        words.append(f"{key}={text}")
    message = " ".join(words)
    for key in ("exception", "stack"):
        if event_dict.get(key):
            message += "\n" + str(event_dict[key]).rstrip("\n")
    return message


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None or isinstance(value, (bool, dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return _text(value).encode("utf-8", "backslashreplace")


# --- sinks: where a finished entry is written -------------------------------------------------


class _Lines:
    """JSON lines on a text stream, one whole line per write, whatever the threads do."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # closed or broken stderr: nowhere left to say it
                pass


class _Journal:
    """Sends entries to journald's socket; JSON lines on ``fallback`` while it does not answer."""

    def __init__(self, path: str, identifier: str, fallback: _Lines) -> None:
        # Probe: a connect() fails at once if nothing listens there (missing, stale, or not a
        # datagram socket). Entries are then sent unconnected (sendto the path), so that a
        # restarted journald, with a new socket at the same path, is found again.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect(path)
        self.path = path
        self.identifier = identifier
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failing = False

    def send(self, event_dict: MutableMapping[str, Any]) -> None:
        data = encode_entry(journal_fields(event_dict, self.identifier))
        try:
            try:
                self.sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(data)
        except OSError as exc:
            self._fall_back(event_dict, exc)
        else:
            self._failing = False

    def _send_memfd(self, data: bytes) -> None:
        """Too big for a datagram: hand journald a sealed memfd holding the entry."""
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)  # journald refuses unsealed memfds
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self.sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def _fall_back(self, event_dict: MutableMapping[str, Any], exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            warning = {
                "level": "warning",
                "logger": __name__,
                "event": "log.journald_unavailable",
                "socket": self.path,
                "error": str(exc),
                "hint": "writing JSON lines to stderr until journald answers again",
            }
            self.fallback.write(_json_line(warning))
        self.fallback.write(_json_line(dict(event_dict)))

    def close(self) -> None:
        self.sock.close()


# --- the structlog chain ------------------------------------------------------------------------


class _Logger:
    """The end of structlog's chain: hands each finished entry to the sink."""

    __slots__ = ("name", "_sink")

    def __init__(self, name: str | None, sink: Any) -> None:
        self.name = name
        self._sink = sink

    def msg(self, entry: Any) -> None:
        self._sink(entry)

    debug = info = warning = warn = error = critical = exception = fatal = msg


class _LoggerFactory:
    def __init__(self, sink: Any) -> None:
        self._sink = sink

    def __call__(self, *args: Any) -> _Logger:
        return _Logger(str(args[0]) if args else None, self._sink)


def _add_logger_name(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _pass_event_dict(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    return (event_dict,), {}


def _render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _json_line(event_dict)


def _json_line(event_dict: MutableMapping[str, Any]) -> str:
    """timestamp, level, logger, event first, then the rest; private and call-site keys left out."""
    out: dict[str, Any] = {"timestamp": event_dict.pop("timestamp", None) or _now()}
    for key in ("level", "logger", "event"):
        if key in event_dict:
            out[key] = event_dict.pop(key)
    for key, value in event_dict.items():
        if not key.startswith("_") and key not in _CALLSITE:
            out[key] = value
    return json.dumps(out, default=str, ensure_ascii=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool) and level in LEVELS.values():
        return level
    name = str(level).lower()
    name = {"warn": "warning", "fatal": "critical"}.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}")
    return LEVELS[name]


# --- records of the standard logging module (grpc, ovs, pyroute2) -----------------------------


class _StdlibBridge(logging.Handler):
    """Hands ``logging`` records to structlog, so they come out like the agent's own."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            levels = [n for n in LEVELS.values() if n <= record.levelno]
            levelno = max(levels, default=logging.DEBUG)  # custom levels: the next one down
            kw: dict[str, Any] = {"_record": record}  # call site for CallsiteParameterAdder
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(levelno, record.getMessage(), **kw)
        except Exception:
            self.handleError(record)


def _route_stdlib_logging(min_level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(min_level)
