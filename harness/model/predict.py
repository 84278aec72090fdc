"""Placement of DIMMs, QEMU's refusals and the guest kernel's verdicts.

At start-up QEMU refuses, in this order (:func:`_check_spec`; each a
:class:`PlanRefused` with a stable ``kind`` and QEMU's wording in
``qemu_message``; the same in v7.2.0 and v10.0.0):

0. the machine type -- system/vl.c ``select_machine()``: a versioned type
   older than the binary's oldest (QEMU 10.1+ no longer registers types
   six years old, ``QemuRules.oldest_machine``) is ``unsupported machine
   type``;
1. ``-m`` -- hw/core/machine.c ``machine_set_mem()``: maxmem below RAM;
   slots with maxmem equal to RAM;
2. a boot RAM backend the host will not map (:mod:`.qemu_rules.host`);
3. NUMA sizes that do not add up -- hw/core/numa.c
   ``numa_complete_configuration()``;
4. hw/i386/pc.c ``pc_memory_init()``: the max used address beyond
   phys-bits (after the AMD 1 TiB relocation, see :mod:`.layout`); more
   than ACPI_MAX_RAM_SLOTS (256) slots when maxmem > RAM; then maxmem not
   a multiple of TARGET_PAGE_SIZE (4 KiB).

Before all of these, a cold-plugged DIMM id given twice is refused as QEMU
parses its command line (:func:`_check_coldplug_ids`).

For each ``AddDimm`` (:func:`_place`), in this order:

0. ``object-add`` creates the backend (:func:`_check_backend`: its
   options, the host's memory and hugepages, the host NUMA policy; see
   :mod:`.backend` for the backend kinds);
1. the id is not in use (``qdev_set_id()``, softmmu/qdev-monitor.c);
2. a slot is free -- ``pc_dimm_get_free_slot()`` (hw/mem/pc-dimm.c) takes
   the lowest free slot, and fails when no slots were configured (also
   with maxmem but no slots: QEMU starts, and every DIMM is refused);
3. the DIMMs fit in ``maxmem - mem`` -- ``memory_device_check_addable()``
   (hw/mem/memory-device.c);
4. the explicit address and the size are multiples of the backend's
   alignment (:attr:`.backend.BackendSpec.alignment`: 2 MiB for RAM
   backends on an x86_64 Linux host, the page size for file and memfd
   backends -- 4 KiB, 2 MiB or 1 GiB); the order
   of the two checks, and whether the size is checked at all, depends on
   the QEMU version (``QemuRules.size_check``, :mod:`.qemu_rules`);
5. an address: an explicit 0 means none (``memory_device_pre_plug()``
   passes ``!addr ? NULL : &addr``, v7.2.0 and v10.0.0); an explicit one
   must lie in the device-memory region and not overlap another DIMM;
   otherwise first fit from the region's start, stepping past each DIMM
   (sorted by address) to ALIGN_UP(its end, align), ``align`` being the
   new DIMM's own backend alignment;
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

A virtio-mem device (``AddVirtioMem``, ``ResizeVirtioMem``, and a
``RemoveDimm`` naming one) follows :mod:`harness.model.virtio_mem`: it
shares the device-memory area, the id space and the ``maxmem`` room with the
DIMMs (every memory device counts with its whole region), but takes no slot.

QEMU then plugs the DIMM; the guest kernel adds it only if its start and
size are multiples of the memory block size (``check_hotplug_memory_range()``
in mm/memory_hotplug.c): otherwise the DIMM is placed but rejected by the
guest (``guest_accepts=False`` with the reason), and, since QEMU aligns
automatic placement to 2 MiB only, the next automatically placed DIMM can
start off a block boundary as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import PlanRefused, refuse
from harness.model import virtio_mem as vm_rules
from harness.model.backend import HOST_PAGE_SIZE, QEMU_MAX_NODES, BackendSpec, size_to_str
from harness.model.layout import Layout, compute_layout
from harness.model.spec import (
    ACPI_MAX_RAM_SLOTS,
    AddDimm,
    AddVirtioMem,
    MachineSpec,
    Operation,
    RemoveDimm,
    ResizeVirtioMem,
)
from harness.model.virtio_mem import PlacedVirtioMem
from harness.units import MiB, format_size

# TARGET_PAGE_SIZE of x86 (target/i386/cpu-param.h: TARGET_PAGE_BITS 12)
TARGET_PAGE_SIZE = 4096


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
    align: int = 2 * MiB
    backend: BackendSpec = BackendSpec()

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def hugepages(self) -> int:
        """Hugepages QEMU maps (and the host reserves or preallocates) for it."""
        return self.backend.pages(self.size) if _takes_pages(self.backend) else 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "addr": self.addr, "size": self.size,
                             "node": self.node, "slot": self.slot, "blocks": list(self.blocks),
                             "guest_accepts": self.guest_accepts}
        if not self.guest_accepts:
            d["reason"] = self.reason
        if self.backend != BackendSpec():
            d["backend"] = self.backend.describe()
            d["align"] = self.align
            if self.backend.hugepages:
                d["hugepages"] = self.hugepages
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
    vmems: tuple[PlacedVirtioMem, ...] = ()


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
                "oldest_machine": _dotted(self.spec.rules.oldest_machine),
                "extrapolated_from": _dotted(self.spec.rules.extrapolated_from),
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
            "virtio_mem": [v.to_json() for v in final.vmems],
            "nodes": [n.to_json() for n in final.nodes],
        }


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _check_addr_align(op: AddDimm, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() (hw/mem/memory-device.c, v7.2.0-v10.0.0)."""
    if addr is not None and addr % align:
        raise refuse("misaligned-addr",
                     f"DIMM {op.id!r}: address {addr:#x} is not {format_size(align)} aligned",
                     f"address must be aligned to 0x{align:x} bytes", value=addr,
                     limit=align, fix=f"use a multiple of {format_size(align)}")


