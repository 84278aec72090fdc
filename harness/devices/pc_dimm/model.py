"""The pc-dimm's model: QEMU's checks and placement of a hot-added (or
cold-plugged) DIMM, and its unplug.

For each ``AddDimm`` (:func:`_place`), in this order:

0. ``object-add`` creates the backend (:func:`_check_backend`: its
   options, the host's memory and hugepages, the host NUMA policy; see
   :mod:`harness.model.backend` for the backend kinds);
1. the id is not in use (``qdev_set_id()``, softmmu/qdev-monitor.c);
   then the machine takes DIMMs at all (:func:`_check_machine`: virt
   without its ACPI GED device refuses every one);
2. a slot is free -- ``pc_dimm_get_free_slot()`` (hw/mem/pc-dimm.c) takes
   the lowest free slot, and fails when no slots were configured (also
   with maxmem but no slots: QEMU starts, and every DIMM is refused);
3. the DIMMs fit in ``maxmem - mem`` -- ``memory_device_check_addable()``
   (hw/mem/memory-device.c);
4. the explicit address and the size are multiples of the backend's
   alignment (:attr:`harness.model.backend.BackendSpec.alignment`: 2 MiB
   for RAM backends on an x86_64 Linux host, the page size for file and
   memfd backends -- 4 KiB, 2 MiB or 1 GiB); the order of the two checks,
   and whether the size is checked at all, depends on the QEMU version
   (``QemuRules.size_check``, :mod:`harness.model.qemu_rules`);
5. an address: an explicit 0 means none (``memory_device_pre_plug()``
   passes ``!addr ? NULL : &addr``, v7.2.0 and v10.0.0); an explicit one
   must lie in the device-memory region and not overlap another device;
   otherwise first fit from the region's start, stepping past each device
   (sorted by address) to ALIGN_UP(its end, align), ``align`` being the
   new DIMM's own backend alignment (:mod:`harness.devices.memory_device`);
6. the node exists -- ``pc_dimm_realize()`` (after pre-plug).

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
from typing import Any, ClassVar

from harness.devices import memory_device as md
from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import PlanRefused, refuse
from harness.model.backend import HOST_PAGE_SIZE, QEMU_MAX_NODES, BackendSpec, size_to_str
from harness.model.layout import Layout
from harness.model.plan import Plan
from harness.model.spec import MachineSpec
from harness.units import MiB, format_size

KIND = "pc-dimm"


@dataclass(frozen=True)
class PlacedDimm:
    kind: ClassVar[str] = KIND
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
    def hotplug_bytes(self) -> int:
        return self.size if self.guest_accepts else 0

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
    _backend_properties(op)
    _backend_allocation(spec, op, held, already)
    _backend_size(spec, op)
    _backend_numa(spec, op)
    _backend_prealloc(spec, op, dimms)


def _backend_properties(op: AddDimm) -> None:
    """1: the property setters."""
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


def _backend_allocation(spec: MachineSpec, op: AddDimm, held: dict[int, int], already: int
                        ) -> None:
    """2: ``bc->alloc`` and the host's mapping (hugepages included)."""
    be = op.backend
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
                 f"{md.DIMM_BACKEND} backing store size 0x{op.size:x} is too small for 'size' "
                 f"option 0x{want:x} plus 'offset' option 0x0")
        raise refuse("memfd-size", f"DIMM {op.id!r}: a memfd of {op.size} bytes is no "
                     f"multiple of the {HOST_PAGE_SIZE}-byte host page", words,
                     value=op.size, limit=HOST_PAGE_SIZE,
                     fix="give the size in whole 4 KiB pages (e.g. 128M)")
    if _accounted(spec, be):
        try:
            md.check_host(spec, op.size, md.DIMM_BACKEND, already)
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


def _backend_size(spec: MachineSpec, op: AddDimm) -> None:
    """3: v9.1+, the size is a multiple of the backend's page size."""
    be, page = op.backend, op.backend.page_size
    if spec.rules.backend_size_check and be.kind != "ram" and op.size % page:
        raise refuse("backend-size", f"DIMM {op.id!r}: {format_size(op.size)} is no multiple "
                     f"of the backend's {format_size(page)} page size",
                     f"backend '{be.qom_type}' memory size must be multiple of "
                     f"{size_to_str(page)}", value=op.size, limit=page,
                     fix=f"use a multiple of {format_size(page)}")


def _backend_numa(spec: MachineSpec, op: AddDimm) -> None:
    """4: the host NUMA policy."""
    be = op.backend
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


def _backend_prealloc(spec: MachineSpec, op: AddDimm, dimms: Sequence[PlacedDimm]) -> None:
    """5: preallocation on a file system with too little room."""
    be = op.backend
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


def _check_machine(spec: MachineSpec, op: AddDimm) -> None:
    """1b: the machine's pre_plug, before pc_dimm_pre_plug() (the slot):
    hw/arm/virt.c ``virt_memory_pre_plug()`` refuses without the ACPI GED
    (:attr:`harness.machines.base.Machine.acpi_memory_hotplug`)."""
    machine = spec.machine_model
    if not machine.acpi_memory_hotplug:
        raise refuse("no-memory-hotplug", f"DIMM {op.id!r}: machine {machine.name} has no "
                     "ACPI memory hotplug (no firmware, so no ACPI GED device)",
                     machine.memory_hotplug_refusal, value=op.id, limit=None,
                     fix="boot the virt machine with UEFI firmware (-bios QEMU_EFI.fd)")


def _place(spec: MachineSpec, layout: Layout, devices: Sequence[Any], op: AddDimm,
           held: dict[int, int] | None = None) -> PlacedDimm:
    """Place ``op`` among ``devices`` (every memory device plugged); ``held``:
    hugepages (per page size) this plan's DIMMs and kept files hold."""
    dimms = [d for d in devices if d.kind == KIND]
    _check_backend(spec, op, held or {}, spec.ram_size + sum(d.size for d in devices), dimms)
    md.check_unique_id(op, devices)
    _check_machine(spec, op)
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
    md.check_room(spec, op, devices)
    align = op.backend.alignment
    explicit = op.addr if op.addr else None  # address 0 = no address
    checks = {"after-addr": (md.check_addr_align, md.check_size_align),
              "before-addr": (md.check_size_align, md.check_addr_align),
              "none": (md.check_addr_align,)}[spec.rules.size_check]
    for check in checks:
        check(op, explicit, align)
    addr = md.find_addr(layout, devices, op, explicit, align)
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


class PcDimmModel:
    """pc-dimm (hw/mem/pc-dimm.c) as :class:`harness.devices.base.DeviceModel`."""

    kind = KIND
    compared = ("addr", "size", "node", "slot")

    def apply(self, plan: Plan, op: AddDimm) -> None:
        held = dict(plan.kept)
        for d in plan.of(KIND):
            if d.backend.hugepages:
                held[d.backend.hugepages] = held.get(d.backend.hugepages, 0) + d.hugepages
        plan.devices.append(_place(plan.spec, plan.layout, plan.devices, op, held))

    def unplug(self, plan: Plan, device: PlacedDimm) -> None:
        """The ACPI eject takes it; a file backend that keeps its pages (a
        hugetlbfs file QEMU does not delete) still holds them."""
        be = device.backend
        if be.hugepages and be.holds_pages_after_unplug:
            plan.kept[be.hugepages] = plan.kept.get(be.hugepages, 0) + device.hugepages
        plan.replace(device, None)


MODEL = PcDimmModel()
