"""A running QEMU guest: launch, wait for boot, SSH in, hotplug, always end.

The :class:`VM` is a context manager.  However the ``with`` block ends
(success, failure, timeout, Ctrl-C), ``__exit__`` ends QEMU by its PID
(graceful QMP ``quit``, then SIGKILL), closes QMP and SSH, keeps the
artifacts (argv, serial log, QEMU's stderr, QMP transcript, dmesg) when asked
or when the block failed, and removes the private work directory.

QEMU runs in its own session (so a terminal's Ctrl-C reaches memhp, which
then shuts the VM down cleanly) with ``PR_SET_PDEATHSIG`` = SIGKILL, so even
a ``kill -9`` of memhp cannot leak a QEMU.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import (
    GuestCommandError,
    GuestHung,
    GuestPanic,
    GuestUnreachable,
    HarnessError,
    HostEnvironmentError,
    HotplugRefused,
    LaunchError,
    QemuExited,
    QemuUnresponsive,
    QMPCommandError,
    UsageError,
    VMError,
    WaitTimeout,
)
from harness.leaks import proc_start_time, proc_stat, sweep_stale_workdirs, workdir_base
from harness.model.backend import RAM, BackendSpec
from harness.qemu.argv import RuntimePaths, build_argv
from harness.qemu.config import FwCfgFile, KernelBoot, VMConfig
from harness.qemu.devices import (
    PCI_ADDR_KEY,
    MemoryDevice,
    backend_object,
    new_backend_id,
    pc_dimm,
    pci_addresses,
    ram_backend,
    virtio_mem,
)
from harness.qemu.qmp import QMPEvent, QMPSession
from harness.retry import NotYet, wait_for

log = logging.getLogger("harness.vm")

_PR_SET_PDEATHSIG = 1
# ACPI _OST status codes (ACPI spec 6.3.5; Linux include/acpi/actypes.h)
OST_SUCCESS = 0x0
OST_EJECT_IN_PROGRESS = 0x84
OST_EJECT_REQUEST = 3  # _OST source event: ACPI eject request notification
OST_NAMES = {
    0x1: "non-specific failure", 0x2: "unrecognized notify", 0x80: "eject not supported",
    0x81: "device in use", 0x82: "device busy", 0x83: "eject dependency busy",
}
# x86-64 Linux maps its text at or above __START_KERNEL_map (arch/x86/
# include/asm/page_64_types.h), KASLR included: an instruction pointer below
# it is firmware, the boot loader or the decompressor.
KERNEL_TEXT_BASE = 0xFFFFFFFF80000000
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\n]*")
# What the default guest's /init prints when SSH cannot come up, and why.
UNREACHABLE = (
    ("memhp-init: no eth0", "no network interface (the kernel lacks the virtio-net driver: "
     "build it in, CONFIG_VIRTIO_NET=y, or pass --modules with virtio_net.ko)"),
    ("memhp-init: no keys in fw_cfg", "no SSH keys from QEMU fw_cfg (the kernel lacks "
     "CONFIG_FW_CFG_SYSFS: build it in, or pass --modules with qemu_fw_cfg.ko)"),
)


@dataclass(frozen=True)
class Timeouts:
    """Base timeouts in seconds (KVM-sized); scaled by :attr:`scale`."""

    scale: float = 1.0
    qmp_connect: float = 10.0
    boot: float = 60.0
    ssh: float = 20.0
    command: float = 60.0
    hot_add: float = 15.0
    unplug: float = 30.0
    shutdown: float = 5.0
    migrate: float = 60.0

    def s(self, name: str) -> float:
        value: float = getattr(self, name)
        return value * self.scale

    @classmethod
    def for_accel(cls, accel: str, user_scale: float = 1.0) -> Timeouts:
        # TCG emulates the guest CPU: boots and sysfs walks are several
        # times slower than under KVM.
        return cls(scale=(4.0 if accel == "tcg" else 1.0) * user_scale)


@dataclass(frozen=True)
class QemuDimm:
    """A pc-dimm as QEMU reports it in ``query-memory-devices``."""

    id: str
    addr: int
    size: int
    node: int
    slot: int
    memdev: str
    hotplugged: bool


@dataclass(frozen=True)
class QemuVirtioMem:
    """A virtio-mem device as QEMU reports it in ``query-memory-devices``
    (``VirtioMEMDeviceInfo``): ``size`` is what the guest has plugged."""

    id: str
    addr: int  # memaddr
    size: int
    requested_size: int
    max_size: int
    block_size: int
    node: int
    memdev: str


@dataclass(frozen=True)
class PendingUnplug:
    """A ``device_del`` sent, its ``DEVICE_DELETED`` not yet seen."""

    id: str
    cursor: int  # QMP event log position before the device_del
    backend: str | None  # QOM path of its memdev


def free_loopback_port() -> int:
    """A currently free TCP port on 127.0.0.1 (QEMU binds it a moment later;
    :meth:`VM.launch` retries with a new port if another process won)."""
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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_NAMED = (QemuExited, QemuUnresponsive, GuestHung, GuestPanic)

# How long a broken QMP connection may precede the exit of QEMU's process:
# after kill -9 the socket closes before the kernel lets us reap the child.
EXIT_GRACE_S = 3.0
PROC_STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible sleep",
               "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie", "X": "dead",
               "I": "idle"}


def describe_cpu_positions(registers: str) -> list[str]:
    """Where each CPU is, from HMP ``info registers -a`` (QEMU's
    target/i386/cpu-dump.c: a ``CPU#N`` header, then ``RIP=`` in long mode,
    ``EIP=`` otherwise, and ``HLT=1`` for a halted CPU)."""
    found = []
    registers = registers.replace("\r\n", "\n")  # HMP through QMP ends lines CRLF
    for m in re.finditer(r"^CPU#(\d+)\n(.*?)(?=^CPU#|\Z)", registers, re.M | re.S):
        cpu, body = m.group(1), m.group(2)
        ip = re.search(r"^(RIP|EIP)=([0-9a-fA-F]+)", body, re.M)
        if ip is None:
            continue
        text = f"CPU{cpu} {ip.group(1)}={ip.group(2)}"
        if ip.group(1) == "EIP":
            text += " (not in long mode: firmware or boot loader)"
        elif int(ip.group(2), 16) < KERNEL_TEXT_BASE:
            text += " (below the kernel's text mapping)"
        if re.search(r"\bHLT=1\b", body):
            text += " halted"
        found.append(text)
    return found


def process_state(pid: int) -> str | None:
    """The one-letter /proc state of ``pid`` (``R``, ``S``, ``T``, ``Z``...),
    None when there is no such process."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


