"""One QEMU process: its private work dir, its start, its QMP connection,
its end by PID, and the files it leaves (kept as artifacts when asked).

QEMU runs in its own session (so a terminal's Ctrl-C reaches memhp, which
then shuts the VM down cleanly) with ``PR_SET_PDEATHSIG`` = SIGKILL, so even
a ``kill -9`` of memhp cannot leak a QEMU.  The work dir (QMP socket, SSH
keys, logs) is made 0700 by ``mkdtemp`` and carries an owner file, so
:func:`harness.leaks.sweep_stale_workdirs` removes it after a ``kill -9``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import LaunchError, QemuExited, QemuUnresponsive, VMError
from harness.leaks import proc_start_time, proc_stat, sweep_stale_workdirs, workdir_base
from harness.qemu.argv import RuntimePaths, build_argv
from harness.qemu.config import VMConfig
from harness.qemu.qmp import QMPSession
from harness.retry import wait_for

if TYPE_CHECKING:
    from harness.guest.ssh import GuestShell

_PR_SET_PDEATHSIG = 1
# How long a broken QMP connection may precede the exit of QEMU's process:
# after kill -9 the socket closes before the kernel lets us reap the child.
EXIT_GRACE_S = 3.0
PROC_STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible sleep",
               "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie", "X": "dead",
               "I": "idle"}
# What a work dir keeps as artifacts, when kept at all.
ARTIFACTS = ("argv.txt", "serial.log", "qemu.log", "qmp.jsonl", "dmesg.txt")


def free_loopback_port() -> int:
    """A currently free TCP port on 127.0.0.1 (QEMU binds it a moment later;
    :meth:`QemuProcess.run` retries with a new port if another process won)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup() -> None:  # runs in the forked child before exec
    os.umask(0o077)  # QMP socket and logs 0600
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def tail_file(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file; "" when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_state(pid: int) -> str | None:
    """The one-letter /proc state of ``pid`` (``R``, ``S``, ``T``, ``Z``...),
    None when there is no such process."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


def private_dir(runtime_dir: Path | None, prefix: str, *, sweep: bool = False) -> Path:
    """A new 0700 directory of this process under the runtime base, with an
    owner file (``PID start-time``) so that a later sweep removes it after a
    ``kill -9``; ``sweep``: first remove such dirs of dead processes."""
    base = workdir_base(runtime_dir)
    if sweep:
        sweep_stale_workdirs(base)
    pid = os.getpid()
    # mkdtemp creates the directory 0700, owned by us.
    path = Path(tempfile.mkdtemp(prefix=f"memhp-{pid}-{prefix}", dir=base))
    os.chmod(path, 0o700)
    (path / "owner").write_text(f"{pid} {proc_start_time(pid)}\n")
    return path


class QemuProcess:
    """One QEMU started by memhp (or none yet): work dir, process, QMP.

    :meth:`end` quits QEMU over QMP and kills it by its PID if it does not
    go; :meth:`finish` removes the work dir, copying its files to the
    artifacts first when asked.  Both are idempotent."""

    def __init__(self, runtime_dir: Path | None, logger: logging.Logger) -> None:
        self.runtime_dir = runtime_dir
        self.log = logger
        self.workdir: Path | None = None
        self.paths: RuntimePaths | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPSession | None = None
        self.argv: list[str] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def make_workdir(self) -> Path:
        """The private work dir of the next QEMU (stale ones of killed
        memhp processes are swept first)."""
        self.workdir = private_dir(self.runtime_dir, "", sweep=True)
        self.paths = RuntimePaths(self.workdir)
        return self.workdir

    def run(self, cfg: VMConfig, *, incoming: Sequence[str] = (), attempts: int = 3,
            qmp_timeout: float = 10.0) -> VMConfig:
        """Start QEMU for ``cfg`` in the work dir and connect QMP; returns
        ``cfg`` with the SSH port used.  QEMU's own errors are raised
        verbatim (:class:`LaunchError` with its output); a forwarded port
        another process took meanwhile is retried with a new one."""
        assert self.workdir is not None and self.paths is not None
        for attempt in range(attempts):
            port = cfg.ssh_port or free_loopback_port()
            launched = replace(cfg, ssh_port=port)
            self.argv = build_argv(launched, self.paths) + list(incoming)
            (self.workdir / "argv.txt").write_text(shlex.join(self.argv) + "\n")
            self.log.info("launching: %s", shlex.join(self.argv))
            qemu_log = self.paths.qemu_log.open("wb")
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                    stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=_child_setup,
                    start_new_session=True,
                )
            finally:
                qemu_log.close()
            try:
                self.connect_qmp(qmp_timeout)
                return launched
            except LaunchError as exc:
                busy = "host forwarding" in exc.output or "Could not set up host" in exc.output
                if busy and cfg.ssh_port is None and attempt + 1 < attempts:
                    self.log.info("port %d was taken, retrying", port)
                    continue
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def connect_qmp(self, timeout: float) -> None:
        assert self.paths is not None and self.proc is not None
        proc, sock = self.proc, self.paths.qmp_socket

        def check_started() -> None:
            if proc.poll() is not None:
                raise LaunchError(
                    f"QEMU exited with code {proc.returncode} during start-up",
                    argv=self.argv, exit_code=proc.returncode, output=self.output(),
                )

        def ready() -> bool | None:
            check_started()
            return True if sock.exists() else None

        wait_for(ready, what=f"QMP socket {sock}", timeout=timeout, phase="launch")
        self.qmp = QMPSession(sock, transcript=self.paths.qmp_transcript, logger=self.log)
        self.qmp.connect(timeout=timeout, abort=check_started)

    def session(self) -> QMPSession:
        """The QMP session; :class:`VMError` when QEMU is not running."""
        if self.qmp is None:
            raise VMError("VM is not running", phase="qmp")
        return self.qmp

    # -- what it wrote -------------------------------------------------------
    def output(self) -> str:
        """Everything QEMU wrote to stdout/stderr, verbatim ("" before a start)."""
        if self.paths is None:
            return ""
        try:
            return self.paths.qemu_log.read_text(errors="replace")
        except OSError:
            return ""

    def serial_text(self) -> str:
        if self.paths is None:
            return ""
        try:
            return self.paths.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def serial_tail(self, lines: int = 40) -> str:
        return tail_file(self.paths.serial_log, lines) if self.paths else ""

    # -- state ---------------------------------------------------------------
    def running(self) -> bool:
        """QEMU's process runs and is not stopped (SIGSTOP or a tracer)."""
        return self.proc is not None and self.proc.poll() is None \
            and process_state(self.proc.pid) not in ("T", "t")

    def check(self) -> None:
        """Raise :class:`QemuExited` when QEMU has ended, :class:`QemuUnresponsive`
        when its process is stopped; nothing when none was started."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            raise QemuExited(self.proc.returncode, output=self.output(),
                             serial_tail=self.serial_tail())
        state = process_state(self.proc.pid)
        if state in ("T", "t"):
            raise QemuUnresponsive(
                f"QEMU (pid {self.proc.pid}) is {PROC_STATES[state]} (process state {state}: "
                "SIGSTOP or a debugger); it can answer neither QMP nor the guest's SSH "
                f"(fix: kill -CONT {self.proc.pid}, or find what stopped it)",
                state=state, serial_tail=self.serial_tail())

    def wait_exit(self, grace: float) -> None:
        """Give QEMU's process a bounded moment to end (after QMP broke)."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)

    # -- the end -------------------------------------------------------------
    def end(self, shutdown_timeout: float) -> None:
        """End QEMU by its PID: QMP ``quit``, then SIGKILL when it has not
        gone within ``shutdown_timeout`` (at once when it is stopped); then
        close QMP."""
        proc = self.proc
        if proc is not None:
            if process_state(proc.pid) in ("T", "t"):
                self.log.info("QEMU %d is stopped, killing it", proc.pid)
                proc.kill()
            elif proc.poll() is None and self.qmp is not None:
                try:
                    self.qmp.execute("quit", timeout=2.0, phase="shutdown")
                except Exception as exc:  # noqa: BLE001 - QEMU may go before replying
                    self.log.debug("quit: %s", exc)
            try:
                proc.wait(shutdown_timeout)
            except subprocess.TimeoutExpired:
                self.log.info("QEMU %d did not quit, killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None

    def save_dmesg(self, shell: GuestShell) -> None:
        """The guest's ``dmesg`` into the work dir (kept with the artifacts);
        best effort on a failing VM."""
        if self.workdir is None:
            return
        try:
            result = shell.run(["dmesg"], timeout=10, check=False)
            (self.workdir / "dmesg.txt").write_text(result.stdout)
        except Exception as exc:  # noqa: BLE001 - best effort on a failing VM
            self.log.debug("could not collect dmesg: %s", exc)

    def finish(self, artifacts: Path | None) -> Path | None:
        """Remove the work dir, its files first copied to ``artifacts`` when
        given; returns where they went."""
        if self.workdir is None:
            return None
        saved = None
        if artifacts is not None:
            artifacts.mkdir(parents=True, exist_ok=True)
            for name in ARTIFACTS:
                src = self.workdir / name
                if src.exists():
                    shutil.copy2(src, artifacts / name)
            saved = artifacts
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        return saved
