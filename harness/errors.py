"""The one exception tree of memhp.

::

    HarnessError                      (phase, exit_code)
     +-- UsageError                   bad user input, exit 2, before any VM
     |    +-- PlanRefused             the model predicts QEMU refuses the plan
     +-- HostEnvironmentError         no QEMU, no image, no package mirror; exit 3
     +-- ImageBuildError              building the default guest failed
     +-- KconfigError                 a kernel config could not be read
     +-- VMError                      anything about a running VM; carries artifacts
          +-- LaunchError             QEMU did not start (argv, exit code, output)
          +-- QemuExited              QEMU died while we used it (exit code/signal)
          +-- QemuUnresponsive        QEMU runs but is stopped or does not answer QMP
          +-- GuestHung               QEMU answers QMP but the guest does not answer SSH
          +-- GuestPanic              the guest kernel panicked (panic text)
          +-- WaitTimeout             a bounded wait expired (what was awaited)
          +-- QMPCommandError         QMP answered with an error (class, desc)
          +-- GuestCommandError       a command in the guest failed (cmd, status)
          +-- HotplugRefused          the guest refused an unplug (ACPI _OST)

Every error names the *phase* it happened in (``build``, ``launch``,
``boot``, ``ssh``, ``hotplug``, ``observe``, ...) so that a red CI line says
where it broke.  ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations

from collections.abc import Sequence


class HarnessError(Exception):
    """Root of every error memhp raises on purpose."""

    phase: str = "harness"
    exit_code: int = 1

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if phase is not None:
            self.phase = phase

    def __str__(self) -> str:
        return self.message


class UsageError(HarnessError):
    """Bad user input: names the value and the fix.  Exit 2, no VM started."""

    phase = "input"
    exit_code = 2

    def __init__(self, message: str, *, value: object = None, fix: str | None = None) -> None:
        full = message if fix is None else f"{message} (fix: {fix})"
        super().__init__(full)
        self.value = value
        self.fix = fix


class PlanRefused(UsageError):
    """The model predicts that QEMU refuses this step of the plan.

    ``kind`` is a stable machine-readable name (``slots-exhausted``,
    ``maxmem-exceeded``, ``misaligned-size``, ...), ``limit`` the limit that
    was violated, ``qemu_message`` QEMU's own words for the refusal (empty
    where QEMU does not refuse: a memhp check).
    """

    phase = "model"

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        value: object = None,
        limit: object = None,
        fix: str | None = None,
        qemu_message: str = "",
    ) -> None:
        super().__init__(message, value=value, fix=fix)
        self.kind = kind
        self.limit = limit
        self.qemu_message = qemu_message


def refuse(kind: str, message: str, qemu_message: str, *, value: object, limit: object,
           fix: str) -> PlanRefused:
    """A refusal the model predicts, with QEMU's words: the one constructor
    for pc-dimm, virtio-mem and machine refusals alike."""
    return PlanRefused(kind, message, value=value, limit=limit, fix=fix,
                       qemu_message=qemu_message)


class HostEnvironmentError(HarnessError):
    """The host lacks something memhp needs (QEMU, an image, a mirror)."""

    phase = "environment"
    exit_code = 3


class ImageBuildError(HarnessError):
    """Building the default guest image failed."""

    phase = "build"
    exit_code = 3


class KconfigError(HarnessError):
    """A kernel configuration could not be read or understood."""

    phase = "kconfig"
    exit_code = 2


class VMError(HarnessError):
    """An error about a VM; ``serial_tail`` holds the last console lines."""

    phase = "vm"

    def __init__(
        self, message: str, *, phase: str | None = None, serial_tail: str = ""
    ) -> None:
        super().__init__(message, phase=phase)
        self.serial_tail = serial_tail

    def __str__(self) -> str:
        if not self.serial_tail:
            return self.message
        return f"{self.message}\n--- serial console (tail) ---\n{self.serial_tail}"


class LaunchError(VMError):
    """QEMU failed to start: carries argv, exit code and QEMU's own output."""

    phase = "launch"

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exit_code: int | None = None,
        output: str = "",
        serial_tail: str = "",
    ) -> None:
        detail = message
        if output.strip():
            detail += f"\nQEMU said:\n{output.strip()}"
        super().__init__(detail, serial_tail=serial_tail)
        self.argv = tuple(argv)
        self.qemu_exit_code = exit_code
        self.output = output


class QemuExited(VMError):
    """QEMU ended while the harness still needed it."""

    phase = "qemu"

    def __init__(self, returncode: int, *, output: str = "", serial_tail: str = "") -> None:
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        msg = f"QEMU exited ({how})"
        if output.strip():
            msg += f"\nQEMU said:\n{output.strip()}"
        super().__init__(msg, serial_tail=serial_tail)
        self.returncode = returncode


class QemuUnresponsive(VMError):
    """QEMU's process exists but cannot serve us: stopped (SIGSTOP, a
    debugger) or not answering QMP.  ``state`` is its /proc state."""

    phase = "qemu"

    def __init__(self, message: str, *, state: str = "", serial_tail: str = "") -> None:
        super().__init__(message, serial_tail=serial_tail)
        self.state = state


class GuestHung(VMError):
    """QEMU runs and answers QMP, but the guest stopped answering SSH."""

    phase = "guest"


class GuestPanic(VMError):
    """The guest kernel panicked."""

    phase = "guest"


class GuestUnreachable(VMError):
    """The guest booted but says it cannot be reached (no NIC, no keys)."""

    phase = "boot"


class WaitTimeout(VMError):
    """A bounded wait expired; ``awaited`` says what for."""

    phase = "wait"

    def __init__(
        self,
        awaited: str,
        timeout_s: float,
        *,
        last_error: BaseException | None = None,
        phase: str | None = None,
        serial_tail: str = "",
    ) -> None:
        msg = f"timed out after {timeout_s:.1f}s waiting for {awaited}"
        if last_error is not None:
            msg += f" (last error: {last_error})"
        super().__init__(msg, phase=phase, serial_tail=serial_tail)
        self.awaited = awaited
        self.timeout_s = timeout_s
        self.last_error = last_error


class QMPCommandError(VMError):
    """A QMP command failed; QEMU's error is kept verbatim."""

    phase = "qmp"

    def __init__(
        self, command: str, arguments: object, error_class: str, desc: str, *,
        phase: str | None = None,
    ) -> None:
        super().__init__(f"QMP {command} failed: {error_class}: {desc}", phase=phase)
        self.command = command
        self.arguments = arguments
        self.error_class = error_class
        self.desc = desc


class GuestCommandError(VMError):
    """A command run in the guest exited non-zero."""

    phase = "guest"

    def __init__(self, command: str, status: int, stdout: str, stderr: str) -> None:
        msg = f"guest command {command!r} exited {status}"
        if stderr.strip():
            msg += f": {stderr.strip()}"
        super().__init__(msg)
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


class HotplugRefused(VMError):
    """The guest refused to eject a device (ACPI _OST failure status)."""

    phase = "hotplug"

    def __init__(self, device: str, status: int, detail: str = "", serial_tail: str = "") -> None:
        msg = f"guest refused to eject {device!r}: ACPI _OST status 0x{status:x}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg, serial_tail=serial_tail)
        self.device = device
        self.status = status
