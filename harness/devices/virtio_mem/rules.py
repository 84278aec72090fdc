"""QEMU's side of virtio-mem: placement, defaults and refusals, per version.

A ``virtio-mem-pci`` device maps its whole memory backend (its
``max-size``) into the device-memory area, like a pc-dimm, and the guest
plugs parts of it in device blocks when ``requested-size`` changes.
Placement and refusals (QEMU's words), in the order QEMU checks them --
the order below was read in the sources and checked on the real
QEMU 7.2.x (Debian 12) and 10.0.2 (bookworm-backports) binaries:

0. ``qdev_device_add_from_qdict()`` (softmmu/qdev-monitor.c v7.2.0,
   system/ in v10.0.0): the bus must take hot-plugged devices -- on q35 a
   PCI device without ``bus=`` lands on the PCIe root bus, which does not:
   ``Bus 'pcie.0' does not support hotplugging`` (memhp plugs virtio-mem-pci
   without a root port, so on q35 every hot-add is refused; pc's PCI bus
   takes it, through ACPI PCI hotplug);
1. ``qdev_device_add()`` (system/qdev-monitor.c): a duplicate id --
   ``Duplicate device ID 'ID'``;
2. property setters (hw/virtio/virtio-mem.c ``virtio_mem_set_block_size()``):
   a block size below ``VIRTIO_MEM_MIN_BLOCK_SIZE`` (1 MiB) or not a power
   of two; ``dynamic-memslots`` does not exist before 8.2 (qdev's
   ``Property 'virtio-mem-pci.dynamic-memslots' not found``);
3. ``memory_device_pre_plug()`` (hw/mem/memory-device.c): a device-memory
   region (maxmem above RAM), then the room left in
   ``maxmem - mem`` (counting every memory device's *region*, i.e. the full
   max-size of each virtio-mem), then the address: alignment
   ``max(get_min_alignment() = block size, the backend region's alignment
   = 2 MiB for anonymous RAM on x86-64 Linux)``; first fit from the area's
   start past every memory device, pc-dimms and virtio-mem alike;
   7.2 also checks that the backend size is a multiple of that alignment
   here, after the address (``memory_device_get_free_addr()``: ``backend
   memory size must be multiple of 0x...``); 9.0+ checks the size against
   the region's own alignment (2 MiB) before the address
   (``QemuRules.size_check``);
4. ``virtio_mem_device_realize()``: the node exists; dynamic-memslots
   needs unplugged-inaccessible on (8.2+); the block size is at
   least the backend's page size (only reachable with huge pages, which
   memhp's RAM backends never use); ``requested-size`` is a multiple of the
   block size; 10.0 checks the backend size against the block size here
   (``'memdev' property memdev size has to be multiples of'block-size'``,
   QEMU's missing space included).

``requested-size`` above the backend size is *accepted* by ``device_add``
(7.2, 10.0, 11.1; the device then never lets the guest plug beyond the
region) -- what the guest does then is not modelled, so memhp refuses it at
input, as its own check.  A later ``qom-set`` (``virtio_mem_set_requested_size()``) checks
the block-size multiple first, then the backend size.

``device_del`` (hw/i386/pc.c ``pc_virtio_md_pci_unplug_request()`` in 7.2;
hw/virtio/virtio-md-pci.c ``virtio_md_pci_unplug_request()`` and
``virtio_mem_unplug_request_check()`` since 8.1, words of 9.1+):

* 7.2: always refused, ``virtio based memory devices cannot be unplugged.``;
* 8.1+ (read in 10.0, checked on 10.0 and 11.1): refused while
  ``unplugged-inaccessible`` is off, then while any memory is plugged
  (``size != 0``), then while ``requested-size != 0``.
  The model knows the requested size, not the guest's plugged size: it
  predicts "still plugged" for a non-zero request (the driver plugs at
  least one sub-block of any request, :mod:`harness.devices.virtio_mem.driver`).

Defaults: ``block-size`` = ``virtio_mem_default_block_size()`` = max(page
size of the backend, THP size) = 2 MiB for anonymous RAM on x86-64;
``unplugged-inaccessible``: QEMU 7.2 ``auto``, which resolves to off for RAM
backends (they have the shared zeropage); 8.1+ on for machine types 8.1+
(``pc_compat_8_0`` sets auto, ``pc_compat_6_2`` off).

``requested-size`` above the size is refused by memhp at input
(:class:`harness.devices.virtio_mem.ops.AddVirtioMem`), not as a QEMU refusal: QEMU
accepts it, but the guest driver's side of it is not modelled.

Between and after the versions checked on a binary (7.2, 10.0, 11.1), a
version gets the rules in force (:data:`VMEM_CHANGES`, one entry per rule
and the commit that changed it); a QEMU newer than
:data:`harness.model.qemu_rules.NEWEST_READ` gets the newest ones, with
``extrapolated_from`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from harness.errors import UsageError, refuse
from harness.model.changes import Change, clamp, in_force
from harness.model.qemu_rules import NEWEST_READ, OLDEST, describe_versions
from harness.units import MiB, format_size

MIN_BLOCK_SIZE = MiB  # VIRTIO_MEM_MIN_BLOCK_SIZE
DEFAULT_BLOCK_SIZE = 2 * MiB  # virtio_mem_default_block_size(): THP size on x86-64
BACKEND_ALIGN = 2 * MiB  # QEMU_VMALLOC_ALIGN: anonymous RAM regions on x86-64 Linux


@dataclass(frozen=True)
class VirtioMemRules:
    """The virtio-mem rules of one QEMU version."""

    qemu: tuple[int, int]
    unplug: Literal["never", "when-empty"]
    memdev_size_check: Literal["pre-plug", "realize"]
    dynamic_memslots: bool
    source: str
    # memory_device_pre_plug() without device memory (maxmem not above RAM):
    # the words of 7.2 or of 10.0 (VMEM_CHANGES "no_device_memory")
    no_device_memory: Literal["7.2", "10.0"] = "7.2"
    # unplugged-inaccessible's default for a RAM backend: "auto" (off: RAM
    # has the shared zeropage) on every machine type, or "on" from machine
    # type 8.1 (VMEM_CHANGES "ui_default", default_unplugged_inaccessible())
    ui_default: Literal["auto", "on-from-8.1"] = "auto"
    # The newest version read, whose rules these are, when ``qemu`` is newer.
    extrapolated_from: tuple[int, int] | None = None


VMEM_CHANGES: tuple[Change, ...] = (
    Change("unplug", (7, 2), "never",
           "hw/i386/pc.c pc_virtio_md_pci_unplug_request() (v7.2.0): 'virtio based memory "
           "devices cannot be unplugged.'"),
    Change("unplug", (8, 1), "when-empty",
           "commits 'virtio-md-pci: Handle unplug of virtio based memory devices' and "
           "'virtio-mem-pci: Device unplug support' (D. Hildenbrand, July 2023, v8.1.0): "
           "hw/virtio/virtio-md-pci.c virtio_md_pci_unplug_request() asks "
           "virtio_mem_unplug_request_check(); words as read in v10.0.2 and in the 11.1.3 "
           "binary (8.1-9.2 not checked against a binary)"),
    Change("memdev_size_check", (7, 2), "pre-plug",
           "hw/mem/memory-device.c memory_device_get_free_addr() (v7.2.0): 'backend memory "
           "size must be multiple of' the alignment, block size included, before realize"),
    Change("memdev_size_check", (8, 2), "realize",
           "commit eb1b7c4bd413 'memory-device: Drop size alignment check' (v8.2.0); "
           "540a1abbf0b2 (v9.0.0) brings back a pre-plug check of the region alignment only "
           "(2 MiB), so a size off the block size is left to virtio_mem_device_realize(): "
           "\"'memdev' property memdev size has to be multiples of'block-size'\" (v10.0.2, "
           "11.1.3 binary)"),
    Change("no_device_memory", (7, 2), "7.2",
           "hw/mem/memory-device.c memory_device_get_free_addr() (v7.2.0): a device-memory "
           "region of size 0 (no maxmem above RAM): 'memory devices (e.g. for memory hotplug) "
           "are not enabled, please specify the maxmem option', before check_addable.  "
           "Checked on the 7.2.22 binary"),
    Change("no_device_memory", (10, 0), "10.0",
           "hw/mem/memory-device.c memory_device_pre_plug() (v10.0.2): no ms->device_memory "
           "(machine_memory_devices_init() only runs when ram_size < maxram_size): 'the "
           "configuration is not prepared for memory devices (e.g., for memory hotplug), "
           "consider specifying the maxmem option', first.  Checked on the 10.0.2 and 11.1.3 "
           "binaries; changed by D. Hildenbrand's 2023 memory-device rework, 8.x-9.x not "
           "read (they get 7.2's words)"),
    Change("ui_default", (7, 2), "auto",
           "hw/virtio/virtio-mem.c (v7.2.0): DEFINE_PROP_ON_OFF_AUTO(unplugged-inaccessible, "
           "ON_OFF_AUTO_AUTO), which virtio_mem_device_realize() resolves to off for a "
           "backend with the shared zeropage (anonymous RAM); hw/i386/pc.c pc_compat_6_2 "
           "sets off"),
    Change("ui_default", (8, 1), "on-from-8.1",
           "hw/virtio/virtio-mem.c (v10.0.2): default ON_OFF_AUTO_ON; hw/i386/pc.c "
           "pc_compat_8_0 sets auto (so machine types up to 8.0 resolve to off on RAM, and the "
           "default changed in 8.1), pc_compat_6_2 off.  Checked on the 10.0.2 and 11.1.3 "
           "binaries: device_del of a virtio-mem on pc-i440fx-8.0 is refused for "
           "'unplugged-inaccessible' != 'on', on 8.1 it is not"),
    Change("dynamic_memslots", (7, 2), False,
           "hw/virtio/virtio-mem.c (v7.2.0): no 'dynamic-memslots' property"),
    Change("dynamic_memslots", (8, 2), True,
           "commit 'virtio-mem: Expose device memory dynamically via multiple memslots if "
           "enabled' (D. Hildenbrand, Sept 2023, v8.2.0): property 'dynamic-memslots'"),
)


def vmem_rules_for(version: tuple[int, int]) -> VirtioMemRules:
    """The virtio-mem rules in force at QEMU ``version`` (the newest ones,
    flagged ``extrapolated_from``, past :data:`NEWEST_READ`)."""
    version = (int(version[0]), int(version[1]))
    if version < OLDEST:
        raise UsageError(
            f"virtio-mem is modelled for {describe_versions()}, not "
            f"{version[0]}.{version[1]}", value=version,
            fix=f"run QEMU {OLDEST[0]}.{OLDEST[1]} or newer (e.g. --qemu debian:10.0)")
    applied, extrapolated = clamp(version, OLDEST, NEWEST_READ)
    chosen = in_force(VMEM_CHANGES, applied)
    return VirtioMemRules(
        version, unplug=chosen["unplug"].value,  # type: ignore[arg-type]
        memdev_size_check=chosen["memdev_size_check"].value,  # type: ignore[arg-type]
        dynamic_memslots=bool(chosen["dynamic_memslots"].value),
        no_device_memory=chosen["no_device_memory"].value,  # type: ignore[arg-type]
        ui_default=chosen["ui_default"].value,  # type: ignore[arg-type]
        source="; ".join(c.source for c in chosen.values()),
        extrapolated_from=extrapolated)


RULES_7_2 = vmem_rules_for((7, 2))
RULES_10 = vmem_rules_for((10, 0))


@dataclass(frozen=True)
class PlacedVirtioMem:
    """A virtio-mem device as QEMU holds it: region, block size, request."""

    kind: ClassVar[str] = "virtio-mem"
    id: str
    addr: int
    size: int  # the backend size: max-size, the region in device memory
    node: int
    block_size: int
    requested: int
    unplugged_inaccessible: bool = True

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def hotplug_bytes(self) -> int:
        """0: the guest driver decides what it plugs (:mod:`.driver`)."""
        return 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "memaddr": self.addr, "max_size": self.size, "node": self.node,
                "block_size": self.block_size, "requested_size": self.requested}


def check_bus(op: Any, machine: Any) -> None:
    """Step 0: the bus a bus-less PCI device lands on (``machine``: a
    :class:`harness.machines.base.Machine`) must be hotpluggable."""
    if not machine.pci_bus_hotplug:
        raise refuse("bus-no-hotplug", f"virtio-mem {op.id}: {machine.name}'s PCIe root bus "
                     "takes no hot-plugged device",
                     f"Bus '{machine.pci_bus}' does not support hotplugging",
                     value=op.id, limit=None,
                     fix="use machine type pc for virtio-mem (memhp adds no PCIe root port)")


def check_properties(op: Any, rules: VirtioMemRules) -> int:
    """Property setters (step 2): the block size QEMU will use.  device_add
    sets the properties in its QDict's (hash) order, in which block-size
    comes before dynamic-memslots (7.2.22: a bad block size is named, not
    the missing dynamic-memslots)."""
    bs = DEFAULT_BLOCK_SIZE if op.block_size is None else op.block_size
    if bs < MIN_BLOCK_SIZE:
        raise refuse("block-size-small", f"virtio-mem {op.id}: block size {bs} is below "
                     f"{format_size(MIN_BLOCK_SIZE)}",
                     f"'block-size' property has to be at least 0x{MIN_BLOCK_SIZE:x}",
                     value=bs, limit=MIN_BLOCK_SIZE, fix="use 2M (the default) or more")
    if bs & (bs - 1):
        raise refuse("block-size-power", f"virtio-mem {op.id}: block size {bs} is not a "
                     "power of two", "'block-size' property has to be a power of two",
                     value=bs, limit=None, fix="e.g. 2M, 4M, 8M")
    if op.dynamic_memslots is not None and not rules.dynamic_memslots:
        raise refuse("no-dynamic-memslots", f"virtio-mem {op.id}: QEMU "
                     f"{rules.qemu[0]}.{rules.qemu[1]} has no dynamic-memslots (8.2+)",
                     "Property 'virtio-mem-pci.dynamic-memslots' not found",
                     value=op.dynamic_memslots, limit=None,
                     fix="drop dynamic_memslots, or use QEMU 8.2+ (--qemu debian:10.0)")
    return bs


def check_device_memory(op: Any, rules: VirtioMemRules, has_device_memory: bool) -> None:
    """memory_device_pre_plug()'s first check (step 3): a device-memory
    region exists (maxmem above RAM)."""
    if has_device_memory:
        return
    words = ("memory devices (e.g. for memory hotplug) are not enabled, please specify the "
             "maxmem option" if rules.no_device_memory == "7.2" else
             "the configuration is not prepared for memory devices (e.g., for memory "
             "hotplug), consider specifying the maxmem option")
    raise refuse("no-device-memory", f"virtio-mem {op.id}: the machine has no device memory "
                 "(maxmem is not above the boot memory)", words, value=op.id, limit=None,
                 fix="start the VM with maxmem above the boot memory, e.g. -m 4G,maxmem=16G")


def alignment(block_size: int) -> int:
    """memory_device_pre_plug(): max(get_min_alignment(), region alignment)."""
    return max(block_size, BACKEND_ALIGN)


def check_realize(op: Any, rules: VirtioMemRules, block_size: int, node_count: int,
                  numa: bool, inaccessible: bool = True) -> None:
    """virtio_mem_device_realize() (step 4), in QEMU's order (v10.0.2: the
    node; unplugged-inaccessible resolved (``inaccessible``), which
    dynamic-memslots needs on; then the sizes)."""
    nodes = node_count if numa else 0
    if (nodes and op.node >= nodes) or (not nodes and op.node):
        raise refuse("unknown-node", f"virtio-mem {op.id}: node {op.node} does not exist",
                     f"'node' property has value '{op.node}', which exceedsthe number of "
                     f"numa nodes: {nodes or 1}", value=op.node, limit=(nodes or 1) - 1,
                     fix=f"use a node between 0 and {(nodes or 1) - 1}")
    if op.dynamic_memslots and not inaccessible:
        raise refuse("dynamic-memslots-accessible", f"virtio-mem {op.id}: dynamic_memslots "
                     "needs unplugged memory to be inaccessible",
                     "'dynamic-memslots' property set to 'on' requires "
                     "'unplugged-inaccessible' to be 'on'", value=op.dynamic_memslots,
                     limit=None, fix="set unplugged_inaccessible = true (or use machine "
                     "type 8.1+, where it is the default), or drop dynamic_memslots")
    if op.requested % block_size:
        raise refuse("requested-misaligned", f"virtio-mem {op.id}: requested "
                     f"{op.requested} is not a multiple of the block size "
                     f"{format_size(block_size)}",
                     f"'requested-size' property has to be multiples of 'block-size' "
                     f"(0x{block_size:x})", value=op.requested, limit=block_size,
                     fix=f"use a multiple of {format_size(block_size)}")
    if rules.memdev_size_check == "realize" and op.size % block_size:
        raise refuse("memdev-misaligned", f"virtio-mem {op.id}: size {op.size} is not a "
                     f"multiple of the block size {format_size(block_size)}",
                     f"'memdev' property memdev size has to be multiples of'block-size' "
                     f"(0x{block_size:x})", value=op.size, limit=block_size,
                     fix=f"use a multiple of {format_size(block_size)}")


def check_resize(dev: PlacedVirtioMem, requested: int) -> None:
    """virtio_mem_set_requested_size() on a realized device (qom-set)."""
    if requested % dev.block_size:
        raise refuse("requested-misaligned", f"virtio-mem {dev.id}: requested {requested} "
                     f"is not a multiple of the block size {format_size(dev.block_size)}",
                     f"'requested-size' has to be multiples of 'block-size' "
                     f"(0x{dev.block_size:x})", value=requested, limit=dev.block_size,
                     fix=f"use a multiple of {format_size(dev.block_size)}")
    if requested > dev.size:
        raise refuse("requested-above-max", f"virtio-mem {dev.id}: requested "
                     f"{format_size(requested)} exceeds its size {format_size(dev.size)}",
                     f"'requested-size' cannot exceed the memory backend size"
                     f"(0x{dev.size:x})", value=requested, limit=dev.size,
                     fix=f"request at most {format_size(dev.size)}")


def check_unplug(dev: PlacedVirtioMem, rules: VirtioMemRules) -> None:
    """device_del of a virtio-mem-pci (module docstring)."""
    if rules.unplug == "never":
        raise refuse("vmem-unplug-unsupported", f"virtio-mem {dev.id}: QEMU "
                     f"{rules.qemu[0]}.{rules.qemu[1]} cannot unplug virtio-mem devices",
                     "virtio based memory devices cannot be unplugged.", value=dev.id,
                     limit=None, fix="resize it to 0 instead, or use QEMU 8.1+ "
                     "(--qemu debian:10.0) and resize to 0 before removing")
    if not dev.unplugged_inaccessible:
        raise refuse("vmem-unplug-accessible", f"virtio-mem {dev.id}: unplugged memory "
                     "is accessible (unplugged-inaccessible=off)",
                     "virtio-mem device cannot get unplugged while 'unplugged-inaccessible' "
                     "!= 'on'", value=dev.id, limit=None,
                     fix="leave unplugged_inaccessible at its default (on)")
    if dev.requested:
        raise refuse("vmem-plugged", f"virtio-mem {dev.id}: still has "
                     f"{format_size(dev.requested)} requested, so memory is plugged",
                     "virtio-mem device cannot get unplugged while some of its memory is "
                     "still plugged", value=dev.requested, limit=0,
                     fix="resize it to 0 first")


def default_unplugged_inaccessible(rules: VirtioMemRules,
                                   machine_version: tuple[int, int]) -> bool:
    """unplugged-inaccessible for a RAM backend when not given: on for
    machine types 8.1+ of QEMU 8.1+, else off (auto resolves to off: RAM has
    the shared zeropage; pc_compat_8_0 auto, pc_compat_6_2 off)."""
    return rules.ui_default == "on-from-8.1" and machine_version >= (8, 1)