def _check_size_align(op: AddDimm, addr: int | None, align: int) -> None:
    """memory_device_get_free_addr() in v7.2.0, memory_device_pre_plug() since
    540a1abbf0b2 (v9.0.0; v10.0.0); absent in v8.2.0 (eb1b7c4bd413)."""
    if op.size % align:
        raise refuse("misaligned-size",
                     f"DIMM {op.id!r}: size {op.size} is not a multiple of {format_size(align)}",
                     f"backend memory size must be multiple of 0x{align:x}", value=op.size,
                     limit=align, fix=f"use a multiple of {format_size(align)}")


def _check_host(spec: MachineSpec, size: int, backend: str, already: int) -> None:
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


def _takes_pages(backend: BackendSpec) -> bool:
    """The mapping reserves (or preallocation faults in) its hugepages at
    object-add: mm/hugetlb.c ``hugetlb_reserve_pages()`` unless
    MAP_NORESERVE (``reserve=off``)."""
    return backend.hugepages is not None and (backend.effective("reserve")
                                              or backend.effective("prealloc"))


def _accounted(spec: MachineSpec, be: BackendSpec) -> bool:
    """Does the backend's mapping count against overcommit when mapped?
    Linux mm/mmap.c ``accountable_mapping()``: private writable mappings,
    and shared anonymous memory (shmem's own accounting); not hugetlb (its
    own pool), not shared file/memfd mappings, not MAP_NORESERVE
    (``reserve=off``) unless overcommit is 2 -- util/mmap-alloc.c
    ``map_noreserve_effective()`` (v7.2.0, v10.0.0) says the same."""
    if be.hugepages is not None:
        return False
    if not be.effective("reserve") and (spec.host is None or spec.host.overcommit != 2):
        return False
    if not be.effective("share"):
        return True
    return be.kind == "ram" and not spec.rules.ram_share_memfd


