"""A running QEMU guest: launch, wait for boot, SSH in, hotplug, always end.

The :class:`VM` composes one job per module: ``process`` (QEMU, its 0700
work dir, QMP, its end by PID, artifacts), ``boot`` (keys, the waits for the
ready marker and SSH), ``health`` (QEMU dead, stopped or hung, the guest
panicked or hung) and ``hotplug`` (memory devices and their backends).

The VM is a context manager.  However the ``with`` block ends (success,
failure, timeout, Ctrl-C), ``__exit__`` ends QEMU by its PID (graceful QMP
``quit``, then SIGKILL), closes QMP and SSH, keeps the artifacts (argv,
serial log, QEMU's stderr, QMP transcript, dmesg) when asked or when the
block failed, and removes the private work dir and backend files.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from harness.errors import (
    GuestCommandError,
    HostEnvironmentError,
    QMPCommandError,
    UsageError,
    VMError,
)
from harness.model.backend import RAM, BackendSpec
from harness.qemu import boot as _boot
from harness.qemu import health
from harness.qemu.argv import RuntimePaths
from harness.qemu.boot import describe_cpu_positions
from harness.qemu.config import VMConfig
from harness.qemu.devices import MemoryDevice
from harness.qemu.hotplug import (
    OST_EJECT_REQUEST,
    MemoryDevices,
    PendingUnplug,
    QemuDimm,
    QemuVirtioMem,
)
from harness.qemu.process import QemuProcess
from harness.qemu.qmp import QMPEvent, QMPSession
from harness.qemu.timeouts import Timeouts

if TYPE_CHECKING:
    from harness.guest.ssh import CommandResult
    from harness.image import GuestImage
    from harness.image.keys import GuestKeys
    from harness.warm import WarmStarts

# Names other modules import from here (kept where they were).
__all__ = ["OST_EJECT_REQUEST", "VM", "PendingUnplug", "QemuDimm", "QemuVirtioMem",
           "Timeouts", "describe_cpu_positions"]

log = logging.getLogger("harness.vm")


class VM:
    """One QEMU guest, reached over QMP and SSH.

    ``image`` is a :class:`harness.image.GuestImage` (default guest or the
    user's kernel) or ``None`` when ``config.boot`` is a disk image.
    """

    def __init__(
        self,
        config: VMConfig,
        *,
        image: GuestImage | None = None,
        ssh_user: str = "root",
        ssh_key: Path | None = None,
        ssh_host_key: str | None = None,
        ready_marker: str | None = None,
        timeouts: Timeouts | None = None,
        artifacts_dir: Path | None = None,
        keep: bool = False,
        runtime_dir: Path | None = None,
        warm: WarmStarts | None = None,
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
        self.process = QemuProcess(runtime_dir, self.log)
        # GuestShell and Guest while SSH is connected, else None (Any: callers
        # in session.py, steps/ and bench.py use them without a None check)
        self.shell: Any = None
        self.guest: Any = None
        self.timings: dict[str, float] = {}
        self._keys: GuestKeys | None = None
        self._failed = False
        self.saved_artifacts: Path | None = None
        # the plan this VM was booted for, when known (a harness.scenario.Scenario,
        # opaque here: the qemu layer knows no plans)
        self.scenario: Any = None
        self.devices = MemoryDevices(self, config.memory_devices, runtime_dir, self.log)
        # A migration destination logs in with its source's keys (same guest)
        self.inherit_keys: GuestKeys | None = None
        self.paused = False  # QMP stop: the guest cannot answer until cont
        self._boot_mark: int | None = None  # reset while paused: boots at cont
        self.warm = warm  # start from a saved state when one fits
        # How this VM started, for reports: warm (from which state) or why cold
        self.start_info: dict[str, Any] = {"warm": False, "state": None, "reason": (
            "warm start not asked for (--cold-boot, memhp_cold_boot, compare, bisect or "
            "a kernel under test)")}

    # -- the running QEMU (harness.qemu.process) --------------------------------
    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    @property
    def qmp(self) -> QMPSession | None:
        return self.process.qmp

    @property
    def paths(self) -> RuntimePaths | None:
        return self.process.paths

    @property
    def workdir(self) -> Path | None:
        return self.process.workdir

    @property
    def argv(self) -> list[str]:
        return self.process.argv

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def guest_keys(self) -> GuestKeys | None:
        """The SSH keys memhp made (or copied) for this guest; None for a
        disk image, which the user's key reaches."""
        return self._keys

    # -- memory devices (MemoryDevices) ----------------------------------------
    @property
    def memory_devices(self) -> dict[str, MemoryDevice]:
        """Memory devices plugged now, in plug order (hot-added or cold-plugged)."""
        return self.devices.plugged

    @property
    def hugetlbfs(self) -> dict[int, Path]:
        """hugetlbfs mounts per page size for file backends."""
        return self.devices.hugetlbfs

    @hugetlbfs.setter
    def hugetlbfs(self, mounts: dict[int, Path]) -> None:
        self.devices.hugetlbfs = mounts

    @property
    def allowed_mem_paths(self) -> tuple[Path, ...] | None:
        """Directories an untrusted scenario's mem_path may name (None: not checked)."""
        return self.devices.allowed_mem_paths

    @allowed_mem_paths.setter
    def allowed_mem_paths(self, paths: tuple[Path, ...] | None) -> None:
        self.devices.allowed_mem_paths = paths

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
        """Boot, or start from a fitting saved state (:mod:`harness.warm`)."""
        if self.warm is not None:
            why_cold = self.warm.applies(self)
            if why_cold is None:
                self.warm.start(self)
                return
            self.start_info = {"warm": False, "state": None, "reason": why_cold}
        self.boot()

    def boot(self) -> None:
        """Launch QEMU, wait for the ready marker, connect SSH; a hung boot
        is recorded in :attr:`boot_retries` and retried (:func:`harness.qemu.boot.boot`)."""
        _boot.boot(self)

    def launch(self, attempts: int = 3, *, incoming: Sequence[str] = (),
               keys: Callable[[Path], GuestKeys] | None = None) -> None:
        """Start QEMU and connect QMP; QEMU's own errors are raised verbatim.
        ``incoming``: ``-incoming`` arguments (start from a saved state);
        ``keys``: makes the SSH keys in the given directory (default: new ones)."""
        if shutil.which(self.base_config.qemu_binary) is None:
            raise HostEnvironmentError(
                f"QEMU binary {self.base_config.qemu_binary!r} not found "
                "(fix: apt-get install qemu-system-x86, or pass --qemu PATH)"
            )
        workdir, made = self.process.make_workdir(), None
        if self.image is not None:  # memhp's keys (a disk image takes the user's)
            self._keys = made = _boot.guest_keys(workdir / "keys", self.inherit_keys, keys)
        self.config = _boot.boot_config(self.base_config, self.image, made)
        self.config = self.process.run(self.config, incoming=incoming, attempts=attempts,
                                       qmp_timeout=self.timeouts.s("qmp_connect"))

    def end_attempt(self, label: str) -> None:
        """End this QEMU and its work dir, keeping its files as artifacts
        under ``label`` when artifacts are kept at all (a discarded boot)."""
        self.process.end(self.timeouts.shutdown)
        self._finish_workdir(label)

    def mark_failed(self) -> None:
        """Keep the artifacts at exit even though no exception ended the block."""
        self._failed = True

    def stop(self) -> None:
        """End QEMU and clean up; idempotent, never raises for cleanup trouble."""
        try:
            # dmesg when kept and QEMU runs, not stopped (else the guest cannot answer)
            if (self._failed or self.keep) and self.shell is not None and not self.paused \
                    and self.process.running():
                self.process.save_dmesg(self.shell)
        finally:
            try:
                if self.shell is not None:
                    self.shell.close()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                self.log.debug("closing SSH: %s", exc)
            self.shell = None
            self.process.end(self.timeouts.shutdown)
            self.devices.remove_backend_files()
            self._finish_workdir()

    def _finish_workdir(self, label: str | None = None) -> None:
        """Remove the work dir; its files go to the artifacts first when kept,
        failed, or ``label``-led (a discarded attempt: ``<name>/<label>/``)."""
        dest = None
        if self.artifacts_dir is not None and (self.keep or self._failed or label):
            dest = self.artifacts_dir / self.config.name / (label or "")  # "": no level
        saved = self.process.finish(dest)
        self.saved_artifacts = saved or self.saved_artifacts  # a second stop keeps it

    # -- health ------------------------------------------------------------
    def serial_text(self) -> str:
        return self.process.serial_text()

    def serial_tail(self, lines: int = 40) -> str:
        return self.process.serial_tail(lines)

    def qemu_output(self) -> str:
        """What QEMU wrote to stdout/stderr, verbatim."""
        return self.process.output()

    def check_alive(self, serial: str | None = None) -> None:
        """Raise at once if QEMU died, is stopped, or the guest panicked
        (``serial``: the console text when the caller has just read it)."""
        health.check_alive(self.process, serial)

    def diagnose(self, exc: BaseException, *, what: str) -> None:
        """Raise the named cause of a failed QMP or SSH exchange (:mod:`.health`)."""
        health.diagnose(self, exc, what=what)

    def cpu_state(self) -> str:
        """QEMU's run state and each guest CPU's instruction pointer, in one line."""
        return _boot.cpu_state(self.qmp)

    def wait_for_console(self, needle: str, *, what: str, timeout: float | None = None) -> None:
        """Wait for ``needle`` on the serial console."""
        _boot.wait_for_console(self, needle, what=what, timeout=timeout)

    # -- SSH -----------------------------------------------------------------
    def connect_ssh(self) -> None:
        from harness.guest.readers import Guest

        assert self.config.ssh_port is not None
        key: Path | None
        host_line: str | None
        if self._keys is not None:
            key, host_line = self._keys.client_key_path, self._keys.host_public_line
        else:
            # --disk: the user's pinned host key, else the first key this VM
            # presents is pinned for the rest of its life (see GuestShell).
            key, host_line = self._user_ssh_key, self._user_host_key
        self.shell = _boot.open_shell(self, self.config.ssh_port, self.ssh_user, key,
                                      host_line, diagnose=self.diagnose)
        self.guest = Guest(self.shell)

    def disconnect_ssh(self) -> None:
        """Drop the SSH session (e.g. before a state save or after a
        migration); :attr:`shell` and :attr:`guest` are None at once, even
        when closing the session fails."""
        shell, self.shell, self.guest = self.shell, None, None
        if shell is not None:
            shell.close()

    def ssh(self, argv: list[str], *, timeout: float | None = None,
            check: bool = True) -> CommandResult:
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

    # -- QMP -----------------------------------------------------------------
    def qmp_session(self) -> QMPSession:
        """The QMP session; :class:`VMError` when QEMU is not running."""
        return self.process.session()

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                phase: str = "qmp", timeout: float = 60.0) -> Any:
        """A QMP command.  When QMP breaks, QEMU gets a bounded moment to
        exit and the cause is raised: :class:`QemuExited` (exit code or
        signal), :class:`GuestPanic`, :class:`QemuUnresponsive` (stopped, or
        no reply); otherwise the QMP failure itself."""
        self.process.check()  # a stopped QEMU would only time out
        try:
            return self.qmp_session().execute(command, arguments, phase=phase,
                                              timeout=timeout, abort=self.process.check)
        except QMPCommandError:
            raise
        except VMError as exc:
            self.diagnose(exc, what=f"QMP {command}")
            raise

    # -- run state -------------------------------------------------------------
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
            _boot.wait_back(self, mark)
        elif self.shell is None:
            self.connect_ssh()

    def reset_paused(self) -> None:
        """``system_reset`` while paused: QEMU resets the machine and keeps
        it stopped (runstate ``prelaunch``, softmmu/runstate.c
        ``main_loop_should_exit()`` v7.2.0); the guest boots at ``cont``."""
        self._boot_mark = self.system_reset()

    def reboot(self) -> None:
        """``system_reset`` and wait until the guest is back on SSH (a hung
        boot is retried: :func:`harness.qemu.boot.wait_back`)."""
        _boot.wait_back(self, self.system_reset())

    def system_reset(self) -> int:
        """Drop the SSH session and ``system_reset``; returns the serial
        offset before the reset (where to look for the next ready marker)."""
        mark = len(self.serial_text())
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        self.execute("system_reset", phase="reset")
        return mark

    def reboot_guest(self) -> QMPEvent:
        """Reboot from inside the guest (``reboot -f``) and wait until it is
        back on SSH; QEMU's ``RESET`` event (:func:`harness.qemu.boot.reboot_guest`)."""
        return _boot.reboot_guest(self)

    # -- migration -------------------------------------------------------------
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

    _RUNTIME = ("base_config", "config", "process", "shell", "guest", "_keys",
                "_user_host_key", "paused", "_boot_mark")

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

    # -- memory devices --------------------------------------------------------
    def memory_device_info(self) -> dict[str, dict[str, Any]]:
        """QEMU's ``query-memory-devices`` data by id, with ``pci-addr``
        (:meth:`harness.qemu.hotplug.MemoryDevices.info`)."""
        return self.devices.info()

    def query_memory(self) -> tuple[tuple[QemuDimm, ...], tuple[QemuVirtioMem, ...]]:
        """The pc-dimms and the virtio-mem devices of one ``query-memory-devices``."""
        return self.devices.query()

    def query_dimms(self) -> tuple[QemuDimm, ...]:
        """The pc-dimms of ``query-memory-devices``."""
        return self.devices.query()[0]

    def query_virtio_mem(self) -> tuple[QemuVirtioMem, ...]:
        """The ``virtio-mem`` entries of ``query-memory-devices``."""
        return self.devices.query()[1]

    def backend_path(self, spec: BackendSpec, backend_id: str) -> str | None:
        """The ``mem-path`` of a file backend (see
        :meth:`harness.qemu.hotplug.MemoryDevices.backend_path`); None for other kinds."""
        return self.devices.backend_path(spec, backend_id)

    def hot_add(self, dimm_id: str, size: int, node: int, addr: int | None = None,
                backend: BackendSpec = RAM) -> QemuDimm:
        """Hot-add a pc-dimm over ``backend`` (anonymous RAM unless given)."""
        return self.devices.hot_add(dimm_id, size, node, addr, backend)

    def hot_remove(self, dimm_id: str, *, timeout: float | None = None) -> QMPEvent:
        """``device_del`` and wait for the guest's verdict: a failure ``_OST``
        raises :class:`HotplugRefused` at once; on success the backend goes too."""
        return self.wait_unplugged(self.request_unplug(dimm_id), timeout=timeout)

    def request_unplug(self, dimm_id: str) -> PendingUnplug:
        """``device_del`` only: QEMU asks the guest to eject (an ACPI GPE)."""
        return self.devices.request_unplug(dimm_id)

    def wait_unplugged(self, pending: PendingUnplug, *, timeout: float | None = None
                       ) -> QMPEvent:
        """Wait (bounded) for its ``DEVICE_DELETED``, then delete the backend."""
        return self.devices.wait_unplugged(pending, timeout=timeout)

    def hot_add_virtio_mem(self, vmem_id: str, size: int, node: int, requested: int = 0,
                           **props: Any) -> None:
        """Hot-add a virtio-mem-pci (``props`` as :func:`harness.qemu.devices.virtio_mem`)."""
        self.devices.hot_add_virtio_mem(vmem_id, size, node, requested, **props)

    def resize_virtio_mem(self, vmem_id: str, requested: int) -> None:
        """``qom-set`` ``requested-size``; QEMU's refusal raised verbatim (QMPCommandError)."""
        self.devices.resize_virtio_mem(vmem_id, requested)

    def wait_virtio_mem_size(self, vmem_id: str, size: int, *, since: int,
                             timeout: float | None = None) -> bool:
        """Wait (bounded) until the guest has plugged ``size`` bytes of ``vmem_id``
        (:meth:`harness.qemu.hotplug.MemoryDevices.wait_virtio_mem_size`)."""
        return self.devices.wait_virtio_mem_size(vmem_id, size, since=since, timeout=timeout)
