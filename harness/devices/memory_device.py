"""What every memory device shares in QEMU: one id space, one
device-memory region and one ``maxmem`` room (hw/mem/memory-device.c,
v7.2.0-v11.1.3), and the host's say on mapping its backend.

A device kind (:mod:`harness.devices`) calls these in its own check
order; each raises :class:`harness.errors.PlanRefused` in QEMU's words.
An operation carries ``kind`` ("pc-dimm") and ``label`` ("DIMM"), the
word QEMU's and memhp's messages use for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.errors import refuse
from harness.units import format_size

if TYPE_CHECKING:
    from harness.model.layout import Layout
    from harness.model.spec import MachineSpec


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def check_addr_align(op: Any, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() (hw/mem/memory-device.c, v7.2.0-v10.0.0)."""
    if addr is not None and addr % align:
        raise refuse("misaligned-addr",
                     f"DIMM {op.id!r}: address {addr:#x} is not {format_size(align)} aligned",
                     f"address must be aligned to 0x{align:x} bytes", value=addr,
                     limit=align, fix=f"use a multiple of {format_size(align)}")


def check_size_align(op: Any, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() in v7.2.0, memory_device_pre_plug() since
    540a1abbf0b2 (v9.0.0; v10.0.0); absent in v8.2.0 (eb1b7c4bd413)."""
    if op.size % align:
        raise refuse("misaligned-size",
                     f"DIMM {op.id!r}: size {op.size} is not a multiple of {format_size(align)}",
                     f"backend memory size must be multiple of 0x{align:x}", value=op.size,
                     limit=align, fix=f"use a multiple of {format_size(align)}")


def check_host(spec: MachineSpec, size: int, backend: str, already: int) -> None:
    """ram_block_add() (softmmu/physmem.c v7.2.0, system/physmem.c v10.0.0)
    when the host kernel refuses the mapping (:mod:`.qemu_rules.host`)."""
    if spec.host is not None and spec.host.refuses(size, already):
        raise refuse(
            "host-memory", f"the host will not map {format_size(size)} for {backend} "
            f"(MemTotal {format_size(spec.host.mem_total)}, SwapTotal "
            f"{format_size(spec.host.swap_total)}, overcommit_memory={spec.host.overcommit})",
            f"cannot set up guest memory '{backend}': Cannot allocate memory", value=size,
            limit=spec.host.mem_total + spec.host.swap_total,
            fix="use less memory, add swap, or set vm.overcommit_memory=1")


# The backend id memhp's VM driver gives a DIMM is not known to the model:
# host refusals at object-add name it with this placeholder.
DIMM_BACKEND = "<backend>"


# What QEMU accepts as an object id (util/id.c id_wellformed()).
_BACKEND_ID = r"[A-Za-z][A-Za-z0-9._-]*"


def same_words(predicted: str, said: str) -> bool:
    """QEMU ``said`` the model's ``predicted`` words, the backend id
    placeholder (:data:`DIMM_BACKEND`) standing for any object id."""
    if DIMM_BACKEND not in predicted:
        return predicted == said
    pattern = _BACKEND_ID.join(re.escape(p) for p in predicted.split(DIMM_BACKEND))
    return re.fullmatch(pattern, said) is not None


def check_unique_id(op: Any,
              devices: Sequence[Any]) -> None:
    """qdev_set_id() (softmmu/qdev-monitor.c v7.2.0, system/qdev-monitor.c
    v10.0.0): a device id is unique among all devices, whatever their kind."""
    if any(d.id == op.id for d in devices):
        what, fix = (("DIMM id", "give every DIMM its own id") if op.kind == "pc-dimm"
                     else ("device id", "give every memory device its own id"))
        raise refuse("duplicate-id", f"{what} {op.id!r} is already in use",
                     f"Duplicate device ID '{op.id}'", value=op.id, limit=None, fix=fix)


def check_room(spec: MachineSpec, op: Any,
                devices: Sequence[Any]) -> None:
    """memory_device_check_addable(): every memory device's region counts."""
    room = spec.maxram - spec.ram_size
    used = sum(d.size for d in devices)
    kind = op.label
    if used + op.size > room:
        raise refuse(
            "maxmem-exceeded",
            f"{kind} {op.id!r} ({format_size(op.size)}) exceeds maxmem: {format_size(used)} of "
            f"{format_size(room)} (maxmem - mem) already in use",
            f"not enough space, currently 0x{used:x} in use of total space for memory "
            f"devices 0x{room:x}", value=op.size, limit=room,
            fix="raise maxmem or use a smaller device")


def find_addr(layout: Layout, devices: Sequence[Any],
               op: Any, explicit: int | None, align: int) -> int:
    """memory_device_get_free_addr(): an explicit address inside the area and
    clear of every memory device, or first fit from the area's start."""
    kind = op.label
    lo, hi = layout.device_base, layout.device_end
    ordered = sorted(devices, key=lambda d: d.addr)
    if explicit is not None:
        if explicit < lo or explicit + op.size > hi:
            raise refuse(
                "addr-outside-region",
                f"{kind} {op.id!r}: [{explicit:#x}, {explicit + op.size:#x}) is outside the "
                f"device-memory region [{lo:#x}, {hi:#x})",
                f"can't add memory device [0x{explicit:x}:0x{op.size:x}], usable range for "
                f"memory devices [0x{lo:x}:0x{hi - lo:x}]", value=explicit, limit=(lo, hi),
                fix="pick an address inside the region (see `memhp model`)")
        for d in ordered:
            if d.addr < explicit + op.size and explicit < d.end:
                raise refuse(
                    "addr-conflict", f"{kind} {op.id!r} at {explicit:#x} overlaps {d.id!r}",
                    f"address range conflicts with memory device id='{d.id}'", value=explicit,
                    limit=(d.addr, d.end), fix="pick a free address or let QEMU place it")
        addr = explicit
    else:
        addr = align_up(lo, align)
        for d in ordered:
            if d.addr < addr + op.size and addr < d.end:
                addr = align_up(d.end, align)
            elif d.addr >= addr + op.size:
                break
        if addr + op.size > hi:
            raise refuse(
                "no-room", f"{kind} {op.id!r} ({format_size(op.size)}) does not fit in the "
                f"device-memory region [{lo:#x}, {hi:#x})",
                "could not find position in guest address space for memory device - memory "
                "fragmented due to alignments", value=op.size, limit=(lo, hi),
                fix="use a smaller DIMM or remove one")
    return addr
