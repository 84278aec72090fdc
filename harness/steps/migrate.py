"""The migrate step: live-migrate the VM to a new QEMU and go on there.

:func:`harness.qemu.migration.migrate_vm` builds the destination from the
source's configuration and every plugged device (pinned), migrates and
swaps; later steps act on the destination.  Here the step checks what only
the act can see: QEMU's view of every memory device on the destination is
the source's, field for field (the Runner's observation then compares the
destination with the model, as after any step).  The figures go into the
step's latencies and its observed JSON (``migration``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.qemu.migration import migrate_vm
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner

# query-memory-devices fields both sides must agree on ("hotplugged" differs
# by design: the destination creates every device from its command line);
# a pc-dimm has addr and slot, a virtio-mem memaddr, requested-size (the
# current request), size (what the guest has plugged: migrated with the
# plugged bitmap), max-size, block-size and its PCI address (``pci-addr``,
# memhp's key from query-pci).  A field neither side has agrees.
SAME_ON_BOTH_SIDES = ("addr", "slot", "node", "size", "memdev", "type", "memaddr",
                      "requested-size", "max-size", "block-size", "pci-addr")


def compare_sides(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
                  ) -> list[Mismatch]:
    """Source vs destination ``query-memory-devices`` (by id)."""
    out: list[Mismatch] = []
    for dev_id in sorted(before.keys() | after.keys()):
        b, a = before.get(dev_id), after.get(dev_id)
        if b is None or a is None:
            out.append(Mismatch("present on destination", dev_id, b is not None,
                                a is not None, "qemu"))
            continue
        for key in SAME_ON_BOTH_SIDES:
            if b.get(key) != a.get(key):
                out.append(Mismatch(f"destination {key}", dev_id, b.get(key), a.get(key),
                                    "qemu"))
    return out


def act_migrate(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    vm = runner.vm
    before = vm.memory_device_info()
    source_pid = vm.pid
    stats = migrate_vm(vm, before)
    after = vm.memory_device_info()
    lat["migrate_total_s"] = stats.total_time_ms / 1000
    lat["migrate_downtime_s"] = stats.downtime_ms / 1000
    lat["migrate_wall_s"] = stats.wall_s
    runner.step_notes["migration"] = stats.to_json() | {
        "source_pid": source_pid, "destination_pid": vm.pid}
    runner.steps_done.append(step)
    if runner.stale_unplugs:
        # is_removing is not in vmstate_memhp_sts (hw/acpi/memory_hotplug.c
        # v7.2.0): the destination does not know of the request any more.
        runner.step_notes["stale_unplugs_forgotten"] = sorted(runner.stale_unplugs)
        runner.stale_unplugs.clear()
    return compare_sides(before, after)
