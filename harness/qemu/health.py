"""Is the guest still there?  Name why a QMP or SSH exchange failed: QEMU
exited or was killed, is stopped, the guest panicked, QEMU no longer
answers QMP, or the guest no longer answers SSH."""

from __future__ import annotations

import re
from typing import Any, Protocol

from harness.errors import (
    GuestHung,
    GuestPanic,
    QemuExited,
    QemuUnresponsive,
    VMError,
    WaitTimeout,
)
from harness.qemu.process import EXIT_GRACE_S, PROC_STATES, QemuProcess, process_state
from harness.qemu.timeouts import Timeouts

PANIC_RE = re.compile(r"Kernel panic - not syncing[^\n]*")
_NAMED = (QemuExited, QemuUnresponsive, GuestHung, GuestPanic)


class Watched(Protocol):
    """What the checks read of a VM."""

    process: QemuProcess
    timeouts: Timeouts
    shell: Any  # harness.guest.ssh.GuestShell | None

    def check_alive(self, serial: str | None = None) -> None: ...


def check_alive(process: QemuProcess, serial: str | None = None) -> None:
    """Raise at once if QEMU died, is stopped, or the guest panicked
    (``serial``: the console text when the caller has just read it)."""
    try:
        process.check()
    except QemuExited as exited:
        # QEMU ends itself after a guest panic (-action panic=shutdown):
        # the panic is the cause, the exit its consequence.
        check_panic(process, serial, also=f" ({exited.message.splitlines()[0]})")
        raise
    check_panic(process, serial)


def check_panic(process: QemuProcess, serial: str | None = None, also: str = "") -> None:
    """:class:`GuestPanic` when QEMU sent ``GUEST_PANICKED`` or the console
    shows a kernel panic."""
    panicked = process.qmp is not None and any(
        ev.name == "GUEST_PANICKED" for ev in process.qmp.events()
    )
    if serial is None:
        serial = process.serial_text()
    m = PANIC_RE.search(serial)
    if panicked or m:
        text = m.group(0) if m else "GUEST_PANICKED event from QEMU"
        raise GuestPanic(f"guest kernel panicked: {text}{also}",
                         serial_tail=process.serial_tail(60))


def wait_exit(vm: Watched, grace: float = EXIT_GRACE_S) -> None:
    """After QMP broke: give QEMU's process a bounded moment to end, and
    raise what ended it (exit code/signal, stop, panic) if it did."""
    if vm.process.proc is None:
        return
    vm.process.wait_exit(grace)
    vm.check_alive()


def diagnose(vm: Watched, exc: BaseException, *, what: str) -> None:
    """Name the cause of a failed QMP or SSH exchange: QEMU exited or
    was killed, is stopped, the guest panicked, QEMU no longer answers
    QMP, or the guest no longer answers SSH.  Raises the named error, or
    returns when none applies (the caller re-raises ``exc``)."""
    if isinstance(exc, _NAMED):
        return  # already named (e.g. by the SSH layer's own diagnosis)
    wait_exit(vm, EXIT_GRACE_S if not isinstance(exc, WaitTimeout) else 0.0)
    proc = vm.process.proc
    if not isinstance(exc, WaitTimeout) or proc is None:
        return
    pid, serial_tail = proc.pid, vm.process.serial_tail
    state = process_state(pid) or "?"
    how = PROC_STATES.get(state, state)
    try:
        status = vm.process.session().execute(
            "query-status", timeout=5.0 * vm.timeouts.scale, phase="qemu")
    except VMError as probe:
        wait_exit(vm, 0.0)
        raise QemuUnresponsive(
            f"{what} timed out and QEMU (pid {pid}, {how}) does not answer QMP either "
            f"({probe.message}); QEMU is hung", state=state,
            serial_tail=serial_tail()) from exc
    run_state = status.get("status", "?") if isinstance(status, dict) else "?"
    if run_state != "running":
        raise QemuUnresponsive(
            f"{what} timed out: the VM is not running (QMP status {run_state!r})",
            state=state, serial_tail=serial_tail()) from exc
    if exc.phase == "ssh":
        if vm.shell is not None and vm.shell.probe(5.0 * vm.timeouts.scale):
            return  # the guest answers: only this command outlived its timeout
        raise GuestHung(
            f"{what} timed out; QEMU (pid {pid}) runs and answers QMP but the guest "
            "does not run even `true` over SSH: the guest is hung (kernel or sshd)",
            phase="guest", serial_tail=serial_tail()) from exc
