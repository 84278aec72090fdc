"""Placement of DIMMs, QEMU's refusals and the guest kernel's verdicts.

At start-up QEMU refuses, in this order (:func:`_check_spec`; each a
:class:`PlanRefused` with a stable ``kind`` and QEMU's wording in
``qemu_message``; the same in v7.2.0 and v10.0.0):

1. ``-m`` -- hw/core/machine.c ``machine_set_mem()``: maxmem below RAM;
   slots with maxmem equal to RAM;
2. a boot RAM backend the host will not map (:mod:`.qemu_rules.host`);
3. NUMA sizes that do not add up -- hw/core/numa.c
   ``numa_complete_configuration()``;
4. hw/i386/pc.c ``pc_memory_init()``: the max used address beyond
   phys-bits (after the AMD 1 TiB relocation, see :mod:`.layout`); more
   than ACPI_MAX_RAM_SLOTS (256) slots when maxmem > RAM.

For each ``AddDimm`` (:func:`_place`), in this order:

0. the host maps the backend (``object-add``, :mod:`.qemu_rules.host`);
1. the id is not in use (``qdev_set_id()``, softmmu/qdev-monitor.c);
2. a slot is free -- ``pc_dimm_get_free_slot()`` (hw/mem/pc-dimm.c) takes
   the lowest free slot, and fails when no slots were configured (also
   with maxmem but no slots: QEMU starts, and every DIMM is refused);
3. the DIMMs fit in ``maxmem - mem`` -- ``memory_device_check_addable()``
   (hw/mem/memory-device.c);
4. the explicit address and the size are multiples of the backend's
   alignment (2 MiB for RAM backends on an x86_64 Linux host); the order
   of the two checks, and whether the size is checked at all, depends on
   the QEMU version (``QemuRules.size_check``, :mod:`.qemu_rules`);
5. an address: an explicit 0 means none (``memory_device_pre_plug()``
   passes ``!addr ? NULL : &addr``, v7.2.0 and v10.0.0); an explicit one
   must lie in the device-memory region and not overlap another DIMM;
   otherwise first fit from the region's start, stepping past each DIMM
   (sorted by address) to ALIGN_UP(its end, align);
6. the node exists -- ``pc_dimm_realize()`` (after pre-plug).

Cold-plugged DIMMs (``MachineSpec.coldplug``, ``-device pc-dimm`` on the
command line) go through the same checks and placement, before any
hot-add and in command-line order: QEMU realizes ``-device`` options one
by one in that order once the machine (and its device-memory region)
exists -- softmmu/vl.c ``qemu_create_cli_devices()`` (v7.2.0; system/vl.c
in v10.0.0) after ``qemu_init_board()``; ``pc_dimm_pre_plug()`` and
``memory_device_pre_plug()`` see only the DIMMs realized before.  They are
the state at boot (``Prediction.boot``); a refused one has ``step`` None
and ``coldplug`` True (QEMU refuses to start, prefixing its message with
the ``-device`` option).

QEMU then plugs the DIMM; the guest kernel adds it only if its start and
size are multiples of the memory block size (``check_hotplug_memory_range()``
in mm/memory_hotplug.c): otherwise the DIMM is placed but rejected by the
guest (``guest_accepts=False`` with the reason), and, since QEMU aligns
automatic placement to 2 MiB only, the next automatically placed DIMM can
start off a block boundary as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import PlanRefused
from harness.model.layout import Layout, compute_layout
from harness.model.spec import ACPI_MAX_RAM_SLOTS, AddDimm, MachineSpec, Operation, RemoveDimm
from harness.units import format_size


@dataclass(frozen=True)
class PlacedDimm:
    id: str
    addr: int
    size: int
    node: int
    slot: int
    blocks: tuple[int, ...]
    guest_accepts: bool
    reason: str | None = None

    @property
    def end(self) -> int:
        return self.addr + self.size

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "addr": self.addr, "size": self.size,
                             "node": self.node, "slot": self.slot, "blocks": list(self.blocks),
                             "guest_accepts": self.guest_accepts}
        if not self.guest_accepts:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class NodeTotals:
    node: int
    boot_bytes: int
    hotplug_bytes: int  # bytes of DIMMs the guest accepts, once online

    @property
    def bytes_after(self) -> int:
        return self.boot_bytes + self.hotplug_bytes

    def to_json(self) -> dict[str, int]:
        return {"node": self.node, "boot_bytes": self.boot_bytes,
                "hotplug_bytes": self.hotplug_bytes, "bytes_after": self.bytes_after}


@dataclass(frozen=True)
class StepPrediction:
    op: Operation | None
    dimms: tuple[PlacedDimm, ...]
    nodes: tuple[NodeTotals, ...]


@dataclass(frozen=True)
class Prediction:
    spec: MachineSpec
    layout: Layout
    boot: StepPrediction
    steps: tuple[StepPrediction, ...]

    @property
    def final(self) -> StepPrediction:
        return self.steps[-1] if self.steps else self.boot

    def to_json(self) -> dict[str, Any]:
        final = self.final
        lay = self.layout
        return {
            "machine": self.spec.machine,
            "machine_type": self.spec.machine_name,
            "qemu_version": ".".join(map(str, self.spec.qemu_version)),
            "rules": {
                "machine_version": ".".join(map(str, self.spec.rules.machine_version)),
                "size_check": self.spec.rules.size_check,
                "enforce_amd_1tb_hole": self.spec.rules.enforce_amd_1tb_hole,
                "sources": list(self.spec.rules.sources),
            },
            "cpu": {"vendor": self.spec.cpu.vendor, "phys_bits": self.spec.cpu.phys_bits,
                    "model": self.spec.cpu.model},
            "layout": {
                "below_4g": lay.below_4g, "above_4g": lay.above_4g,
                "device_base": lay.device_base, "device_size": lay.device_size,
                "boot_mem_end": lay.boot_mem_end, "dimm_align": lay.dimm_align,
                "above_4g_start": lay.above_4g_start, "max_used_gpa": lay.max_used_gpa,
                "why": lay.why,
            },
            "block_size": lay.block_size,
            "dimms": [d.to_json() for d in final.dimms],
            "nodes": [n.to_json() for n in final.nodes],
        }


def _refuse(kind: str, message: str, qemu_message: str, *, value: object, limit: object,
            fix: str) -> PlanRefused:
    err = PlanRefused(kind, message, value=value, limit=limit, fix=fix)
    err.qemu_message = qemu_message  # type: ignore[attr-defined]
    return err


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _check_addr_align(op: AddDimm, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() (hw/mem/memory-device.c, v7.2.0-v10.0.0)."""
    if addr is not None and addr % align:
        raise _refuse("misaligned-addr",
                      f"DIMM {op.id!r}: address {addr:#x} is not {format_size(align)} aligned",
                      f"address must be aligned to 0x{align:x} bytes", value=addr,
                      limit=align, fix=f"use a multiple of {format_size(align)}")


