"""Tell systemd how the agent is doing: ready, status, alive, stopping (sd_notify(3)).

Under ``Type=notify`` (systemd/andromede-agent.service) systemd passes ``$NOTIFY_SOCKET``: a
unix datagram socket, either a path or, with a leading ``@``, a name in the abstract namespace.
Each notification is one datagram of newline-separated ``VAR=value`` lines. This module speaks
that protocol itself, with no dependency on libsystemd or python-systemd.

How the daemon uses it::

    notifier = Notifier.from_environ(unset=True)   # QEMU and other children must not inherit it
    notifier.status("reconciling: first full pass")
    ...                                             # the first full reconcile
    notifier.ready("serving; generation 42 applied")
    while running:                                  # the reconcile loop
        ...
        notifier.watchdog()                         # at least every notifier.watchdog_interval s
    notifier.stopping()

systemd only believes the main process (``NotifyAccess=main``), so notifications are sent from
the daemon's process, any thread. Outside systemd (a terminal, the tests, the lab)
``NOTIFY_SOCKET`` is unset and every call is a no-op that returns False. A notification that
cannot be sent is logged (once per failure streak) and never raises: a missed ``WATCHDOG=1``
must cost a restart at worst, not crash the loop that sends it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    recommends; None when systemd expects none from this process.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or when ``WATCHDOG_PID`` is set
    and names another process (``pid``, by default ours): the variables were inherited from a
    parent that systemd watches, not meant for us.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = env.get("WATCHDOG_PID")
    if watched:
        try:
            if int(watched) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages to one socket address; a no-op without one."""

    def __init__(self, address: str | None, watchdog_interval: float | None = None) -> None:
        """``address`` is ``$NOTIFY_SOCKET`` as systemd writes it: ``/path`` or ``@abstract``."""
        self.address = address or None
        self.watchdog_interval = watchdog_interval
        self._sockaddr = _sockaddr(self.address) if self.address else None
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """The notifier systemd asked for in the environment, or a no-op one.

        With ``unset``, NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed from the
        environment afterwards, so that processes the agent starts do not inherit them.
        An address this module cannot use (systemd 254+ may pass ``vsock:...`` to a VM) is
        logged and gives a no-op notifier.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        interval = watchdog_interval(env)
        if unset:
            for name in _ENV:
                env.pop(name, None)
        try:
            return cls(address, interval)
        except ValueError as exc:
            log.warning("sdnotify.unusable_socket", error=str(exc))
            return cls(None, interval)

    @property
    def enabled(self) -> bool:
        return self._sockaddr is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines in one datagram. True if sent, False if disabled or failed."""
        if not assignments:
            raise ValueError("sd_notify needs at least one VAR=value assignment")
        for line in assignments:
            if "\n" in line or "=" not in line:
                raise ValueError(f"sd_notify assignment must be one VAR=value line, got {line!r}")
        if self._sockaddr is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self._sockaddr)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "sdnotify.failed", socket=self.address, error=str(exc), sent=assignments[0]
                )
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: the first full reconcile is done and the API is serving."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status, shown by ``systemctl status andromede-agent``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """Still alive; systemd restarts the agent if none comes within WatchdogSec."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutting down (sent before the work of stopping starts)."""
        return self.notify("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """Reloading the configuration; send ``ready()`` when done. MONOTONIC_USEC (the
        CLOCK_MONOTONIC time now) lets systemd 253+ tell this reload from an older one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd gives up on start-up or shutdown
        (EXTEND_TIMEOUT_USEC): for a first reconcile of many ports on a slow host."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _sockaddr(address: str) -> bytes:
    if address.startswith("@"):  # abstract namespace: a leading NUL byte, no file
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return os.fsencode(address)
    raise ValueError(
        f"NOTIFY_SOCKET={address!r} is neither a socket path ('/...') nor an abstract name ('@...')"
    )


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)
