"""The migrate step: live-migrate the VM to a new QEMU and go on there.

:func:`harness.qemu.migration.migrate_vm` builds the destination from the
source's configuration and every plugged device (pinned), migrates and
swaps; later steps act on the destination.  Here the step checks what only
the act can see: QEMU's view of every memory device on the destination is
the source's, field for field (the runner's observation then compares the
destination with the model, as after any step).  The figures go into the
step's latencies and its observed JSON (``migration``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.devices import KINDS, live_of
from harness.errors import UsageError
from harness.qemu.migration import migrate_vm
from harness.run.steps.base import PlanCheck
from harness.run.steps.lifecycle import _FlagStep
from harness.verify import Mismatch, compare_records

if TYPE_CHECKING:
    from harness.run.context import StepContext

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
    def records(side: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": dev_id} | {k: v for k, v in rec.items() if k != "id"}
                for dev_id, rec in side.items()]

    return compare_records(records(before), records(after), SAME_ON_BOTH_SIDES,
                           what="destination {}", present="present on destination",
                           hex_fields=())


@dataclass(frozen=True)
class MigrateStep(_FlagStep):
    """``migrate = true``: live-migrate to a new QEMU (same machine, every
    plugged device pinned); later steps run on the destination."""

    action: ClassVar[str] = "migrate"
    text: ClassVar[str] = "migrate to a new QEMU"

    def check(self, plan: PlanCheck) -> None:
        where = f"{plan.where} (migrate)"
        if plan.reset_paused:
            raise UsageError(f"{where}: the machine was reset while paused and has not "
                             "booted", value=self.action, fix="resume before migrating")
        if plan.pending:
            raise UsageError(f"{where}: the unplug of {', '.join(plan.pending)} is pending, "
                             "and QEMU does not migrate an unplug request", value=plan.pending,
                             fix="resume (or reset) before migrating")
        super().check(plan)
        if plan.resized_paused:
            # The config-change interrupt raised while paused would have to
            # travel in the interrupt controller's state: not checked live.
            raise UsageError(f"{where}: the resize of {', '.join(plan.resized_paused)} while "
                             "paused has not reached the guest yet; migrating it is not "
                             "modelled", value=plan.resized_paused, fix="resume before migrating")

    def act(self, ctx: StepContext) -> list[Mismatch]:
        vm = ctx.vm
        before = vm.memory_device_info()
        source_pid = vm.pid
        stats = migrate_vm(vm, before)
        after = vm.memory_device_info()
        ctx.lat["migrate_total_s"] = stats.total_time_ms / 1000
        ctx.lat["migrate_downtime_s"] = stats.downtime_ms / 1000
        ctx.lat["migrate_wall_s"] = stats.wall_s
        ctx.notes["migration"] = stats.to_json() | {
            "source_pid": source_pid, "destination_pid": vm.pid}
        for kind in KINDS:
            live_of(kind).after_migrate(ctx)
        return compare_sides(before, after)