class VM:
    """One QEMU guest, reached over QMP and SSH.

    ``image`` is a :class:`harness.image.GuestImage` (default guest or the
    user's kernel) or ``None`` when ``config.boot`` is a disk image.
    """

    def __init__(
        self,
        config: VMConfig,
        *,
        image: Any = None,
        ssh_user: str = "root",
        ssh_key: Path | None = None,
        ssh_host_key: str | None = None,
        ready_marker: str | None = None,
        timeouts: Timeouts | None = None,
        artifacts_dir: Path | None = None,
        keep: bool = False,
        runtime_dir: Path | None = None,
        warm: Any = None,
        boot_attempts: int = 2,
    ) -> None:
        if boot_attempts < 1:
            raise UsageError(f"boot attempts {boot_attempts} is below 1",
                             value=str(boot_attempts), fix="give 1 or more")
        self.image = image
        self.boot_attempts = boot_attempts
        # Boots that hung and were retried (VM.boot): what each one showed
        self.boot_retries: list[dict[str, Any]] = []
        self.base_config = config
        self.config = config
        self.timeouts = timeouts or Timeouts.for_accel(config.accel)
        self.artifacts_dir = artifacts_dir
        self.keep = keep
        self.ssh_user = ssh_user if image is None else image.ssh_user
        self._user_ssh_key = ssh_key
        self._user_host_key = ssh_host_key
        self.ready_marker = ready_marker or (image.ready_marker if image is not None else None)
        self.log = log.getChild(config.name)
        self._runtime_dir = runtime_dir
        self.workdir: Path | None = None
        self.paths: RuntimePaths | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPSession | None = None
        self.shell: Any = None
        self.guest: Any = None
        self.argv: list[str] = []
        self.timings: dict[str, float] = {}
        self._keys: Any = None
        self._failed = False
        self.saved_artifacts: Path | None = None
        self.scenario: Any = None  # the plan this VM was booted for, when known
        # Memory devices plugged now, in plug order (hot-added or cold-plugged)
        self.memory_devices: dict[str, MemoryDevice] = {
            d.id: d for d in config.memory_devices}
        # A migration destination logs in with its source's keys (same guest)
        self.inherit_keys: Any = None
        self.paused = False  # QMP stop: the guest cannot answer until cont
        self._boot_mark: int | None = None  # reset while paused: boots at cont
        # harness.warm.WarmStarts: start from a saved state when one fits
        self.warm = warm
        # How this VM started, for reports: warm (from which state) or why cold
        self.start_info: dict[str, Any] = {"warm": False, "state": None,
                                           "reason": "warm start not asked for (--cold-boot, "
                                                     "memhp_cold_boot, compare, bisect or a "
                                                     "kernel under test)"}
        # hugetlbfs mounts per page size for file backends (set by the caller
        # from a harness.host.hugepages.Reservation; else found on the host)
        self.hugetlbfs: dict[int, Path] = {}
        # backend files memhp named (QEMU creates them): deleted after QEMU ends
        self.backend_files: list[Path] = []
        # Directories an untrusted scenario's mem_path may name (the CLI's
        # --allow-mem-path); None: not checked here (trusted callers).
        self.allowed_mem_paths: tuple[Path, ...] | None = None
        self._backend_dir: Path | None = None

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException:
            self._failed = True
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()

    def start(self) -> None:
        """Boot, or start from a saved state when warm starts are on and
        one fits (:mod:`harness.warm`)."""
        if self.warm is not None:
            why_cold = self.warm.applies(self)
            if why_cold is None:
                self.warm.start(self)
                return
            self.start_info = {"warm": False, "state": None, "reason": why_cold}
        self.boot()

    def boot(self) -> None:
        """Launch QEMU, wait for the ready marker, connect SSH.

        A boot that hangs (QEMU alive, no panic, no ready marker by the boot
        deadline) is recorded in :attr:`boot_retries`, with the console tail
        and where the guest's CPUs were, and tried again with a fresh QEMU,
        up to ``boot_attempts`` boots in all.  Under TCG a boot of an
        unchanged guest now and then never finishes (Debian 6.1 on QEMU 7.2:
        once in 115 boots, bench/RESULTS.md); what the retry hides is kept.
        A panic or a QEMU exit is an answer, not a hang: never retried."""
        t0 = time.monotonic()
        self.launch()
        if self.ready_marker:
            def relaunch(attempt: int) -> None:
                nonlocal t0
                self._end_attempt(f"boot-attempt-{attempt}")
                t0 = time.monotonic()
                self.launch()

            self._until_ready(
                lambda: self.wait_for_console(self.ready_marker or "",
                                              what="the guest's ready marker"),
                again=relaunch, when="boot")
            self.timings["boot_to_ready_s"] = time.monotonic() - t0
        self.connect_ssh()
        self.timings["boot_to_ssh_s"] = time.monotonic() - t0

    def _until_ready(self, wait: Callable[[], object], *, again: Callable[[int], None],
                     when: str) -> None:
        """``wait`` (a bounded wait for the ready marker) until it succeeds;
        each time it expires the hang is recorded (:attr:`boot_retries`) and
        ``again(attempt)`` starts the guest afresh, ``boot_attempts`` in all."""
        for attempt in range(1, self.boot_attempts + 1):
            t0 = time.monotonic()
            try:
                wait()
                return
            except WaitTimeout as exc:
                hang = self._record_hang(exc, attempt, time.monotonic() - t0, when)
                if attempt == self.boot_attempts:
                    exc.message += f"; {hang['cpus']}"
                    if attempt > 1:
                        exc.message += (f" (boot attempt {attempt} of "
                                        f"{self.boot_attempts}: every one hung)")
                    raise
                self.log.warning("%s, boot attempt %d of %d hung (%s; %s); starting again",
                                 when, attempt, self.boot_attempts, exc.message, hang["cpus"])
                again(attempt)

    def _record_hang(self, exc: WaitTimeout, attempt: int, seconds: float,
                     when: str = "boot") -> dict[str, Any]:
        hang = {"attempt": attempt, "when": when, "seconds": round(seconds, 3),
                "error": exc.message,
                "cpus": self.cpu_state(), "serial_tail": self.serial_tail(20)}
        self.boot_retries.append(hang)
        return hang

    def cpu_state(self) -> str:
        """QEMU's run state and each guest CPU's instruction pointer, in one
        line (for a hung boot: firmware, decompressor or kernel?)."""
        if self.qmp is None:
            return "no QMP connection to ask where the guest's CPUs are"
        try:
            status = self.qmp.execute("query-status", timeout=5.0)
            regs = self.qmp.execute("human-monitor-command",
                                    {"command-line": "info registers -a"}, timeout=5.0)
        except HarnessError as exc:
            return f"QEMU did not say where the guest's CPUs are ({exc.message})"
        where = ", ".join(describe_cpu_positions(str(regs))) or "no CPU registers"
        return f"QEMU {status.get('status', '?')}; {where}"

    def _end_attempt(self, label: str) -> None:
        """End this QEMU and its work dir, keeping its files as artifacts
        under ``label`` when artifacts are kept at all."""
        self._end_qemu()
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        self._finish_workdir(label)

    def _make_workdir(self) -> Path:
        base = workdir_base(self._runtime_dir)
        sweep_stale_workdirs(base)
        # mkdtemp creates the directory 0700, owned by us.
        pid = os.getpid()
        path = Path(tempfile.mkdtemp(prefix=f"memhp-{pid}-", dir=base))
        os.chmod(path, 0o700)
        (path / "owner").write_text(f"{pid} {proc_start_time(pid)}\n")
        return path

    def _prepare_boot(self, workdir: Path,
                      keys: Callable[[Path], Any] | None = None) -> VMConfig:
        cfg = self.base_config
        if self.image is None:
            return cfg
        from harness.image.keys import copy_guest_keys, write_guest_keys

        if keys is not None:  # e.g. a saved state's keys (harness.warm)
            self._keys = keys(workdir / "keys")
        elif self.inherit_keys is not None:
            self._keys = copy_guest_keys(self.inherit_keys, workdir / "keys")
        else:
            self._keys = write_guest_keys(workdir / "keys")
        fw = (
            FwCfgFile("opt/memhp/host_key", self._keys.host_key_path),
            FwCfgFile("opt/memhp/authorized_keys", self._keys.authorized_keys_path),
        )
        boot = cfg.boot
        if not isinstance(boot, KernelBoot):
            boot = KernelBoot(self.image.kernel, self.image.initrd, tuple(self.image.cmdline))
        return replace(cfg, boot=boot, fw_cfg=cfg.fw_cfg + fw)

    def launch(self, attempts: int = 3, *, incoming: Sequence[str] = (),
               keys: Callable[[Path], Any] | None = None) -> None:
        """Start QEMU and connect QMP; QEMU's own errors are raised verbatim.
        ``incoming``: ``-incoming`` arguments (start from a saved state);
        ``keys``: makes the SSH keys in the given directory (default: new ones)."""
        if shutil.which(self.base_config.qemu_binary) is None:
            raise HostEnvironmentError(
                f"QEMU binary {self.base_config.qemu_binary!r} not found "
                "(fix: apt-get install qemu-system-x86, or pass --qemu PATH)"
            )
        self.workdir = self._make_workdir()
        self.paths = RuntimePaths(self.workdir)
        cfg = self._prepare_boot(self.workdir, keys)
        for attempt in range(attempts):
            port = cfg.ssh_port or free_loopback_port()
            self.config = replace(cfg, ssh_port=port)
            self.argv = build_argv(self.config, self.paths) + list(incoming)
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
                self._connect_qmp()
                return
            except LaunchError as exc:
                busy = "host forwarding" in exc.output or "Could not set up host" in exc.output
                if busy and cfg.ssh_port is None and attempt + 1 < attempts:
                    self.log.info("port %d was taken, retrying", port)
                    continue
                raise

    def _connect_qmp(self) -> None:
        assert self.paths is not None and self.proc is not None
        proc, sock = self.proc, self.paths.qmp_socket

        def check_started() -> None:
            if proc.poll() is not None:
                output = self.paths.qemu_log.read_text(errors="replace") if self.paths else ""
                raise LaunchError(
                    f"QEMU exited with code {proc.returncode} during start-up",
                    argv=self.argv, exit_code=proc.returncode, output=output,
                )

        def ready() -> bool | None:
            check_started()
            return True if sock.exists() else None

        wait_for(ready, what=f"QMP socket {sock}", timeout=self.timeouts.s("qmp_connect"),
                 phase="launch")
        self.qmp = QMPSession(sock, transcript=self.paths.qmp_transcript, logger=self.log)
        self.qmp.connect(timeout=self.timeouts.s("qmp_connect"), abort=check_started)

    # -- health ------------------------------------------------------------
    def serial_text(self) -> str:
        if self.paths is None:
            return ""
        try:
            return self.paths.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def serial_tail(self, lines: int = 40) -> str:
        return _tail(self.paths.serial_log, lines) if self.paths else ""

    def check_alive(self, serial: str | None = None) -> None:
        """Raise at once if QEMU died, is stopped, or the guest panicked
        (``serial``: the console text when the caller has just read it)."""
        try:
            self._check_process()
        except QemuExited as exited:
            # QEMU ends itself after a guest panic (-action panic=shutdown):
            # the panic is the cause, the exit its consequence.
            self._check_panic(serial, also=f" ({exited.message.splitlines()[0]})")
            raise
        self._check_panic(serial)

    def _check_panic(self, serial: str | None = None, also: str = "") -> None:
        panicked = self.qmp is not None and any(
            ev.name == "GUEST_PANICKED" for ev in self.qmp.events()
        )
        if serial is None:
            serial = self.serial_text()
        m = PANIC_RE.search(serial)
        if panicked or m:
            text = m.group(0) if m else "GUEST_PANICKED event from QEMU"
            raise GuestPanic(f"guest kernel panicked: {text}{also}",
                             serial_tail=self.serial_tail(60))

    def _check_process(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            output = self.paths.qemu_log.read_text(errors="replace") if self.paths else ""
            raise QemuExited(self.proc.returncode, output=output, serial_tail=self.serial_tail())
        state = process_state(self.proc.pid)
        if state in ("T", "t"):
            raise QemuUnresponsive(
                f"QEMU (pid {self.proc.pid}) is {PROC_STATES[state]} (process state {state}: "
                "SIGSTOP or a debugger); it can answer neither QMP nor the guest's SSH "
                f"(fix: kill -CONT {self.proc.pid}, or find what stopped it)",
                state=state, serial_tail=self.serial_tail())

    def _wait_exit(self, grace: float = EXIT_GRACE_S) -> None:
        """After QMP broke: give QEMU's process a bounded moment to end, and
        raise what ended it (exit code/signal, stop, panic) if it did."""
        if self.proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        self.check_alive()

    def diagnose(self, exc: BaseException, *, what: str) -> None:
        """Name the cause of a failed QMP or SSH exchange: QEMU exited or
        was killed, is stopped, the guest panicked, QEMU no longer answers
        QMP, or the guest no longer answers SSH.  Raises the named error, or
        returns when none applies (the caller re-raises ``exc``)."""
        if isinstance(exc, _NAMED):
            return  # already named (e.g. by the SSH layer's own diagnosis)
        self._wait_exit(EXIT_GRACE_S if not isinstance(exc, WaitTimeout) else 0.0)
        if not isinstance(exc, WaitTimeout) or self.proc is None:
            return
        pid = self.proc.pid
        state = process_state(pid) or "?"
        how = PROC_STATES.get(state, state)
        try:
            status = self._qmp().execute("query-status", timeout=5.0 * self.timeouts.scale,
                                         phase="qemu")
        except VMError as probe:
            self._wait_exit(0.0)
            raise QemuUnresponsive(
                f"{what} timed out and QEMU (pid {pid}, {how}) does not answer QMP either "
                f"({probe.message}); QEMU is hung", state=state,
                serial_tail=self.serial_tail()) from exc
        run_state = status.get("status", "?") if isinstance(status, dict) else "?"
        if run_state != "running":
            raise QemuUnresponsive(
                f"{what} timed out: the VM is not running (QMP status {run_state!r})",
                state=state, serial_tail=self.serial_tail()) from exc
        if exc.phase == "ssh":
            if self.shell is not None and self.shell.probe(5.0 * self.timeouts.scale):
                return  # the guest answers: only this command outlived its timeout
            raise GuestHung(
                f"{what} timed out; QEMU (pid {pid}) runs and answers QMP but the guest "
                "does not run even `true` over SSH: the guest is hung (kernel or sshd)",
                phase="guest", serial_tail=self.serial_tail()) from exc

    def check_reachable(self) -> None:
        """Raise at once when the default guest's /init reported that SSH
        cannot come up, instead of waiting out the SSH timeout."""
        serial = self.serial_text()
        self.check_alive(serial)
        for needle, why in UNREACHABLE:
            if needle in serial:
                raise GuestUnreachable(f"the guest cannot be reached over SSH: {why}",
                                       serial_tail=self.serial_tail(30))

    def wait_for_console(self, needle: str, *, what: str, timeout: float | None = None) -> None:
        """Wait for ``needle`` on the serial console."""
        def seen() -> bool | None:
            serial = self.serial_text()  # one read per poll, for both checks
            self.check_alive(serial)
            return True if needle in serial else None

        wait_for(
            seen, what=what, timeout=timeout or self.timeouts.s("boot"),
            # The console log is small and local: a short constant interval
            # costs little and the marker is seen within ~20 ms.
            first_interval=0.01, max_interval=0.02, phase="boot",
            serial_tail=self.serial_tail,
        )

    # -- SSH -----------------------------------------------------------------
    def connect_ssh(self) -> None:
        from harness.guest.readers import Guest
        from harness.guest.ssh import GuestShell

        assert self.config.ssh_port is not None
        if self._keys is not None:
            key, host_line = self._keys.client_key_path, self._keys.host_public_line
        else:
            if self._user_ssh_key is None:
                raise VMError("no SSH key for this guest (use --ssh-key)", phase="ssh")
            # --disk: the user's pinned host key, else the first key this VM
            # presents is pinned for the rest of its life (see GuestShell).
            key, host_line = self._user_ssh_key, self._user_host_key
        shell = GuestShell(
            "127.0.0.1", self.config.ssh_port, self.ssh_user, key, host_line,
            connect_timeout=self.timeouts.s("ssh"), logger=self.log,
        )
        # Every guest command, whoever runs it, stops at once when QEMU
        # dies or is stopped, and a timeout is explained (QEMU or guest hung).
        shell.abort = self.check_alive
        shell.diagnose = self.diagnose

        def attempt() -> bool:
            try:
                shell.connect()
            except (OSError, EOFError) as exc:  # guest sshd not up yet
                raise NotYet(str(exc)) from exc
            return True

        wait_for(attempt, what="SSH login to the guest", timeout=self.timeouts.s("ssh"),
                 first_interval=0.02, max_interval=0.2, abort=self.check_reachable,
                 retry_on=(ConnectionError,), phase="ssh", serial_tail=self.serial_tail)
        self.shell = shell
        self.guest = Guest(shell)

    # -- QMP memory operations ----------------------------------------------
    def _qmp(self) -> QMPSession:
        if self.qmp is None:
            raise VMError("VM is not running", phase="qmp")
        return self.qmp

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                phase: str = "qmp", timeout: float = 60.0) -> Any:
        """A QMP command.  When QMP breaks, QEMU gets a bounded moment to
        exit and the cause is raised: :class:`QemuExited` (exit code or
        signal), :class:`GuestPanic`, :class:`QemuUnresponsive` (stopped, or
        no reply); otherwise the QMP failure itself."""
        self._check_process()  # a stopped QEMU would only time out
        try:
            return self._qmp().execute(command, arguments, phase=phase, timeout=timeout,
                                       abort=self._check_process)
        except QMPCommandError:
            raise
        except VMError as exc:
            self.diagnose(exc, what=f"QMP {command}")
            raise

    def ssh(self, argv: list[str], *, timeout: float | None = None, check: bool = True) -> Any:
        """Run a command in the guest; a broken SSH session caused by a dead
        QEMU or a guest panic is reported as such."""
        if self.shell is None:
            raise VMError("no SSH session to the guest", phase="ssh")
        try:
            return self.shell.run(argv, timeout=timeout or self.timeouts.s("command"),
                                  check=check)
        except GuestCommandError:
            raise
        except (VMError, OSError, EOFError) as exc:
            self.diagnose(exc, what=f"guest command {shlex.join(argv)!r}")
            raise

    def host_key_line(self) -> str | None:
        """The guest's SSH host key as pinned now ("TYPE BASE64")."""
        if self._keys is not None:
            return str(self._keys.host_public_line)
        if self._user_host_key is not None:
            return self._user_host_key
        return self.shell.host_key_line() if self.shell is not None else None

    def incoming_twin(self, name: str, devices: tuple[MemoryDevice, ...]) -> VM:
        """A VM, not yet started, to receive this one's migration: the same
        machine and guest, ``devices`` on its command line, ``-incoming``,
        its own work dir and forwarded port, and this guest's SSH keys."""
        cfg = replace(self.base_config.without_devices(), name=name, ssh_port=None,
                      memory_devices=devices, incoming=True)
        twin = VM(cfg, image=self.image, ssh_user=self.ssh_user, ssh_key=self._user_ssh_key,
                  ssh_host_key=self.host_key_line() if self.image is None else None,
                  ready_marker=self.ready_marker, timeouts=self.timeouts,
                  artifacts_dir=self.artifacts_dir, keep=self.keep,
                  runtime_dir=self._runtime_dir)
        twin.inherit_keys = self._keys
        twin.scenario = self.scenario
        return twin

    _RUNTIME = ("base_config", "config", "workdir", "paths", "proc", "qmp", "shell", "guest",
                "argv", "_keys", "_user_host_key", "paused", "_boot_mark")

    def swap_runtime(self, other: VM) -> None:
        """Exchange QEMU processes with ``other`` (after a migration to it):
        this VM drives ``other``'s QEMU, work dir, QMP and SSH from now on,
        and ``other`` holds the old ones, so that stopping it ends the old
        QEMU with the usual stop logic.  Plugged devices stay this VM's."""
        for attr in self._RUNTIME:
            mine, theirs = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, theirs)
            setattr(other, attr, mine)
        for vm in (self, other):  # the SSH layer reports to the VM that now owns it
            if vm.shell is not None:
                vm.shell.abort = vm.check_alive
                vm.shell.diagnose = vm.diagnose

    def memory_device_info(self) -> dict[str, dict[str, Any]]:
        """QEMU's ``query-memory-devices`` ``data`` of every memory device, by
        id; a PCI one (virtio-mem) also gets its PCI ``slot.function`` from
        ``query-pci`` as ``pci-addr`` (see :func:`harness.qemu.devices.pci_addresses`)."""
        out: dict[str, dict[str, Any]] = {}
        for dev in self.execute("query-memory-devices", phase="observe"):
            data = dev.get("data", {})
            if data.get("id"):
                out[str(data["id"])] = dict(data) | {"type": dev.get("type")}
        if any(d["type"] == "virtio-mem" for d in out.values()):
            pci = pci_addresses(self.execute("query-pci", phase="observe"))
            for dev_id, data in out.items():
                if dev_id in pci:
                    data[PCI_ADDR_KEY] = pci[dev_id]
        return out

    def query_memory(self) -> tuple[tuple[QemuDimm, ...], tuple[QemuVirtioMem, ...]]:
        """The pc-dimms and the virtio-mem devices of one ``query-memory-devices``."""
        dimms, vmems = [], []
        for dev in self.execute("query-memory-devices", phase="observe"):
            d = dev.get("data", {})
            if dev.get("type") == "dimm":
                dimms.append(QemuDimm(
                    id=d.get("id", ""), addr=int(d["addr"]), size=int(d["size"]),
                    node=int(d["node"]), slot=int(d["slot"]), memdev=str(d["memdev"]),
                    hotplugged=bool(d.get("hotplugged", False)),
                ))
            elif dev.get("type") == "virtio-mem":
                vmems.append(QemuVirtioMem(
                    id=d.get("id", ""), addr=int(d["memaddr"]), size=int(d["size"]),
                    requested_size=int(d["requested-size"]), max_size=int(d["max-size"]),
                    block_size=int(d["block-size"]), node=int(d["node"]),
                    memdev=str(d["memdev"]),
                ))
        return tuple(dimms), tuple(vmems)

    def query_memory_devices(self) -> tuple[QemuDimm, ...]:
        """The pc-dimms of ``query-memory-devices``."""
        return self.query_memory()[0]

    def query_virtio_mem(self) -> tuple[QemuVirtioMem, ...]:
        """The ``virtio-mem`` entries of ``query-memory-devices``."""
        return self.query_memory()[1]

    def hot_add_virtio_mem(self, vmem_id: str, size: int, node: int, requested: int = 0,
                           **props: Any) -> None:
        """Hot-add a virtio-mem-pci over an anonymous RAM backend of ``size``
        (see :meth:`plug`; ``props`` as :func:`harness.qemu.devices.virtio_mem`)."""
        self.plug(virtio_mem(vmem_id, ram_backend(size), node, requested, **props))

    def resize_virtio_mem(self, vmem_id: str, requested: int) -> None:
        """``qom-set`` the device's ``requested-size`` (QEMU's refusal is raised
        verbatim as :class:`QMPCommandError`)."""
        self.execute("qom-set", {"path": f"/machine/peripheral/{vmem_id}",
                                 "property": "requested-size", "value": requested},
                     phase="hotplug")
        if vmem_id in self.memory_devices:  # a migration destination takes the new size
            rec = self.memory_devices[vmem_id]
            self.memory_devices[vmem_id] = replace(
                rec, device=rec.device.with_props(**{"requested-size": requested}))

    def wait_virtio_mem_size(self, vmem_id: str, size: int, *, since: int,
                             timeout: float | None = None) -> bool:
        """Wait (bounded) until the guest has plugged ``size`` bytes of
        ``vmem_id``: QEMU's ``MEMORY_DEVICE_SIZE_CHANGE`` since ``since``
        (a QMP event cursor taken before the action) carrying that size, or
        the size already there (the guest plugs nothing: no event comes).
        False when the wait ended without it (the caller compares what is)."""
        for dev in self.query_virtio_mem():
            if dev.id == vmem_id and dev.size == size:
                return True
        qmp = self._qmp()

        def match(ev: QMPEvent) -> bool:
            return (ev.name == "MEMORY_DEVICE_SIZE_CHANGE" and ev.data.get("id") == vmem_id
                    and int(ev.data.get("size", -1)) == size)

        try:
            qmp.wait_event(match, since=since, timeout=timeout or self.timeouts.s("hot_add"),
                           what=f"MEMORY_DEVICE_SIZE_CHANGE of {vmem_id} to {size}",
                           abort=self.check_alive, phase="hotplug")
        except WaitTimeout:
            return False
        return True

    def backend_path(self, spec: BackendSpec, backend_id: str) -> str | None:
        """The ``mem-path`` of a file backend: ``spec.mem_path`` (a directory
        gets a file of memhp's inside, so the file can be checked and
        removed), else a file in the hugetlbfs of the page size, else a
        file in the VM's private work dir.  None for other kinds."""
        if spec.kind != "file":
            return None
        name = f"memhp-{os.getpid()}-{backend_id}"
        if spec.mem_path is not None:
            if self.allowed_mem_paths is not None:
                from harness.host.paths import check_mem_path

                check_mem_path(spec.mem_path, self.allowed_mem_paths)  # again: no race
            given = Path(spec.mem_path)
            if not given.is_dir():
                if not given.exists():
                    self.backend_files.append(given)
                return str(given)
            path = given / name
        elif spec.hugepages:
            from harness.host.hugepages import HostCannot, find_hugetlbfs

            mount = self.hugetlbfs.get(spec.hugepages) or find_hugetlbfs(spec.hugepages)
            if mount is None:
                raise HostCannot(f"no hugetlbfs of {spec.hugepages >> 10} kB pages is mounted "
                                 "(reserve through harness.host.hugepages.reserved, which "
                                 "mounts one)", phase="hotplug")
            path = mount / name
        else:
            path = self._backends_dir() / name
        self.backend_files.append(path)
        return str(path)

    def hot_add(self, dimm_id: str, size: int, node: int, addr: int | None = None,
                backend: BackendSpec = RAM) -> QemuDimm:
        """Hot-add a pc-dimm over ``backend`` (anonymous RAM unless given;
        see :meth:`plug`)."""
        backend_id = new_backend_id()
        path = self.backend_path(backend, backend_id)
        obj = backend_object(size, backend, backend_id=backend_id, mem_path=path)
        try:
            self.plug(pc_dimm(dimm_id, obj, node, addr))
        except QMPCommandError:
            if path is not None and Path(path) in self.backend_files:
                self._drop_refused_file(Path(path))
            raise
        for dev in self.query_memory_devices():
            if dev.id == dimm_id:
                return dev
        raise VMError(f"device_add {dimm_id} succeeded but QEMU does not list it",
                      phase="hotplug")

    def plug(self, device: MemoryDevice) -> None:
        """``object-add`` the backend and ``device_add`` the device, and
        record both in :attr:`memory_devices` (what a migration destination
        or a saved state must recreate).

        If ``device_add`` fails the backend is deleted again, so the VM is
        left as it was; QEMU's error is re-raised verbatim.
        """
        self.execute("object-add", device.backend.qmp_args(), phase="hotplug")
        try:
            self.execute("device_add", device.device.qmp_args(), phase="hotplug")
        except BaseException:
            try:
                self.execute("object-del", {"id": device.backend.id}, phase="hotplug")
            except VMError as cleanup:
                self.log.warning("rollback of %s failed: %s", device.backend.id, cleanup)
            raise
        self.memory_devices[device.id] = device

    def hot_remove(self, dimm_id: str, *, timeout: float | None = None) -> QMPEvent:
        """``device_del`` and wait for the guest's verdict.

        The guest answers the ACPI eject with ``_OST``; a failure status (the
        kernel could not offline the memory) means ``DEVICE_DELETED`` will
        never come, so :class:`HotplugRefused` is raised at once.  On success
        the backend is deleted too.
        """
        return self.wait_unplugged(self.request_unplug(dimm_id), timeout=timeout)

    def request_unplug(self, dimm_id: str) -> PendingUnplug:
        """``device_del`` only: QEMU asks the guest to eject (an ACPI GPE);
        the device stays until the guest has ejected it."""
        qmp = self._qmp()
        backend = None
        if dimm_id in self.memory_devices:  # plugged by memhp: its backend is recorded
            backend = self.memory_devices[dimm_id].backend.id
        else:  # a DIMM memhp did not plug: ask QEMU
            for dev in self.query_memory_devices():
                if dev.id == dimm_id:
                    backend = dev.memdev
        cursor = qmp.cursor()
        self.execute("device_del", {"id": dimm_id}, phase="hotplug")
        return PendingUnplug(dimm_id, cursor, backend)

    def wait_unplugged(self, pending: PendingUnplug, *, timeout: float | None = None
                       ) -> QMPEvent:
        """Wait (bounded) for the ``DEVICE_DELETED`` of a requested unplug
        (it may have come already), then delete the backend."""
        dimm_id = pending.id

        def match(ev: QMPEvent) -> bool:
            if ev.name == "DEVICE_DELETED" and ev.data.get("device") == dimm_id:
                return True
            if ev.name == "ACPI_DEVICE_OST":
                info = ev.data.get("info", {})
                status = int(info.get("status", 0))
                if info.get("device") == dimm_id and status not in (
                    OST_SUCCESS, OST_EJECT_IN_PROGRESS
                ):
                    raise HotplugRefused(dimm_id, status, OST_NAMES.get(status, ""),
                                         serial_tail=self.serial_tail(20))
            return False

        event = self._qmp().wait_event(
            match, since=pending.cursor, timeout=timeout or self.timeouts.s("unplug"),
            what=f"DEVICE_DELETED for {dimm_id}", abort=self.check_alive, phase="hotplug",
        )
        self.memory_devices.pop(dimm_id, None)
        if pending.backend:
            backend_id = pending.backend.rsplit("/", 1)[-1]
            self.execute("object-del", {"id": backend_id}, phase="hotplug")
        return event

    def pause(self) -> None:
        """QMP ``stop``: the vCPUs stop (QEMU still answers QMP, the guest
        nothing until :meth:`resume`)."""
        self.execute("stop", phase="pause")
        self.paused = True

    def resume(self) -> None:
        """QMP ``cont``; after a reset while paused, wait until the guest
        has booted; SSH is reconnected if a migration while paused left none."""
        self.execute("cont", phase="resume")
        self.paused = False
        mark, self._boot_mark = self._boot_mark, None
        if mark is not None:
            self._wait_back(mark)
        elif self.shell is None:
            self.connect_ssh()

    def reset_paused(self) -> None:
        """``system_reset`` while paused: QEMU resets the machine and keeps
        it stopped (runstate ``prelaunch``, softmmu/runstate.c
        ``main_loop_should_exit()`` v7.2.0); the guest boots at ``cont``."""
        self._boot_mark = self._system_reset()

    def reboot(self) -> None:
        """``system_reset`` and wait until the guest is back on SSH."""
        self._wait_back(self._system_reset())

    def _system_reset(self) -> int:
        """Drop the SSH session and ``system_reset``; returns the serial
        offset before the reset (for :meth:`_wait_back`)."""
        mark = len(self.serial_text())
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        self.execute("system_reset", phase="reset")
        return mark

    def reboot_guest(self) -> QMPEvent:
        """Reboot from inside the guest (``reboot -f``: the kernel resets the
        machine at once, no init scripts) and wait until it is back on SSH.
        Returns QEMU's ``RESET`` event (``guest: true``)."""
        shell = self.shell
        if shell is None:
            raise VMError("no SSH session to the guest", phase="reboot")
        qmp = self._qmp()
        mark = len(self.serial_text())
        cursor = qmp.cursor()
        # Detached, a moment later, so that this command's exit status still
        # reaches us before the guest goes.
        self.ssh(["sh", "-c", "(sleep 0.2; reboot -f) </dev/null >/dev/null 2>&1 &"])
        event = qmp.wait_event(lambda ev: ev.name == "RESET", since=cursor,
                               timeout=self.timeouts.s("command"), what="RESET after reboot -f",
                               abort=self.check_alive, phase="reboot")
        shell.close()
        self.shell = None
        self._wait_back(mark)
        return event

    def _wait_back(self, mark: int) -> None:
        """The ready marker after serial offset ``mark``, then SSH.  A boot
        after the reset that hangs (see :meth:`boot`) is recorded in
        :attr:`boot_retries` and the machine reset again, up to
        ``boot_attempts`` boots: a second ``system_reset`` of a guest that
        has not reached /init changes nothing the model predicts (the
        machine's devices are the same; the guest starts from firmware)."""
        if self.ready_marker:
            marker = self.ready_marker

            def back() -> None:
                at = mark
                wait_for(
                    lambda: True if marker in self.serial_text()[at:] else None,
                    what="the ready marker after the reset", timeout=self.timeouts.s("boot"),
                    first_interval=0.05, max_interval=0.2, abort=self.check_alive,
                    phase="reset", serial_tail=self.serial_tail,
                )

            def reset_again(attempt: int) -> None:
                nonlocal mark
                mark = self._system_reset()

            self._until_ready(back, again=reset_again, when="after a reset")
        self.connect_ssh()

    def mark_failed(self) -> None:
        """Keep the artifacts at exit even though no exception ended the block."""
        self._failed = True

    # -- shutdown ------------------------------------------------------------
    def stop(self) -> None:
        """End QEMU and clean up; idempotent, never raises for cleanup trouble."""
        try:
            if (self._failed or self.keep) and self.shell is not None and self._serving():
                self._save_dmesg()
        finally:
            try:
                if self.shell is not None:
                    self.shell.close()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                self.log.debug("closing SSH: %s", exc)
            self.shell = None
            self._end_qemu()
            if self.qmp is not None:
                self.qmp.close()
                self.qmp = None
            self._remove_backend_files()
            self._finish_workdir()

    def _backends_dir(self) -> Path:
        """A private (0700) directory for file backends, made on first use.
        Not the work dir: after a migration the destination QEMU maps the
        same files while the source's work dir goes (VM.swap_runtime)."""
        if self._backend_dir is None:
            pid = os.getpid()
            path = Path(tempfile.mkdtemp(prefix=f"memhp-{pid}-backends-",
                                         dir=workdir_base(self._runtime_dir)))
            os.chmod(path, 0o700)
            # an owner file: sweep_stale_workdirs() removes it after a kill -9
            (path / "owner").write_text(f"{pid} {proc_start_time(pid)}\n")
            self._backend_dir = path
        return self._backend_dir

    def _drop_refused_file(self, path: Path) -> None:
        """A refused backend leaves nothing behind: QEMU created its file (a
        failed preallocation filled it) but never deletes it, and unmaps it
        only after an RCU grace period (system/physmem.c qemu_ram_free()), so
        wait (bounded) until its file system has the room back."""
        from harness.host.hugepages import filesystem_free

        try:
            used = path.stat().st_blocks * 512
            before = filesystem_free(str(path))
        except OSError:
            used = before = 0
        path.unlink(missing_ok=True)
        self.backend_files.remove(path)
        if used:
            try:
                wait_for(lambda: True if filesystem_free(str(path)) >= before + used else None,
                         what=f"the room of refused backend file {path}", timeout=15,
                         phase="hotplug")
            except WaitTimeout as exc:
                self.log.warning("%s", exc)

    def _remove_backend_files(self) -> None:
        """Backend files memhp named (QEMU never deletes them; on hugetlbfs
        they hold their hugepages until deleted)."""
        for path in self.backend_files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self.log.warning("could not remove backend file %s: %s", path, exc)
        self.backend_files = []
        if self._backend_dir is not None:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None

    def _serving(self) -> bool:
        """QEMU runs and is not stopped (worth asking the guest for dmesg)."""
        return self.proc is not None and self.proc.poll() is None and not self.paused \
            and process_state(self.proc.pid) not in ("T", "t")

    def _save_dmesg(self) -> None:
        if self.workdir is None:
            return
        try:
            result = self.shell.run(["dmesg"], timeout=10, check=False)
            (self.workdir / "dmesg.txt").write_text(result.stdout)
        except Exception as exc:  # noqa: BLE001 - best effort on a failing VM
            self.log.debug("could not collect dmesg: %s", exc)

    def _end_qemu(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if process_state(proc.pid) in ("T", "t"):
            self.log.info("QEMU %d is stopped, killing it", proc.pid)
            proc.kill()
        elif proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=2.0, phase="shutdown")
            except Exception as exc:  # noqa: BLE001 - QEMU may go before replying
                self.log.debug("quit: %s", exc)
        try:
            proc.wait(self.timeouts.shutdown)
        except subprocess.TimeoutExpired:
            self.log.info("QEMU %d did not quit, killing it", proc.pid)
            proc.kill()
            proc.wait()

    def _finish_workdir(self, label: str | None = None) -> None:
        """Remove the work dir; its files go to the artifacts first when kept,
        failed, or ``label``-led (a discarded attempt: ``<name>/<label>/``)."""
        if self.workdir is None:
            return
        if self.artifacts_dir is not None and (self.keep or self._failed or label):
            dest = self.artifacts_dir / self.config.name
            if label:
                dest = dest / label
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("argv.txt", "serial.log", "qemu.log", "qmp.jsonl", "dmesg.txt"):
                src = self.workdir / name
                if src.exists():
                    shutil.copy2(src, dest / name)
            self.saved_artifacts = dest
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
