"""virtio-mem's model: QEMU's checks and placement of a virtio-mem-pci
(:mod:`.rules`, read per QEMU version), its resize and its unplug; what
the guest's driver does with it is :mod:`.driver`.

A virtio-mem shares the device-memory area, the id space and the
``maxmem`` room with the DIMMs (every memory device counts with its whole
region, :mod:`harness.devices.memory_device`), but takes no slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from harness.devices import memory_device as md
from harness.devices.virtio_mem import rules as vm_rules
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.devices.virtio_mem.rules import PlacedVirtioMem
from harness.errors import refuse
from harness.model.layout import Layout
from harness.model.plan import Plan
from harness.model.spec import MachineSpec

KIND = "virtio-mem"


def _place_vmem(spec: MachineSpec, layout: Layout, devices: Sequence[Any],
                op: AddVirtioMem) -> PlacedVirtioMem:
    """A virtio-mem-pci device, in QEMU's order (:mod:`.rules`)."""
    rules = vm_rules.vmem_rules_for(spec.qemu_version)
    md.check_host(spec, op.size, md.DIMM_BACKEND, spec.ram_size + sum(d.size for d in devices))
    vm_rules.check_bus(op, spec.machine_model)
    md.check_unique_id(op, devices)
    block_size = vm_rules.check_properties(op, rules)
    vm_rules.check_device_memory(op, rules, spec.ram_size < spec.maxram)
    md.check_room(spec, op, devices)
    align = vm_rules.alignment(block_size)
    explicit = op.addr if op.addr else None
    if spec.rules.size_check == "before-addr":  # 9.0+: the region's own alignment
        md.check_size_align(op, explicit, vm_rules.BACKEND_ALIGN)  # type: ignore[arg-type]
    md.check_addr_align(op, explicit, align)  # type: ignore[arg-type]
    if rules.memdev_size_check == "pre-plug":
        md.check_size_align(op, explicit, align)  # type: ignore[arg-type]
    addr = md.find_addr(layout, devices, op, explicit, align)
    inaccessible = (op.unplugged_inaccessible if op.unplugged_inaccessible is not None
                    else vm_rules.default_unplugged_inaccessible(
                        rules, spec.rules.machine_version))
    vm_rules.check_realize(op, rules, block_size, spec.node_count, bool(spec.numa),
                           inaccessible)
    return PlacedVirtioMem(op.id, addr, op.size, op.node, block_size, op.requested,
                           inaccessible)


def _resize(plan: Plan, op: ResizeVirtioMem) -> None:
    """qom-set requested-size: QEMU's checks, then the new request."""
    for v in plan.of(KIND):
        if v.id == op.id:
            vm_rules.check_resize(v, op.requested)
            plan.replace(v, replace(v, requested=op.requested))
            return
    raise refuse("unknown-device", f"no virtio-mem {op.id!r} to resize",
                 f"Device '{op.id}' not found", value=op.id, limit=None,
                 fix="resize a virtio-mem an earlier step added")


class VirtioMemModel:
    """virtio-mem-pci (hw/virtio/virtio-mem.c) as
    :class:`harness.devices.base.DeviceModel`."""

    kind = KIND
    # QEMU's record (QemuVirtioMem) against the model's expectation
    # (harness.devices.virtio_mem.qemu.expected): ``size`` is the guest
    # driver's doing, as its model predicts
    compared = ("addr", "max_size", "block_size", "node", "requested_size", "size")

    def apply(self, plan: Plan, op: AddVirtioMem | ResizeVirtioMem) -> None:
        if isinstance(op, ResizeVirtioMem):
            _resize(plan, op)
        else:
            plan.devices.append(_place_vmem(plan.spec, plan.layout, plan.devices, op))

    def unplug(self, plan: Plan, device: PlacedVirtioMem) -> None:
        vm_rules.check_unplug(device, vm_rules.vmem_rules_for(plan.spec.qemu_version))
        plan.replace(device, None)


MODEL = VirtioMemModel()