def _check_size_align(op: AddDimm, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() in v7.2.0, memory_device_pre_plug() since
    540a1abbf0b2 (v9.0.0; v10.0.0); absent in v8.2.0 (eb1b7c4bd413)."""
    if op.size % align:
        raise _refuse("misaligned-size",
                      f"DIMM {op.id!r}: size {op.size} is not a multiple of {format_size(align)}",
                      f"backend memory size must be multiple of 0x{align:x}", value=op.size,
                      limit=align, fix=f"use a multiple of {format_size(align)}")


def _check_host(spec: MachineSpec, size: int, backend: str, already: int) -> None:
    """ram_block_add() (softmmu/physmem.c v7.2.0, system/physmem.c v10.0.0)
    when the host kernel refuses the mapping (:mod:`.qemu_rules.host`)."""
    if spec.host is not None and spec.host.refuses(size, already):
        raise _refuse(
            "host-memory", f"the host will not map {format_size(size)} for {backend} "
            f"(MemTotal {format_size(spec.host.mem_total)}, SwapTotal "
            f"{format_size(spec.host.swap_total)}, overcommit_memory={spec.host.overcommit})",
            f"cannot set up guest memory '{backend}': Cannot allocate memory", value=size,
            limit=spec.host.mem_total + spec.host.swap_total,
            fix="use less memory, add swap, or set vm.overcommit_memory=1")


# The backend id memhp's VM driver gives a DIMM is not known to the model:
# host refusals at object-add name it with this placeholder.
DIMM_BACKEND = "<backend>"


def _place(spec: MachineSpec, layout: Layout, dimms: list[PlacedDimm], op: AddDimm
           ) -> PlacedDimm:
    _check_host(spec, op.size, DIMM_BACKEND, spec.ram_size + sum(d.size for d in dimms))
    if any(d.id == op.id for d in dimms):
        raise _refuse("duplicate-id", f"DIMM id {op.id!r} is already in use",
                      f"Duplicate device ID '{op.id}'", value=op.id, limit=None,
                      fix="give every DIMM its own id")
    if spec.slots == 0:
        raise _refuse("hotplug-disabled",
                      "the machine has no DIMM slots (started without slots/maxmem)",
                      "no slots where allocated, please specify the 'slots' option",
                      value=op.id, limit=0, fix="start the VM with -m SIZE,slots=N,maxmem=SIZE")
    used_slots = {d.slot for d in dimms}
    free = [s for s in range(spec.slots) if s not in used_slots]
    if not free:
        raise _refuse("slots-exhausted",
                      f"DIMM {op.id!r}: all {spec.slots} slots are in use",
                      "no free slots available", value=len(dimms) + 1, limit=spec.slots,
                      fix="raise slots= or remove a DIMM first")
    room = spec.maxram - spec.ram_size
    used = sum(d.size for d in dimms)
    if used + op.size > room:
        raise _refuse(
            "maxmem-exceeded",
            f"DIMM {op.id!r} ({format_size(op.size)}) exceeds maxmem: {format_size(used)} of "
            f"{format_size(room)} (maxmem - mem) already in use",
            f"not enough space, currently 0x{used:x} in use of total space for memory "
            f"devices 0x{room:x}", value=op.size, limit=room,
            fix="raise maxmem or use a smaller DIMM")
    align = layout.dimm_align
    explicit = op.addr if op.addr else None  # address 0 = no address
    checks = {"after-addr": (_check_addr_align, _check_size_align),
              "before-addr": (_check_size_align, _check_addr_align),
              "none": (_check_addr_align,)}[spec.rules.size_check]
    for check in checks:
        check(op, explicit, align)
    lo, hi = layout.device_base, layout.device_end
    ordered = sorted(dimms, key=lambda d: d.addr)
    if explicit is not None:
        if explicit < lo or explicit + op.size > hi:
            raise _refuse(
                "addr-outside-region",
                f"DIMM {op.id!r}: [{explicit:#x}, {explicit + op.size:#x}) is outside the "
                f"device-memory region [{lo:#x}, {hi:#x})",
                f"can't add memory device [0x{explicit:x}:0x{op.size:x}], usable range for "
                f"memory devices [0x{lo:x}:0x{hi - lo:x}]", value=explicit, limit=(lo, hi),
                fix="pick an address inside the region (see `memhp model`)")
        for d in ordered:
            if d.addr < explicit + op.size and explicit < d.end:
                raise _refuse(
                    "addr-conflict", f"DIMM {op.id!r} at {explicit:#x} overlaps DIMM {d.id!r}",
                    f"address range conflicts with memory device id='{d.id}'", value=explicit,
                    limit=(d.addr, d.end), fix="pick a free address or let QEMU place it")
        addr = explicit
    else:
        addr = _align_up(lo, align)
        for d in ordered:
            if d.addr < addr + op.size and addr < d.end:
                addr = _align_up(d.end, align)
            elif d.addr >= addr + op.size:
                break
        if addr + op.size > hi:
            raise _refuse(
                "no-room", f"DIMM {op.id!r} ({format_size(op.size)}) does not fit in the "
                f"device-memory region [{lo:#x}, {hi:#x})",
                "could not find position in guest address space for memory device - memory "
                "fragmented due to alignments", value=op.size, limit=(lo, hi),
                fix="use a smaller DIMM or remove one")
    if op.node >= spec.node_count:
        raise _refuse(
            "unknown-node", f"DIMM {op.id!r}: node {op.node} does not exist "
            f"({spec.node_count} node(s))",
            f"'DIMM property node has value {op.node}' which exceeds the number of numa "
            f"nodes: {spec.node_count}", value=op.node, limit=spec.node_count - 1,
            fix=f"use a node between 0 and {spec.node_count - 1}")
    bs = layout.block_size
    if addr % bs or op.size % bs:
        what = "address" if addr % bs else "size"
        reason = (f"{what} not a multiple of the {format_size(bs)} memory block size: Linux "
                  "refuses the range (check_hotplug_memory_range)")
        return PlacedDimm(op.id, addr, op.size, op.node, free[0], (), False, reason)
    blocks = tuple(range(addr // bs, (addr + op.size) // bs))
    return PlacedDimm(op.id, addr, op.size, op.node, free[0], blocks, True)


def _totals(spec: MachineSpec, dimms: Sequence[PlacedDimm]) -> tuple[NodeTotals, ...]:
    return tuple(
        NodeTotals(n, boot, sum(d.size for d in dimms if d.node == n and d.guest_accepts))
        for n, boot in enumerate(spec.node_boot_bytes())
    )


def _check_spec(spec: MachineSpec, layout: Layout) -> None:
    """QEMU's start-up refusals, in QEMU's order (module docstring)."""
    ram, maxmem = spec.ram_size, spec.maxmem
    if maxmem and maxmem < ram:
        raise _refuse(
            "maxmem-below-ram", f"maxmem {format_size(maxmem)} is below the boot memory "
            f"{format_size(ram)}",
            f"invalid value of maxmem: maximum memory size (0x{maxmem:x}) must be at least "
            f"the initial memory size (0x{ram:x})", value=maxmem, limit=ram, fix="raise maxmem")
    if spec.slots and maxmem == ram:
        raise _refuse(
            "maxmem-equals-ram", f"slots={spec.slots} but maxmem equals the boot memory, so "
            "there is no room for DIMMs",
            f"invalid value of maxmem: memory slots were specified but maximum memory size "
            f"(0x{maxmem:x}) is equal to the initial memory size (0x{ram:x})", value=maxmem,
            limit=ram, fix="raise maxmem above the boot memory")
    if spec.slots and not maxmem:
        raise _refuse("slots-without-maxmem", "slots= needs maxmem=",
                      "slots specified but no max-size", value=spec.slots, limit=None,
                      fix="give maxmem= with slots=, or neither")
    committed = 0
    for i, size in enumerate(spec.numa or (ram,)):
        if size:
            _check_host(spec, size, f"mem{i}" if spec.numa else "pc.ram", committed)
            committed += size
    if spec.numa and sum(spec.numa) != ram:
        raise _refuse(
            "numa-mismatch",
            f"NUMA node sizes {'+'.join(format_size(n) for n in spec.numa)} do not add up to "
            f"the boot memory {format_size(ram)}",
            f"total memory for NUMA nodes (0x{sum(spec.numa):x}) should equal RAM size "
            f"(0x{ram:x})", value=spec.numa, limit=ram,
            fix="make the node sizes sum to -m")
    limit = (1 << layout.phys_bits) - 1
    if layout.max_used_gpa > limit:
        raise _refuse(
            "phys-bits", f"the highest guest-physical address the machine uses "
            f"({layout.max_used_gpa:#x}: RAM, device memory and the 64-bit PCI hole) is beyond "
            f"what {layout.phys_bits} phys-bits address",
            f"Address space limit 0x{limit:x} < 0x{layout.max_used_gpa:x} phys-bits too low "
            f"({layout.phys_bits})", value=layout.max_used_gpa, limit=limit,
            fix="use a smaller maxmem or fewer slots, or more phys-bits (-cpu ...,phys-bits=N)")
    if ram < spec.maxram and spec.slots > ACPI_MAX_RAM_SLOTS:
        raise _refuse(
            "too-many-slots", f"slots={spec.slots} exceeds ACPI_MAX_RAM_SLOTS "
            f"({ACPI_MAX_RAM_SLOTS})", f"unsupported amount of memory slots: {spec.slots}",
            value=spec.slots, limit=ACPI_MAX_RAM_SLOTS,
            fix=f"use at most {ACPI_MAX_RAM_SLOTS} slots")


def predict(spec: MachineSpec, ops: Sequence[Operation]) -> Prediction:
    """Predict every step of ``ops`` on ``spec``; raises PlanRefused (with
    ``.step``) at the first operation QEMU would refuse."""
    layout = compute_layout(spec)
    _check_spec(spec, layout)
    dimms: list[PlacedDimm] = []
    for cold_op in spec.coldplug:
        try:
            dimms.append(_place(spec, layout, dimms, cold_op))
        except PlanRefused as exc:
            exc.step = None  # type: ignore[attr-defined]
            exc.coldplug = True  # type: ignore[attr-defined]
            raise
    cold = tuple(sorted(dimms, key=lambda d: d.addr))
    boot = StepPrediction(None, cold, _totals(spec, cold))
    steps: list[StepPrediction] = []
    for i, op in enumerate(ops):
        try:
            if isinstance(op, AddDimm):
                dimms.append(_place(spec, layout, dimms, op))
            elif isinstance(op, RemoveDimm):
                if not any(d.id == op.id for d in dimms):
                    raise _refuse("unknown-dimm", f"no DIMM {op.id!r} to remove",
                                  f"Device '{op.id}' not found", value=op.id, limit=None,
                                  fix="remove a DIMM an earlier step added")
                dimms = [d for d in dimms if d.id != op.id]
            else:  # pragma: no cover - typed away
                raise TypeError(op)
        except PlanRefused as exc:
            exc.step = i  # type: ignore[attr-defined]
            raise
        ordered = tuple(sorted(dimms, key=lambda d: d.addr))
        steps.append(StepPrediction(op, ordered, _totals(spec, ordered)))
    return Prediction(spec, layout, boot, tuple(steps))


def expected_zone(policy: str) -> str:
    """The zone a block lands in when onlined with ``policy`` by memhp.

    ``online_movable`` -> Movable; ``online_kernel`` -> Normal; ``online``
    -> the kernel's default, which for memory hot-added beyond a node's boot
    memory is the kernel zone, Normal (``default_zone_for_pfn()`` in
    mm/memory_hotplug.c picks the movable zone only when the range already
    lies inside ZONE_MOVABLE's span, or with ``movable_node``/the
    ``auto-movable`` online policy, neither of which memhp sets).
    """
    zones = {"online_movable": "Movable", "online_kernel": "Normal", "online": "Normal"}
    try:
        return zones[policy]
    except KeyError:
        raise ValueError(f"unknown online policy {policy!r}") from None
