"""Memory devices of a running QEMU over QMP: backends (``object-add``,
file backends and their files), ``device_add``/``device_del`` with the
guest's ACPI verdict (``ACPI_DEVICE_OST``, ``DEVICE_DELETED``), virtio-mem
resizes (``qom-set``, ``MEMORY_DEVICE_SIZE_CHANGE``), and what QEMU reports
(``query-memory-devices``, ``query-pci``).  QEMU's refusals are raised
verbatim (:class:`QMPCommandError`)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from harness.devices.pc_dimm.qemu import QemuDimm
from harness.devices.pc_dimm.qemu import records as dimm_records
from harness.devices.virtio_mem.qemu import QemuVirtioMem
from harness.devices.virtio_mem.qemu import records as virtio_mem_records
from harness.errors import HotplugRefused, QMPCommandError, VMError, WaitTimeout
from harness.model.backend import RAM, BackendSpec
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
from harness.qemu.process import private_dir
from harness.qemu.qmp import QMPEvent, QMPSession
from harness.qemu.timeouts import Timeouts
from harness.retry import wait_for

# ACPI _OST status codes (ACPI spec 6.3.5; Linux include/acpi/actypes.h)
OST_SUCCESS = 0x0
OST_EJECT_IN_PROGRESS = 0x84
OST_EJECT_REQUEST = 3  # _OST source event: ACPI eject request notification
OST_NAMES = {
    0x1: "non-specific failure", 0x2: "unrecognized notify", 0x80: "eject not supported",
    0x81: "device in use", 0x82: "device busy", 0x83: "eject dependency busy",
}


@dataclass(frozen=True)
class PendingUnplug:
    """A ``device_del`` sent, its ``DEVICE_DELETED`` not yet seen."""

    id: str
    cursor: int  # QMP event log position before the device_del
    backend: str | None  # QOM path of its memdev


class QmpHost(Protocol):
    """What the memory devices use of a VM: QMP through its error naming,
    and its liveness check for the bounded waits."""

    timeouts: Timeouts

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                phase: str = "qmp", timeout: float = 60.0) -> Any: ...
    def qmp_session(self) -> QMPSession: ...
    def check_alive(self, serial: str | None = None) -> None: ...
    def serial_tail(self, lines: int = 40) -> str: ...


class MemoryDevices:
    """The memory devices of one VM and their backends.

    :attr:`plugged` holds every device plugged now, in plug order
    (hot-added or cold-plugged): what a migration destination or a saved
    state must recreate.  Backend files memhp named are deleted by
    :meth:`remove_backend_files` (QEMU never deletes them)."""

    def __init__(self, host: QmpHost, devices: tuple[MemoryDevice, ...],
                 runtime_dir: Path | None, logger: logging.Logger) -> None:
        self.host = host
        self.log = logger
        self.runtime_dir = runtime_dir
        self.plugged: dict[str, MemoryDevice] = {d.id: d for d in devices}
        # hugetlbfs mounts per page size for file backends (set by the caller
        # from a harness.host.hugepages.Reservation; else found on the host)
        self.hugetlbfs: dict[int, Path] = {}
        # backend files memhp named (QEMU creates them): deleted after QEMU ends
        self.backend_files: list[Path] = []
        # Directories an untrusted scenario's mem_path may name (the CLI's
        # --allow-mem-path); None: not checked here (trusted callers).
        self.allowed_mem_paths: tuple[Path, ...] | None = None
        self._backend_dir: Path | None = None

    # -- what QEMU reports ---------------------------------------------------
    def info(self) -> dict[str, dict[str, Any]]:
        """QEMU's ``query-memory-devices`` ``data`` of every memory device, by
        id; a PCI one (virtio-mem) also gets its PCI ``slot.function`` from
        ``query-pci`` as ``pci-addr`` (see :func:`harness.qemu.devices.pci_addresses`)."""
        out: dict[str, dict[str, Any]] = {}
        for dev in self.host.execute("query-memory-devices", phase="observe"):
            data = dev.get("data", {})
            if data.get("id"):
                out[str(data["id"])] = dict(data) | {"type": dev.get("type")}
        if any(d["type"] == "virtio-mem" for d in out.values()):
            pci = pci_addresses(self.host.execute("query-pci", phase="observe"))
            for dev_id, data in out.items():
                if dev_id in pci:
                    data[PCI_ADDR_KEY] = pci[dev_id]
        return out

    def query(self) -> tuple[tuple[QemuDimm, ...], tuple[QemuVirtioMem, ...]]:
        """The pc-dimms and the virtio-mem devices of one ``query-memory-devices``
        (each kind reads its own records: harness.devices.<kind>.qemu)."""
        entries = self.host.execute("query-memory-devices", phase="observe")
        return dimm_records(entries), virtio_mem_records(entries)

    # -- plug ------------------------------------------------------------------
    def plug(self, device: MemoryDevice) -> None:
        """``object-add`` the backend and ``device_add`` the device, and
        record both in :attr:`plugged`.  If ``device_add`` fails the backend
        is deleted again, so the VM is left as it was; QEMU's error is
        re-raised verbatim."""
        execute = self.host.execute
        execute("object-add", device.backend.qmp_args(), phase="hotplug")
        try:
            execute("device_add", device.device.qmp_args(), phase="hotplug")
        except BaseException:
            try:
                execute("object-del", {"id": device.backend.id}, phase="hotplug")
            except VMError as cleanup:
                self.log.warning("rollback of %s failed: %s", device.backend.id, cleanup)
            raise
        self.plugged[device.id] = device

    def hot_add(self, dimm_id: str, size: int, node: int, addr: int | None = None,
                backend: BackendSpec = RAM) -> QemuDimm:
        """Hot-add a pc-dimm over ``backend`` (see :meth:`plug`)."""
        backend_id = new_backend_id()
        path = self.backend_path(backend, backend_id)
        obj = backend_object(size, backend, backend_id=backend_id, mem_path=path)
        try:
            self.plug(pc_dimm(dimm_id, obj, node, addr))
        except QMPCommandError:
            if path is not None and Path(path) in self.backend_files:
                self._drop_refused_file(Path(path))
            raise
        for dev in self.query()[0]:
            if dev.id == dimm_id:
                return dev
        raise VMError(f"device_add {dimm_id} succeeded but QEMU does not list it",
                      phase="hotplug")

    def hot_add_virtio_mem(self, vmem_id: str, size: int, node: int, requested: int = 0,
                           **props: Any) -> None:
        """Hot-add a virtio-mem-pci over an anonymous RAM backend of ``size``."""
        self.plug(virtio_mem(vmem_id, ram_backend(size), node, requested, **props))

    # -- unplug ----------------------------------------------------------------
    def request_unplug(self, dimm_id: str) -> PendingUnplug:
        """``device_del`` only: QEMU asks the guest to eject (an ACPI GPE);
        the device stays until the guest has ejected it."""
        qmp = self.host.qmp_session()
        backend = None
        if dimm_id in self.plugged:  # plugged by memhp: its backend is recorded
            backend = self.plugged[dimm_id].backend.id
        else:  # a DIMM memhp did not plug: ask QEMU
            for dev in self.query()[0]:
                if dev.id == dimm_id:
                    backend = dev.memdev
        cursor = qmp.cursor()
        self.host.execute("device_del", {"id": dimm_id}, phase="hotplug")
        return PendingUnplug(dimm_id, cursor, backend)

    def wait_unplugged(self, pending: PendingUnplug, *, timeout: float | None = None
                       ) -> QMPEvent:
        """Wait (bounded) for the ``DEVICE_DELETED`` of a requested unplug
        (it may have come already), then delete the backend.  A failure
        ``_OST`` from the guest raises :class:`HotplugRefused` at once."""
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
                                         serial_tail=self.host.serial_tail(20))
            return False

        event = self.host.qmp_session().wait_event(
            match, since=pending.cursor, timeout=timeout or self.host.timeouts.s("unplug"),
            what=f"DEVICE_DELETED for {dimm_id}", abort=self.host.check_alive,
            phase="hotplug",
        )
        self.plugged.pop(dimm_id, None)
        if pending.backend:
            backend_id = pending.backend.rsplit("/", 1)[-1]
            self.host.execute("object-del", {"id": backend_id}, phase="hotplug")
        return event

    # -- virtio-mem ------------------------------------------------------------
    def resize_virtio_mem(self, vmem_id: str, requested: int) -> None:
        """``qom-set`` the device's ``requested-size``."""
        self.host.execute("qom-set", {"path": f"/machine/peripheral/{vmem_id}",
                                      "property": "requested-size", "value": requested},
                          phase="hotplug")
        if vmem_id in self.plugged:  # a migration destination takes the new size
            rec = self.plugged[vmem_id]
            self.plugged[vmem_id] = replace(
                rec, device=rec.device.with_props(**{"requested-size": requested}))

    def wait_virtio_mem_size(self, vmem_id: str, size: int, *, since: int,
                             timeout: float | None = None) -> bool:
        """Wait (bounded) until the guest has plugged ``size`` bytes of
        ``vmem_id``: QEMU's ``MEMORY_DEVICE_SIZE_CHANGE`` since ``since``
        (a QMP event cursor taken before the action) carrying that size, or
        the size already there (the guest plugs nothing: no event comes).
        False when the wait ended without it (the caller compares what is)."""
        for dev in self.query()[1]:
            if dev.id == vmem_id and dev.size == size:
                return True
        qmp = self.host.qmp_session()

        def match(ev: QMPEvent) -> bool:
            return (ev.name == "MEMORY_DEVICE_SIZE_CHANGE" and ev.data.get("id") == vmem_id
                    and int(ev.data.get("size", -1)) == size)

        try:
            qmp.wait_event(match, since=since,
                           timeout=timeout or self.host.timeouts.s("hot_add"),
                           what=f"MEMORY_DEVICE_SIZE_CHANGE of {vmem_id} to {size}",
                           abort=self.host.check_alive, phase="hotplug")
        except WaitTimeout:
            return False
        return True

    # -- backend files ---------------------------------------------------------
    def backend_path(self, spec: BackendSpec, backend_id: str) -> str | None:
        """The ``mem-path`` of a file backend: ``spec.mem_path`` (a directory
        gets a file of memhp's inside, so the file can be checked and
        removed), else a file in the hugetlbfs of the page size, else a
        file in a private 0700 directory.  None for other kinds."""
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

    def _backends_dir(self) -> Path:
        """A private (0700) directory for file backends, made on first use.
        Not the work dir: after a migration the destination QEMU maps the
        same files while the source's work dir goes (VM.swap_runtime)."""
        if self._backend_dir is None:
            self._backend_dir = private_dir(self.runtime_dir, "backends-")
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

    def remove_backend_files(self) -> None:
        """Backend files memhp named (QEMU never deletes them; on hugetlbfs
        they hold their hugepages until deleted); call after QEMU ended."""
        for path in self.backend_files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                self.log.warning("could not remove backend file %s: %s", path, exc)
        self.backend_files = []
        if self._backend_dir is not None:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None
