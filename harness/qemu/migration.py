"""Live migration of a running :class:`~harness.qemu.vm.VM` to a new QEMU.

The destination is the source's machine exactly: the same ``VMConfig``
(machine, memory, NUMA, boot, fw_cfg) plus every memory device plugged at
the source as ``-object``/``-device`` options, each pinned to what QEMU
chose for it at plug time (:meth:`MemoryDevice.pinned`: a pc-dimm's addr
and slot; a virtio-mem's memaddr, block-size, requested-size and PCI
slot), and ``-incoming unix:<its 0700 work dir>/migrate.sock``.  It has
its own work dir (QMP, serial log) and its own forwarded SSH port on
127.0.0.1, and logs in with the source's keys (it runs the same guest, so
the pinned host key does not change).

:func:`migrate_vm` migrates, waits (bounded) on the ``MIGRATION`` events of
both sides, reads the figures from the source's ``query-migrate``, moves the
SSH session to the destination and swaps the two QEMU processes inside the
VM object, so everything later (steps, observation, stop) runs on the
destination; the source is ended through the VM class's own stop logic.
If anything fails before the swap, the destination is stopped and the
source keeps running (QEMU resumes a source whose migration failed).

QEMU facts used (QEMU 7.2 ``migration/migration.c``; same in 10.0):
``migrate_generate_event()`` sends ``MIGRATION`` only with the ``events``
capability on; ``process_incoming_migration_bh()`` starts the destination's
vCPUs (or keeps the source's paused run state) *before* it sets
``completed``; ``fill_source_migration_info()`` reports ``total-time``,
``downtime``, ``setup-time`` (ms) and ``ram.transferred`` (bytes).  The
default ``max-bandwidth`` (32 MiB/s in 7.2, ``MAX_THROTTLE``) throttles a
local Unix socket needlessly, so it is raised.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import VMError, WaitTimeout
from harness.qemu.devices import MemoryDevice
from harness.qemu.qmp import QMPEvent

if TYPE_CHECKING:
    from harness.qemu.vm import VM

log = logging.getLogger("harness.migration")

# Bytes per second; a local Unix socket is limited by the CPU, not this.
MAX_BANDWIDTH = 8 << 30
_END_STATES = ("completed", "failed", "cancelled")
_serial = itertools.count(1)


@dataclass(frozen=True)
class MigrationStats:
    """What the source's ``query-migrate`` reports for a completed migration,
    and the wall time memhp measured around it."""

    total_time_ms: int  # QEMU: from migrate to completed
    downtime_ms: int  # QEMU: vCPUs stopped (source stop to destination start)
    setup_time_ms: int
    transferred_bytes: int  # ram.transferred: bytes sent on the wire for RAM
    ram_total_bytes: int  # guest RAM the migration covered
    duplicate_pages: int  # zero pages sent as a flag only
    normal_bytes: int  # pages sent in full
    dirty_sync_count: int  # dirty-bitmap passes (1 = nothing re-dirtied)
    wall_s: float  # memhp: migrate command to the destination running

    @classmethod
    def from_query(cls, info: dict[str, Any], wall_s: float) -> MigrationStats:
        ram = info.get("ram", {})
        return cls(
            total_time_ms=int(info.get("total-time", 0)),
            downtime_ms=int(info.get("downtime", 0)),
            setup_time_ms=int(info.get("setup-time", 0)),
            transferred_bytes=int(ram.get("transferred", 0)),
            ram_total_bytes=int(ram.get("total", 0)),
            duplicate_pages=int(ram.get("duplicate", 0)),
            normal_bytes=int(ram.get("normal-bytes", 0)),
            dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
            wall_s=wall_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "total_time_ms": self.total_time_ms, "downtime_ms": self.downtime_ms,
            "setup_time_ms": self.setup_time_ms, "transferred_bytes": self.transferred_bytes,
            "ram_total_bytes": self.ram_total_bytes, "duplicate_pages": self.duplicate_pages,
            "normal_bytes": self.normal_bytes, "dirty_sync_count": self.dirty_sync_count,
            "wall_s": round(self.wall_s, 4),
        }


def destination_devices(devices: dict[str, MemoryDevice],
                        reported: dict[str, dict[str, Any]]) -> tuple[MemoryDevice, ...]:
    """Every plugged device, in plug order, pinned to what QEMU reports for
    it (pure: ``reported`` is ``VM.memory_device_info()`` of the source)."""
    out = []
    for dev_id, dev in devices.items():
        if dev_id not in reported:
            raise VMError(f"{dev_id} is recorded as plugged but QEMU does not list it in "
                          "query-memory-devices; the destination cannot be built",
                          phase="migrate")
        try:
            out.append(dev.pinned(reported[dev_id]))
        except ValueError as exc:
            raise VMError(str(exc), phase="migrate") from exc
    extra = sorted(set(reported) - set(devices))
    if extra:
        raise VMError(f"QEMU lists memory device(s) {', '.join(extra)} that memhp did not "
                      "plug; the destination cannot recreate them", phase="migrate")
    return tuple(out)


def destination_name(name: str) -> str:
    """``vm-1-0`` -> ``vm-1-0.m1``; ``vm-1-0.m1`` -> ``vm-1-0.m2`` (a new
    name per migration, so artifacts of both sides are kept apart)."""
    root = re.sub(r"\.m\d+$", "", name)
    return f"{root}.m{next(_serial)}"


def _status_event(status: str) -> Any:
    def match(ev: QMPEvent) -> bool:
        return ev.name == "MIGRATION" and ev.data.get("status") in (status, "failed",
                                                                    "cancelled")
    return match


def _enable_events(vm: VM) -> None:
    vm.execute("migrate-set-capabilities",
               {"capabilities": [{"capability": "events", "state": True}]}, phase="migrate")


def migrate(src: VM, dst: VM) -> MigrationStats:
    """Migrate ``src`` into the started ``dst`` (listening on its socket) and
    wait, bounded, until both report ``completed``.  On a failure or a
    timeout the migration is cancelled and the error raised; ``src`` then
    runs on."""
    assert dst.paths is not None
    src_qmp, dst_qmp = src.qmp_session(), dst.qmp_session()
    timeout = src.timeouts.s("migrate")
    _enable_events(dst)
    _enable_events(src)
    src.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH}, phase="migrate")
    src_cursor, dst_cursor = src_qmp.cursor(), dst_qmp.cursor()

    def both_alive() -> None:
        src.check_alive()
        dst.check_alive()

    t0 = time.monotonic()
    src.execute("migrate", {"uri": f"unix:{dst.paths.migration_socket}"}, phase="migrate")
    try:
        ev = src_qmp.wait_event(_status_event("completed"), since=src_cursor, timeout=timeout,
                                what="MIGRATION completed on the source",
                                abort=both_alive,
                                phase="migrate")
        if ev.data["status"] != "completed":
            raise VMError(f"migration {ev.data['status']}: the source says "
                          f"{_error_desc(src)!r}; the destination's QEMU said:\n"
                          f"{_log_tail(dst)}", phase="migrate")
        left = max(timeout - (time.monotonic() - t0), 1.0)
        ev = dst_qmp.wait_event(_status_event("completed"), since=dst_cursor, timeout=left,
                                what="MIGRATION completed on the destination",
                                abort=dst.check_alive, phase="migrate")
        if ev.data["status"] != "completed":
            raise VMError(f"migration {ev.data['status']} on the destination; its QEMU "
                          f"said:\n{_log_tail(dst)}", phase="migrate")
    except (WaitTimeout, VMError):
        with contextlib.suppress(VMError):
            src.execute("migrate_cancel", phase="migrate")
        raise
    wall = time.monotonic() - t0
    return MigrationStats.from_query(src.execute("query-migrate", phase="migrate"), wall)


def _log_tail(vm: VM, lines: int = 20) -> str:
    text = vm.qemu_output().strip()
    return "\n".join(text.splitlines()[-lines:]) or "(nothing)"


def _error_desc(vm: VM) -> str:
    with contextlib.suppress(VMError):
        info = vm.execute("query-migrate", phase="migrate")
        return str(info.get("error-desc", "no error-desc from query-migrate"))
    return "query-migrate failed too"


def migrate_vm(vm: VM, reported: dict[str, dict[str, Any]] | None = None) -> MigrationStats:
    """Migrate ``vm`` to a new QEMU and continue on it (see the module doc).

    The destination's run state is the source's (running, or paused when
    a ``stop`` preceded the migration); SSH is reconnected only when the
    guest runs.  ``reported``: the source's ``VM.memory_device_info()`` when
    the caller has just read it (else it is read here).
    """
    from harness.qemu.vm import VM as _VM

    if reported is None:
        reported = vm.memory_device_info()
    devices = destination_devices(vm.memory_devices, reported)
    dst: _VM = vm.incoming_twin(destination_name(vm.config.name), devices)
    completed = False
    try:
        dst.launch()
        stats = migrate(vm, dst)
        completed = True
        dst.paused = vm.paused
        if not vm.paused:
            dst.connect_ssh()
    except BaseException:
        dst.mark_failed()
        dst.stop()
        if completed and not vm.paused:
            # The migration completed but the destination cannot be used
            # (no SSH): the source sits in postmigrate with the guest's
            # state as it left; `cont` lets it run on, as the error says,
            # instead of every later step meeting a stopped guest.
            with contextlib.suppress(Exception):
                vm.execute("cont", phase="migrate")
        raise
    vm.swap_runtime(dst)
    # dst now holds the source, whose guest no longer runs (postmigrate):
    # drop its SSH session unused, then quit it (or kill it) by its PID.
    try:
        with contextlib.suppress(Exception):
            dst.disconnect_ssh()
    finally:
        dst.stop()
    log.info("%s migrated in %.0f ms (%d bytes, downtime %d ms)", vm.config.name,
             stats.total_time_ms, stats.transferred_bytes, stats.downtime_ms)
    return stats