def _check_backend(spec: MachineSpec, op: AddDimm, held: dict[int, int], already: int,
                   dimms: Sequence[PlacedDimm] = ()) -> None:
    """``object-add`` of the DIMM's backend, in QEMU's order (v7.2.0 and
    v10.0.0 unless said):

    1. properties -- backends/hostmem.c ``host_memory_backend_set_prealloc()``
       / ``_set_reserve()``: prealloc with reserve off;
       ``host_memory_backend_set_host_nodes()``: a node >= MAX_NODES;
    2. allocation (``bc->alloc``) -- file: ``file_ram_open()`` cannot open
       or create the file (``HostMemory.unopenable``); memfd: a size off
       the 4 KiB host page (``qemu_ram_alloc_from_fd()``); the host maps it: accounted mappings
       (:func:`_accounted`) count against overcommit
       (:mod:`.qemu_rules.host`); memfd: util/memfd.c
       ``qemu_memfd_create()`` ftruncate()s a hugetlb memfd, which Linux
       refuses (EINVAL, fs/hugetlbfs/inode.c ``hugetlbfs_setattr()``) for a
       size that is no multiple of the page size; file:
       system/physmem.c ``file_ram_alloc()`` refuses a size below the page
       size, rounds it up to pages and mmap()s it: the hugepage
       reservation fails with ENOMEM when the pool has too few;
    3. v9.1+: the size must be a multiple of the page size
       (``QemuRules.backend_size_check``);
    4. host NUMA policy -- ``host_memory_backend_memory_complete()``: nodes
       with policy default, policy without nodes, then mbind(), which Linux
       refuses with EINVAL when none of the nodes has memory (mm/mempolicy.c
       ``mpol_set_nodemask()``: the mask is intersected with N_MEMORY).

    5. preallocation -- util/oslib-posix.c ``qemu_prealloc_mem()`` touches
       every page; a file backend whose file system has less room than
       the backend (``HostMemory.fs_free`` at its ``mem_path``, less what
       earlier preallocated DIMMs at the same path took) faults a page the
       file system cannot give: "qemu_prealloc_mem: preallocating memory
       failed: Bad address" (v7.2.0 and v10.0.0, shared or private).  It
       cannot fail on hugepages QEMU has reserved; on anonymous memory it
       depends on what else the host uses meanwhile: not predicted.
    """
    be = op.backend
    if be.effective("prealloc") and not be.effective("reserve"):
        raise refuse("prealloc-noreserve", f"DIMM {op.id!r}: prealloc needs reserve",
                     "'prealloc=on' and 'reserve=off' are incompatible", value=be.describe(),
                     limit=None, fix="drop reserve = false or prealloc = true")
    for node in be.host_nodes:
        if node >= QEMU_MAX_NODES:
            raise refuse("host-node-range", f"DIMM {op.id!r}: host node {node} >= "
                         f"{QEMU_MAX_NODES}", f"Invalid host-nodes value: {node}", value=node,
                         limit=QEMU_MAX_NODES - 1, fix="use host nodes below 128")
    if be.kind == "file" and be.mem_path and spec.host is not None \
            and be.mem_path in spec.host.unopenable:
        # file_ram_open() (softmmu/physmem.c v7.2.0, system/physmem.c v10.0.2):
        # open() fails, then open(O_CREAT) fails: ENOENT, before any mapping
        raise refuse("mem-path-missing", f"DIMM {op.id!r}: mem_path {be.mem_path!r} does "
                     "not exist and its directory is missing",
                     f"can't open backing store {be.mem_path} for guest RAM: No such file or "
                     "directory", value=be.mem_path, limit=None,
                     fix="create the directory first, or name an existing one")
    if be.kind == "memfd" and not be.hugepages and op.size % HOST_PAGE_SIZE:
        # qemu_ram_alloc_from_fd(): the memfd holds op.size bytes, the RAM
        # block wants them rounded up to host pages (before any mmap)
        want = -(-op.size // HOST_PAGE_SIZE) * HOST_PAGE_SIZE
        words = (f"backing store size 0x{op.size:x} does not match 'size' option 0x{want:x}"
                 if spec.rules.fd_size_words == "7.2" else
                 f"{DIMM_BACKEND} backing store size 0x{op.size:x} is too small for 'size' "
                 f"option 0x{want:x} plus 'offset' option 0x0")
        raise refuse("memfd-size", f"DIMM {op.id!r}: a memfd of {op.size} bytes is no "
                     f"multiple of the {HOST_PAGE_SIZE}-byte host page", words,
                     value=op.size, limit=HOST_PAGE_SIZE,
                     fix="give the size in whole 4 KiB pages (e.g. 128M)")
    if _accounted(spec, be):
        try:
            _check_host(spec, op.size, DIMM_BACKEND, already)
        except PlanRefused as exc:
            if be.kind != "ram":  # fd-backed: file_ram_alloc()'s mmap() fails
                exc.qemu_message = (  # type: ignore[attr-defined]
                    "unable to map backing store for guest RAM: Cannot allocate memory")
            raise
    page = be.page_size
    if be.kind == "memfd" and be.hugepages and op.size % page:
        raise refuse("hugepage-size", f"DIMM {op.id!r}: {format_size(op.size)} is no multiple "
                     f"of the {format_size(page)} hugepage size",
                     f"failed to resize memfd to {op.size}: Invalid argument", value=op.size,
                     limit=page, fix=f"use a multiple of {format_size(page)}")
    if be.kind == "file":
        mapped = -(-op.size // 4096) * 4096  # HOST_PAGE_ALIGN in qemu_ram_alloc_from_fd()
        if mapped < page:
            raise refuse("below-page-size", f"DIMM {op.id!r}: {format_size(op.size)} is below "
                         f"the {format_size(page)} page size",
                         f"memory size 0x{mapped:x} must be equal to or larger than page "
                         f"size 0x{page:x}", value=op.size, limit=page,
                         fix=f"use a multiple of {format_size(page)}")
    if be.hugepages and be.effective("reserve"):
        available = spec.host.hugepages_available(page) if spec.host else None
        need = be.pages(op.size)
        if available is not None and held.get(page, 0) + need > available:
            free = available - held.get(page, 0)
            raise refuse("hugepages", f"DIMM {op.id!r} needs {need} {format_size(page)} "
                         f"hugepages; {free} are free",
                         "unable to map backing store for guest RAM: Cannot allocate memory",
                         value=need, limit=free,
                         fix="reserve more hugepages (memhp does for its tests) or use a "
                              "smaller DIMM")
    if spec.rules.backend_size_check and be.kind != "ram" and op.size % page:
        raise refuse("backend-size", f"DIMM {op.id!r}: {format_size(op.size)} is no multiple "
                     f"of the backend's {format_size(page)} page size",
                     f"backend '{be.qom_type}' memory size must be multiple of "
                     f"{size_to_str(page)}", value=op.size, limit=page,
                     fix=f"use a multiple of {format_size(page)}")
    if be.host_nodes and be.policy == "default":
        raise refuse("host-nodes-default", f"DIMM {op.id!r}: host_nodes need a policy",
                     "host-nodes must be empty for policy default, or you should explicitly "
                     "specify a policy other than default", value=be.host_nodes, limit=None,
                     fix='add policy = "bind" (or preferred, interleave)')
    if not be.host_nodes and be.policy != "default":
        raise refuse("policy-without-nodes", f"DIMM {op.id!r}: policy {be.policy} needs "
                     "host_nodes", f"host-nodes must be set for policy {be.policy}",
                     value=be.policy, limit=None, fix='add host_nodes = "0"')
    nodes = spec.host.nodes if spec.host else None
    if be.host_nodes and nodes is not None and not set(be.host_nodes) & set(nodes):
        raise refuse("host-nodes-missing", f"DIMM {op.id!r}: host node(s) "
                     f"{','.join(map(str, be.host_nodes))} do not exist (host nodes with "
                     f"memory: {','.join(map(str, nodes))})",
                     "cannot bind memory to host NUMA nodes: Invalid argument",
                     value=be.host_nodes, limit=nodes, fix="use a host node that exists")
    room = spec.host.free_at(be.mem_path) if spec.host and be.mem_path else None
    if (room is not None and be.kind == "file" and be.hugepages is None
            and be.effective("prealloc")):
        taken = sum(d.size for d in dimms if d.backend.mem_path == be.mem_path
                    and d.backend.kind == "file" and d.backend.effective("prealloc"))
        if taken + op.size > room:
            raise refuse("prealloc-failed", f"DIMM {op.id!r}: preallocating "
                         f"{format_size(op.size)} at {be.mem_path} needs more than the "
                         f"{format_size(max(0, room - taken))} free there",
                         "qemu_prealloc_mem: preallocating memory failed: Bad address",
                         value=op.size, limit=room - taken,
                         fix="give the file system more room or use a smaller DIMM")


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


def _place(spec: MachineSpec, layout: Layout, dimms: list[PlacedDimm], op: AddDimm,
           vmems: Sequence[PlacedVirtioMem] = (), held: dict[int, int] | None = None
           ) -> PlacedDimm:
    """Place ``op``; ``held``: hugepages (per page size) this plan's DIMMs
    and kept files hold."""
    devices: list[PlacedDimm | PlacedVirtioMem] = [*dimms, *vmems]
    _check_backend(spec, op, held or {}, spec.ram_size + sum(d.size for d in devices), dimms)
    _check_id(op, devices)
    if spec.slots == 0:
        raise refuse("hotplug-disabled",
                     "the machine has no DIMM slots (started without slots/maxmem)",
                     "no slots where allocated, please specify the 'slots' option",
                     value=op.id, limit=0, fix="start the VM with -m SIZE,slots=N,maxmem=SIZE")
    used_slots = {d.slot for d in dimms}
    free = [s for s in range(spec.slots) if s not in used_slots]
    if not free:
        raise refuse("slots-exhausted",
                     f"DIMM {op.id!r}: all {spec.slots} slots are in use",
                     "no free slots available", value=len(dimms) + 1, limit=spec.slots,
                     fix="raise slots= or remove a DIMM first")
    _check_room(spec, op, [*dimms, *vmems])
    align = op.backend.alignment
    explicit = op.addr if op.addr else None  # address 0 = no address
    checks = {"after-addr": (_check_addr_align, _check_size_align),
              "before-addr": (_check_size_align, _check_addr_align),
              "none": (_check_addr_align,)}[spec.rules.size_check]
    for check in checks:
        check(op, explicit, align)
    addr = _find_addr(layout, [*dimms, *vmems], op, explicit, align)
    if op.node >= spec.node_count:
        raise refuse(
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
        return PlacedDimm(op.id, addr, op.size, op.node, free[0], (), False, reason, align,
                          op.backend)
    blocks = tuple(range(addr // bs, (addr + op.size) // bs))
    return PlacedDimm(op.id, addr, op.size, op.node, free[0], blocks, True, None, align,
                      op.backend)


def _check_id(op: AddDimm | AddVirtioMem,
              devices: Sequence[PlacedDimm | PlacedVirtioMem]) -> None:
    """qdev_set_id() (softmmu/qdev-monitor.c v7.2.0, system/qdev-monitor.c
    v10.0.0): a device id is unique among all devices, whatever their kind."""
    if any(d.id == op.id for d in devices):
        what, fix = (("DIMM id", "give every DIMM its own id") if isinstance(op, AddDimm)
                     else ("device id", "give every memory device its own id"))
        raise refuse("duplicate-id", f"{what} {op.id!r} is already in use",
                     f"Duplicate device ID '{op.id}'", value=op.id, limit=None, fix=fix)


def _check_room(spec: MachineSpec, op: AddDimm | AddVirtioMem,
                devices: Sequence[PlacedDimm | PlacedVirtioMem]) -> None:
    """memory_device_check_addable(): every memory device's region counts."""
    room = spec.maxram - spec.ram_size
    used = sum(d.size for d in devices)
    kind = "DIMM" if isinstance(op, AddDimm) else "virtio-mem"
    if used + op.size > room:
        raise refuse(
            "maxmem-exceeded",
            f"{kind} {op.id!r} ({format_size(op.size)}) exceeds maxmem: {format_size(used)} of "
            f"{format_size(room)} (maxmem - mem) already in use",
            f"not enough space, currently 0x{used:x} in use of total space for memory "
            f"devices 0x{room:x}", value=op.size, limit=room,
            fix="raise maxmem or use a smaller device")


def _find_addr(layout: Layout, devices: Sequence[PlacedDimm | PlacedVirtioMem],
               op: AddDimm | AddVirtioMem, explicit: int | None, align: int) -> int:
    """memory_device_get_free_addr(): an explicit address inside the area and
    clear of every memory device, or first fit from the area's start."""
    kind = "DIMM" if isinstance(op, AddDimm) else "virtio-mem"
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
        addr = _align_up(lo, align)
        for d in ordered:
            if d.addr < addr + op.size and addr < d.end:
                addr = _align_up(d.end, align)
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


def _place_vmem(spec: MachineSpec, layout: Layout, dimms: Sequence[PlacedDimm],
                vmems: Sequence[PlacedVirtioMem], op: AddVirtioMem) -> PlacedVirtioMem:
    """A virtio-mem-pci device, in QEMU's order (:mod:`harness.model.virtio_mem`)."""
    rules = vm_rules.vmem_rules_for(spec.qemu_version)
    devices: list[PlacedDimm | PlacedVirtioMem] = [*dimms, *vmems]
    _check_host(spec, op.size, DIMM_BACKEND, spec.ram_size + sum(d.size for d in devices))
    vm_rules.check_bus(op, spec.machine)
    _check_id(op, devices)
    block_size = vm_rules.check_properties(op, rules)
    vm_rules.check_device_memory(op, rules, spec.ram_size < spec.maxram)
    _check_room(spec, op, [*dimms, *vmems])
    align = vm_rules.alignment(block_size)
    explicit = op.addr if op.addr else None
    if spec.rules.size_check == "before-addr":  # 9.0+: the region's own alignment
        _check_size_align(op, explicit, vm_rules.BACKEND_ALIGN)  # type: ignore[arg-type]
    _check_addr_align(op, explicit, align)  # type: ignore[arg-type]
    if rules.memdev_size_check == "pre-plug":
        _check_size_align(op, explicit, align)  # type: ignore[arg-type]
    addr = _find_addr(layout, [*dimms, *vmems], op, explicit, align)
    inaccessible = (op.unplugged_inaccessible if op.unplugged_inaccessible is not None
                    else vm_rules.default_unplugged_inaccessible(
                        rules, spec.rules.machine_version))
    vm_rules.check_realize(op, rules, block_size, spec.node_count, bool(spec.numa),
                           inaccessible)
    return PlacedVirtioMem(op.id, addr, op.size, op.node, block_size, op.requested,
                           inaccessible)


def _totals(spec: MachineSpec, dimms: Sequence[PlacedDimm]) -> tuple[NodeTotals, ...]:
    return tuple(
        NodeTotals(n, boot, sum(d.size for d in dimms if d.node == n and d.guest_accepts))
        for n, boot in enumerate(spec.node_boot_bytes())
    )


def _dotted(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"


def _check_spec(spec: MachineSpec, layout: Layout) -> None:
    """QEMU's start-up refusals, in QEMU's order (module docstring)."""
    rules = spec.rules
    oldest = rules.oldest_machine
    if spec.machine_version is not None and oldest is not None and spec.machine_version < oldest:
        q, o = rules.qemu, f"{oldest[0]}.{oldest[1]}"
        raise refuse(
            "machine-type-removed", f"machine type {spec.machine_name} is gone from QEMU "
            f"{q[0]}.{q[1]}, whose oldest {spec.machine} machine type is {o}",
            f'unsupported machine type: "{spec.machine_name}"', value=spec.machine_name,
            limit=oldest, fix=f"use machine type {spec.machine}, or a versioned one from {o} "
            f"on (QEMU {q[0]}.{q[1]} removed the older ones)")
    ram, maxmem = spec.ram_size, spec.maxmem
    if maxmem and maxmem < ram:
        raise refuse(
            "maxmem-below-ram", f"maxmem {format_size(maxmem)} is below the boot memory "
            f"{format_size(ram)}",
            f"invalid value of maxmem: maximum memory size (0x{maxmem:x}) must be at least "
            f"the initial memory size (0x{ram:x})", value=maxmem, limit=ram, fix="raise maxmem")
    if spec.slots and maxmem == ram:
        raise refuse(
            "maxmem-equals-ram", f"slots={spec.slots} but maxmem equals the boot memory, so "
            "there is no room for DIMMs",
            f"invalid value of maxmem: memory slots were specified but maximum memory size "
            f"(0x{maxmem:x}) is equal to the initial memory size (0x{ram:x})", value=maxmem,
            limit=ram, fix="raise maxmem above the boot memory")
    if spec.slots and not maxmem:
        raise refuse("slots-without-maxmem", "slots= needs maxmem=",
                     "slots specified but no max-size", value=spec.slots, limit=None,
                     fix="give maxmem= with slots=, or neither")
    committed = 0
    for i, size in enumerate(spec.numa or (ram,)):
        if size:
            _check_host(spec, size, f"mem{i}" if spec.numa else "pc.ram", committed)
            committed += size
    if spec.numa and sum(spec.numa) != ram:
        raise refuse(
            "numa-mismatch",
            f"NUMA node sizes {'+'.join(format_size(n) for n in spec.numa)} do not add up to "
            f"the boot memory {format_size(ram)}",
            f"total memory for NUMA nodes (0x{sum(spec.numa):x}) should equal RAM size "
            f"(0x{ram:x})", value=spec.numa, limit=ram,
            fix="make the node sizes sum to -m")
    limit = (1 << layout.phys_bits) - 1
    if layout.max_used_gpa > limit:
        lm = spec.cpu.long_mode
        raise refuse(
            "phys-bits", "the highest guest-physical address the machine uses "
            + (f"({layout.max_used_gpa:#x}: RAM, device memory and the 64-bit PCI hole) is "
               f"beyond what {layout.phys_bits} phys-bits address" if lm else
               f"({layout.max_used_gpa:#x}) is beyond what a 32-bit vCPU (lm=off, "
               f"{layout.phys_bits} phys-bits, set by QEMU) addresses"),
            f"Address space limit 0x{limit:x} < 0x{layout.max_used_gpa:x} phys-bits too low "
            f"({layout.phys_bits})", value=layout.max_used_gpa, limit=limit,
            fix="use a smaller maxmem or fewer slots, or "
                + ("more phys-bits (-cpu ...,phys-bits=N)" if lm
                   else "a 64-bit vCPU (drop lm=off)"))
    if ram < spec.maxram and spec.slots > ACPI_MAX_RAM_SLOTS:
        raise refuse(
            "too-many-slots", f"slots={spec.slots} exceeds ACPI_MAX_RAM_SLOTS "
            f"({ACPI_MAX_RAM_SLOTS})", f"unsupported amount of memory slots: {spec.slots}",
            value=spec.slots, limit=ACPI_MAX_RAM_SLOTS,
            fix=f"use at most {ACPI_MAX_RAM_SLOTS} slots")
    if ram < spec.maxram and spec.maxram % TARGET_PAGE_SIZE:
        # pc_memory_init(), after the slots (v7.2.0, v10.0.2; QEMU's "by" kept)
        raise refuse(
            "maxmem-misaligned", f"maxmem {spec.maxram} is not a multiple of "
            f"{TARGET_PAGE_SIZE} bytes (the guest page size)",
            f"maximum memory size must by aligned to multiple of {TARGET_PAGE_SIZE} bytes",
            value=spec.maxram, limit=TARGET_PAGE_SIZE,
            fix="give maxmem in whole KiB multiples of 4 (e.g. 32G)")


def _check_coldplug_ids(spec: MachineSpec) -> None:
    """``-device`` options are QemuOpts, parsed as QEMU reads its command
    line (softmmu/vl.c qemu_init() v7.2.0, system/vl.c v10.0.2:
    ``qemu_opts_parse_noisily(qemu_find_opts("device"), ...)``), before the
    machine exists: util/qemu-option.c ``qemu_opts_create()`` refuses an id
    already in the list, "Duplicate ID '%s' for %s" -- so before every other
    start-up check, and in other words than a hot-add's (qdev_set_id())."""
    seen: set[str] = set()
    for d in spec.coldplug:
        if d.id in seen:
            exc = refuse("duplicate-id", f"cold-plugged DIMM id {d.id!r} is given twice",
                         f"Duplicate ID '{d.id}' for device", value=d.id, limit=None,
                         fix="give every cold-plugged DIMM its own id")
            exc.step = None  # type: ignore[attr-defined]
            exc.coldplug = True  # type: ignore[attr-defined]
            raise exc
        seen.add(d.id)


def predict(spec: MachineSpec, ops: Sequence[Operation]) -> Prediction:
    """Predict every step of ``ops`` on ``spec``; raises PlanRefused (with
    ``.step``) at the first operation QEMU would refuse."""
    layout = compute_layout(spec)
    _check_coldplug_ids(spec)
    _check_spec(spec, layout)
    dimms: list[PlacedDimm] = []
    vmems: list[PlacedVirtioMem] = []
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
    kept: dict[int, int] = {}  # hugepages kept by files of removed DIMMs
    for i, op in enumerate(ops):
        try:
            if isinstance(op, AddDimm):
                held = dict(kept)
                for d in dimms:
                    if d.backend.hugepages:
                        held[d.backend.hugepages] = held.get(d.backend.hugepages, 0) \
                            + d.hugepages
                dimms.append(_place(spec, layout, dimms, op, vmems, held))
            elif isinstance(op, AddVirtioMem):
                vmems.append(_place_vmem(spec, layout, dimms, vmems, op))
            elif isinstance(op, ResizeVirtioMem):
                vmems = _resize(vmems, op)
            elif isinstance(op, RemoveDimm) and any(v.id == op.id for v in vmems):
                dev = next(v for v in vmems if v.id == op.id)
                vm_rules.check_unplug(dev, vm_rules.vmem_rules_for(spec.qemu_version))
                vmems = [v for v in vmems if v.id != op.id]
            elif isinstance(op, RemoveDimm):
                if not any(d.id == op.id for d in dimms):
                    raise refuse("unknown-dimm", f"no DIMM {op.id!r} to remove",
                                 f"Device '{op.id}' not found", value=op.id, limit=None,
                                 fix="remove a DIMM an earlier step added")
                for d in dimms:
                    if d.id == op.id and d.backend.hugepages and \
                            d.backend.holds_pages_after_unplug:
                        kept[d.backend.hugepages] = kept.get(d.backend.hugepages, 0) \
                            + d.hugepages
                dimms = [d for d in dimms if d.id != op.id]
            else:  # pragma: no cover - typed away
                raise TypeError(op)
        except PlanRefused as exc:
            exc.step = i  # type: ignore[attr-defined]
            raise
        ordered = tuple(sorted(dimms, key=lambda d: d.addr))
        steps.append(StepPrediction(op, ordered, _totals(spec, ordered),
                                    tuple(sorted(vmems, key=lambda v: v.addr))))
    return Prediction(spec, layout, boot, tuple(steps))


def _resize(vmems: list[PlacedVirtioMem], op: ResizeVirtioMem) -> list[PlacedVirtioMem]:
    """qom-set requested-size: QEMU's checks, then the new request."""
    for i, v in enumerate(vmems):
        if v.id == op.id:
            vm_rules.check_resize(v, op.requested)
            return [*vmems[:i], replace(v, requested=op.requested), *vmems[i + 1:]]
    raise refuse("unknown-device", f"no virtio-mem {op.id!r} to resize",
                 f"Device '{op.id}' not found", value=op.id, limit=None,
                 fix="resize a virtio-mem an earlier step added")


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
