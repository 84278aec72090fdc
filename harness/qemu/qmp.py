"""A synchronous QMP facade over :mod:`qemu.qmp`'s async client.

Async stays in this module: a private event loop runs in a daemon thread for
the lifetime of the session, so QMP events (``DEVICE_DELETED``,
``ACPI_DEVICE_OST``, ``GUEST_PANICKED``, ...) are received and timestamped
the moment QEMU sends them, even while the caller is busy with SSH.  Every
command, reply and event is appended to a JSON-lines transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecuteError, QMPClient, QMPError

from harness.errors import QMPCommandError, VMError, WaitTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class QMPEvent:
    """One QMP event as received, with our monotonic receive time."""

    name: str
    data: dict[str, Any]
    received: float
    seq: int


class _NotListening(Exception):
    """QMP socket not accepting connections yet."""


class QMPSession:
    """One QMP connection; thread-safe, synchronous API."""

    def __init__(
        self, socket_path: Path, *, transcript: Path | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._log = logger or logging.getLogger("harness.qmp")
        self._transcript = transcript.open("a", encoding="utf-8") if transcript else None
        self._tlock = threading.Lock()
        self._events: list[QMPEvent] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{socket_path.parent.name}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._reader: asyncio.Future[None] | None = None
        self.disconnected = threading.Event()

    # -- plumbing ---------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None,
              abort: Callable[[], None] | None = None) -> T:
        """Run ``coro`` on the loop; ``abort`` is called about twice a second
        while waiting and may raise (e.g. QEMU was stopped: no reply ever)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                step = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                try:
                    return fut.result(max(step, 0.0))
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                if abort is not None:
                    abort()
        except BaseException:
            fut.cancel()
            raise

    def _record(self, kind: str, payload: object) -> None:
        if self._transcript is None:
            return
        line = json.dumps({"t": time.time(), kind: payload}, default=str)
        with self._tlock:
            self._transcript.write(line + "\n")
            self._transcript.flush()

    async def _connect(self) -> None:
        self._client = QMPClient(self.socket_path.parent.name)
        await self._client.connect(str(self.socket_path))
        self._reader = asyncio.ensure_future(self._read_events(self._client))

    async def _read_events(self, client: QMPClient) -> None:
        try:
            async for event in client.events:
                ev = QMPEvent(
                    name=str(event["event"]), data=dict(event.get("data") or {}),  # type: ignore[call-overload]
                    received=time.monotonic(), seq=0,
                )
                self._record("event", {"event": ev.name, "data": ev.data})
                with self._cond:
                    self._events.append(
                        QMPEvent(ev.name, ev.data, ev.received, len(self._events))
                    )
                    self._cond.notify_all()
                if ev.name == "SHUTDOWN":
                    self._log.debug("QMP: SHUTDOWN %s", ev.data)
        finally:
            self.disconnected.set()
            with self._cond:
                self._cond.notify_all()

    # -- public API -------------------------------------------------------
    def connect(self, timeout: float = 10.0, abort: Callable[[], None] | None = None) -> None:
        """Connect, retrying while QEMU has created the socket file but is not
        listening yet (connection refused) until ``timeout``."""
        from harness.retry import wait_for

        def attempt() -> bool:
            try:
                self._call(self._connect(), timeout)
            except (QMPError, OSError, TimeoutError) as exc:
                raise _NotListening(str(exc)) from exc
            return True

        try:
            wait_for(attempt, what=f"QMP at {self.socket_path}", timeout=timeout,
                     first_interval=0.005, max_interval=0.1, abort=abort,
                     retry_on=(_NotListening,), phase="launch")
        except WaitTimeout as exc:
            raise VMError(f"cannot connect to QMP at {self.socket_path}: {exc}",
                          phase="launch") from exc

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *,
        timeout: float = 60.0, phase: str = "qmp", abort: Callable[[], None] | None = None,
    ) -> Any:
        """Run ``command``; QEMU's error is raised verbatim as QMPCommandError."""
        if self._client is None:
            raise VMError("QMP is not connected", phase=phase)
        self._record("sent", {"execute": command, "arguments": arguments or {}})
        self._log.debug("QMP -> %s %s", command, arguments or "")
        try:
            result = self._call(self._client.execute(command, arguments), timeout, abort)
        except ExecuteError as exc:
            self._record("error", {"class": exc.error_class, "desc": exc.error.error.desc})
            raise QMPCommandError(
                command, arguments, exc.error_class, exc.error.error.desc, phase=phase
            ) from exc
        except TimeoutError as exc:
            raise WaitTimeout(f"QMP reply to {command}", timeout, phase=phase) from exc
        except QMPError as exc:
            raise VMError(f"QMP {command} failed: {exc}", phase=phase) from exc
        self._record("return", result)
        return result

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS); the next ``getfd`` names it.
        Sent from the loop's thread, which owns the socket."""
        if self._client is None:
            raise VMError("QMP is not connected", phase="qmp")
        client = self._client

        async def send() -> None:
            client.send_fd_scm(fd)

        self._call(send(), 10.0)
        self._record("sent", {"fd": "(file descriptor via SCM_RIGHTS)"})

    def cursor(self) -> int:
        """A position in the event log; pass it to :meth:`wait_event`."""
        with self._cond:
            return len(self._events)

    def events(self, since: int = 0) -> list[QMPEvent]:
        with self._cond:
            return self._events[since:]

    def _unlocked(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (which may raise) without holding the event lock."""
        self._cond.release()
        try:
            fn()
        finally:
            self._cond.acquire()

    def wait_event(
        self,
        match: Callable[[QMPEvent], bool],
        *,
        since: int,
        timeout: float,
        what: str,
        abort: Callable[[], None] | None = None,
        phase: str = "qmp",
    ) -> QMPEvent:
        """Block until an event at or after ``since`` satisfies ``match``.

        ``abort`` is called whenever any event arrives (and at least every
        0.5 s) so that e.g. a guest panic ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        seen = since
        with self._cond:
            while True:
                for ev in self._events[seen:]:
                    if match(ev):
                        return ev
                seen = len(self._events)
                if abort is not None:
                    self._unlocked(abort)
                    if len(self._events) > seen:
                        continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(what, timeout, phase=phase)
                if self.disconnected.is_set():
                    if abort is not None:
                        self._unlocked(abort)
                    raise VMError(f"QMP connection closed while waiting for {what}",
                                  phase=phase)
                self._cond.wait(min(remaining, 0.5))

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # QEMU may already be gone ("quit"): the library then re-raises
            # the reader's EOFError from disconnect().
            with contextlib.suppress(Exception):
                await client.disconnect()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None

    def close(self) -> None:
        """Disconnect and stop the loop thread; safe to call twice."""
        try:
            if self._loop.is_running():
                with contextlib.suppress(Exception):
                    self._call(self._shutdown(), 5.0)
        finally:
            if self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5.0)
            if not self._loop.is_running() and not self._loop.is_closed():
                self._loop.close()
            if self._transcript is not None:
                with self._tlock:
                    self._transcript.close()
                self._transcript = None
