"""QMP, the QEMU Machine Protocol, for the reconciler's thread: one asyncio loop in a thread of
its own runs every VM's `qemu.qmp` client, and `Monitor` offers blocking calls with timeouts
(the reconciler must never wait without one: the watchdog would kill the agent).

Events QEMU sends on its own (SHUTDOWN, STOP, RESUME, RESET, GUEST_PANICKED, DEVICE_DELETED)
and the connection's end (QEMU died) are passed to `on_event` from the loop's thread: the
reconciler kicks a pass there, and looks at the VM itself (level-triggered: the events only
make the look happen sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from qemu.qmp import ExecuteError, QMPClient, Runstate

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
GONE = "QMP_DISCONNECTED"  # the pseudo-event for a connection QEMU closed


class QmpError(RuntimeError):
    """A QMP command failed, timed out, or the connection is gone."""


class Loop:
    """The asyncio loop the monitors run on, in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmp", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self.loop)
        try:
            return future.result(timeout + 1.0)
        except (asyncio.TimeoutError, TimeoutError):
            future.cancel()
            raise QmpError(f"no answer within {timeout:.1f} s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Monitor:
    """One VM's QMP connection."""

    def __init__(self, loop: Loop, name: str, on_event: Callable[[str, str, dict], None]) -> None:
        self._loop = loop
        self.name = name
        self._on_event = on_event
        self._client = QMPClient(name)
        self._tasks: list[asyncio.Task] = []
        self.version = ""

    def connect(self, socket: Path, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect to QEMU's QMP socket, retrying while QEMU is still making it."""
        self._loop.run(self._connect(str(socket), timeout), timeout + 1.0)

    async def _connect(self, socket: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self._client.connect(socket)
                break
            except Exception as e:  # ConnectError: QEMU is not listening yet
                if asyncio.get_running_loop().time() > deadline:
                    raise QmpError(f"cannot connect to {socket}: {e}") from None
                self._client = QMPClient(self.name)
                await asyncio.sleep(0.02)
        version = self._client.greeting.QMP.version["qemu"]
        self.version = f"{version['major']}.{version['minor']}.{version['micro']}"
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._watch())]

    async def _listen(self) -> None:
        with self._client.listener() as listener:
            async for event in listener:
                self._on_event(self.name, event["event"], dict(event.get("data", {})))

    async def _watch(self) -> None:
        """GONE once the connection ends (QEMU exited: the event stream just stops)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        self._on_event(self.name, GONE, {})

    def execute(self, command: str, arguments: dict | None = None,
                timeout: float = COMMAND_TIMEOUT_S) -> Any:  # fmt: skip
        try:
            return self._loop.run(self._client.execute(command, arguments), timeout)
        except ExecuteError as e:
            raise QmpError(f"{command}: {e.error.desc}") from None
        except QmpError as e:
            raise QmpError(f"{command}: {e}") from None
        except Exception as e:  # the connection is gone: QEMU exited
            raise QmpError(f"{command}: {type(e).__name__}: {e}") from None

    def send_fd(self, fd: int, name: str, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Hand QEMU a file descriptor under `name` (QMP getfd, SCM_RIGHTS)."""

        async def send() -> None:
            self._client.send_fd_scm(fd)
            await self._client.execute("getfd", {"fdname": name})

        try:
            self._loop.run(send(), timeout)
        except ExecuteError as e:
            raise QmpError(f"getfd: {e.error.desc}") from None

    def status(self) -> str:
        """QEMU's run state from query-status: "running", "paused", "prelaunch", "shutdown"..."""
        return str(self.execute("query-status")["status"])

    def close(self) -> None:
        async def disconnect() -> None:
            # QEMU may have exited first: the connection's end is then an error to ignore.
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            for task in self._tasks:
                task.cancel()

        with contextlib.suppress(Exception):
            self._loop.run(disconnect(), 3.0)
