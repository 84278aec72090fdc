"""The guest kernel's memory-block state machine: zones, states, totals.

:class:`KernelMemory` replays what the kernel does on hot-add, online,
offline and removal, starting from the zones the guest reported at boot
(:class:`~harness.model.kernel.inputs.KernelPolicy`).  It is pure: the
session feeds it the steps and compares its answers with the guest.

Each method follows a kernel function (mm/memory_hotplug.c and
drivers/base/memory.c, identical in 6.1.190, 6.12.95 and 7.2.13 unless
:mod:`.rules` says otherwise):

* ``hot_add`` -- ``add_memory_resource()``: one block device per memory
  block, then, unless ``auto_online_blocks`` is ``offline``,
  ``walk_memory_blocks(..., online_memory_block)``: every block in address
  order with that online type.  The ACPI driver registers one static
  memory group per DIMM (``memory_group_register_static``, max_pages = the
  DIMM's pages).
* ``online`` -- ``state_store()`` -> ``device_online()``: an online block
  answers -EINVAL; otherwise ``memory_block_online()`` with the zone of
  ``zone_for_pfn_range()``.
* ``offline`` -- ``device_offline()``: an offline block answers -EINVAL;
  otherwise ``offline_pages()``, which for a kernel zone may fail with
  -EBUSY (unmovable pages; not predictable from outside), and for
  ZONE_MOVABLE migrates the pages away.
* ``remove`` -- the ACPI eject offlines every online block, then removes.

Zone spans matter: ``zone_intersects()`` looks at a zone's *span*, which
``resize_zone_range()`` grows on online and ``shrink_zone_span()`` shrinks
only when the offlined range is at the span's start or end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from harness.model.kernel.inputs import KERNEL_ZONES, PAGE_SIZE, KernelPolicy, ZoneInfo
from harness.model.kernel.rules import KernelRules, rules_for


@dataclass
class _Zone:
    start: int = 0  # pfn
    end: int = 0  # pfn, exclusive; start == end: empty
    present: int = 0
    present_early: int = 0
    cma: int = 0

    @property
    def empty(self) -> bool:
        return self.end <= self.start

    def intersects(self, start: int, pages: int) -> bool:
        # include/linux/mmzone.h zone_intersects()
        if self.empty:
            return False
        return not (start >= self.end or start + pages <= self.start)


@dataclass
class _Group:
    max_pages: int
    present_kernel: int = 0
    present_movable: int = 0


@dataclass(frozen=True)
class BlockState:
    """The model's view of one hot-added memory block."""

    number: int
    node: int
    group: str
    state: str  # "online" | "offline"
    zone: str | None  # zone when online
    memmap_pages: int  # pages of the block holding its own memmap (never managed)
    valid_zones: tuple[str, ...] = ()  # what valid_zones shows when offline
    unplugged_pages: int = 0  # virtio-mem sub-blocks not plugged (never managed)


@dataclass(frozen=True)
class Outcome:
    """What a write to one block's ``state`` file is predicted to do."""

    number: int
    ok: bool
    errno: str | None = None  # "EINVAL" when refused
    zone: str | None = None  # the zone the block lands in (online) or leaves (offline)
    may_fail: str | None = None  # an errno the kernel may answer instead ("EBUSY")


@dataclass
class KernelMemory:
    """Replays hot-add/online/offline/remove on the kernel's zones."""

    policy: KernelPolicy
    block_size: int
    rules: KernelRules = field(init=False)
    zones: dict[tuple[int, str], _Zone] = field(init=False)
    blocks: dict[int, BlockState] = field(default_factory=dict, init=False)
    groups: dict[str, _Group] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.rules = rules_for(self.policy.version)
        self.zones = self._boot_zones()

    def _boot_zones(self) -> dict[tuple[int, str], _Zone]:
        return {(z.node, z.name): _zone_from_info(z) for z in self.policy.zones}

    # -- helpers --------------------------------------------------------------
    @property
    def block_pages(self) -> int:
        return self.block_size // PAGE_SIZE

    def _zone(self, node: int, name: str) -> _Zone:
        return self.zones.setdefault((node, name), _Zone())

    def default_kernel_zone(self, node: int, start: int, pages: int) -> str:
        """default_kernel_zone_for_pfn(): the first kernel zone below Normal
        that the range intersects, else Normal."""
        for name in KERNEL_ZONES[:-1]:
            if self._zone(node, name).intersects(start, pages):
                return name
        return "Normal"

    def _default_zone(self, node: int, start: int, pages: int) -> str:
        """default_zone_for_pfn(): inherit the one zone the range lies in;
        otherwise Movable with movable_node, else the kernel zone."""
        kernel = self.default_kernel_zone(node, start, pages)
        in_kernel = self._zone(node, kernel).intersects(start, pages)
        in_movable = self._zone(node, "Movable").intersects(start, pages)
        if in_kernel != in_movable:
            return kernel if in_kernel else "Movable"
        return "Movable" if self.policy.movable_node else kernel

    def _can_online_movable(self, node: int | None, nr_pages: int) -> bool:
        """auto_movable_can_online_movable() for a static group (DIMMs form no
        dynamic groups, so walk_dynamic_memory_groups() adds nothing)."""
        kernel_early = movable = 0
        for (n, name), z in self.zones.items():
            if node is not None and n != node:
                continue
            if z.present == 0:  # populated_zone()
                continue
            if name == "Movable":
                movable += z.present
            else:
                kernel_early += z.present_early - z.cma
                movable += z.cma
        movable += nr_pages
        return movable <= (self.policy.auto_movable_ratio * kernel_early) // 100

    def _auto_movable_zone(self, node: int, group: _Group, start: int, pages: int) -> str:
        """auto_movable_zone_for_pfn() for a DIMM's static memory group."""
        if not self.policy.auto_movable_ratio:
            return self.default_kernel_zone(node, start, pages)
        if group.present_kernel:
            return self.default_kernel_zone(node, start, pages)
        nr_pages = group.max_pages - group.present_movable
        if not self._can_online_movable(None, nr_pages):
            return self.default_kernel_zone(node, start, pages)
        if self.policy.auto_movable_numa_aware and not self._can_online_movable(node, nr_pages):
            return self.default_kernel_zone(node, start, pages)
        return "Movable"

    def zone_for(self, online_type: str, block: BlockState) -> str:
        """zone_for_pfn_range() for one block."""
        start, pages = block.number * self.block_pages, self.block_pages
        if online_type == "online_kernel":
            return self.default_kernel_zone(block.node, start, pages)
        if online_type == "online_movable":
            return "Movable"
        if self.policy.online_policy == "auto-movable":
            return self._auto_movable_zone(block.node, self.groups[block.group], start, pages)
        return self._default_zone(block.node, start, pages)

    def valid_zones(self, block: BlockState) -> tuple[str, ...]:
        """valid_zones_show() of an offline block: the MMOP_ONLINE zone, then
        the online_kernel and online_movable zones if they differ from it."""
        default = self.zone_for("online", block)
        out = [default]
        for kind in ("online_kernel", "online_movable"):
            z = self.zone_for(kind, block)
            if z != default:
                out.append(z)
        return tuple(out)

    # -- state changes ------------------------------------------------------------
    def _do_online(self, n: int, online_type: str) -> Outcome:
        block = self.blocks[n]
        if block.state == "online":  # device_online() returns 1: state_store() -EINVAL
            return Outcome(n, False, "EINVAL")
        zone_name = self.zone_for(online_type, block)
        self._account(n, zone_name)
        return Outcome(n, True, zone=zone_name)

    def _do_offline(self, n: int) -> Outcome:
        block = self.blocks[n]
        if block.state != "online":  # device_offline() returns 1: state_store() -EINVAL
            return Outcome(n, False, "EINVAL")
        assert block.zone is not None
        zone_name = block.zone
        self._release(block)
        # A kernel zone may hold unmovable pages: offline_pages() -EBUSY.
        return Outcome(n, True, zone=zone_name,
                       may_fail=None if zone_name == "Movable" else "EBUSY")

    def _release(self, block: BlockState) -> None:
        """Take an online block out of its zone (and its group's count): offline."""
        assert block.zone is not None
        start, pages = block.number * self.block_pages, self.block_pages
        z = self._zone(block.node, block.zone)
        z.present -= pages
        group = self.groups[block.group]
        if block.zone == "Movable":
            group.present_movable -= pages
        else:
            group.present_kernel -= pages
        # shrink_zone_span(): only a range at the span's start or end shrinks it,
        # to the nearest remaining online memory of that zone on that node.
        others = [b for b in self.blocks.values()
                  if b.number != block.number and b.state == "online" and b.node == block.node
                  and b.zone == block.zone]
        boot = self._boot_span(block.node, block.zone)
        if z.start == start:
            cands = [b.number * self.block_pages for b in others
                     if b.number * self.block_pages >= start + pages]
            if boot is not None and boot[0] >= start + pages:
                cands.append(boot[0])
            if cands:
                z.start = min(cands)
            else:
                z.start = z.end = 0
        elif z.end == start + pages:
            cands = [(b.number + 1) * self.block_pages for b in others
                     if b.number * self.block_pages < start]
            if boot is not None and boot[0] < start:
                cands.append(min(boot[1], start))
            if cands:
                z.end = max(cands)
            else:
                z.start = z.end = 0
        self.blocks[block.number] = replace(block, state="offline", zone=None)

    def _boot_span(self, node: int, zone: str) -> tuple[int, int] | None:
        for z in self.policy.zones:
            if z.node == node and z.name == zone and z.spanned and z.present:
                return z.start_pfn, z.end_pfn
        return None

    # -- the operations a session performs ------------------------------------------------
    def hot_add(self, group: str, node: int, blocks: Iterable[int], dimm_size: int,
                *, memmap: bool = True) -> list[Outcome]:
        """A DIMM the guest accepted: its blocks appear (and come online by
        themselves when ``auto_online_blocks`` says so, in address order).
        ``memmap=False``: the adder never asks for memmap_on_memory
        (virtio-mem's ``add_memory_driver_managed()`` calls)."""
        numbers = sorted(blocks)
        self.groups[group] = _Group(max_pages=dimm_size // PAGE_SIZE)
        memmap_pages = (self.rules.memmap_pages(self.policy, self.block_size, dimm_size)
                        if memmap else 0)
        for n in numbers:
            self.blocks[n] = BlockState(n, node, group, "offline", None, memmap_pages)
        auto = self.policy.auto_online
        if auto is None:
            return []
        return [self._do_online(n, auto) for n in numbers]

    def online(self, numbers: Iterable[int], online_type: str) -> list[Outcome]:
        return [self._do_online(n, online_type) for n in numbers]

    def offline(self, numbers: Iterable[int]) -> list[Outcome]:
        return [self._do_offline(n) for n in numbers]

    def _account(self, number: int, zone_name: str) -> None:
        block = self.blocks[number]
        start, pages = number * self.block_pages, self.block_pages
        z = self._zone(block.node, zone_name)
        if z.empty or start < z.start:  # resize_zone_range()
            z.start = start
        z.end = max(start + pages, z.end if not z.empty else 0)
        z.present += pages
        group = self.groups[block.group]
        if zone_name == "Movable":
            group.present_movable += pages
        else:
            group.present_kernel += pages
        self.blocks[number] = replace(block, state="online", zone=zone_name)

    def sync(self, number: int, state: str, zone: str | None) -> None:
        """Follow the guest where the model cannot know (after an ACPI eject
        the guest refused, which re-onlines what it had offlined)."""
        block = self.blocks[number]
        if block.state == state and block.zone == zone:
            return
        if block.state == "online":
            self._release(block)
        if state == "online" and zone is not None:
            self._account(number, zone)

    def remove(self, group: str) -> None:
        for block in [b for b in self.blocks.values() if b.group == group]:
            if block.state == "online":
                self._release(block)
            del self.blocks[block.number]
        self.groups.pop(group, None)

    def reboot(self, dimms: Iterable[tuple[str, int, tuple[int, ...], int]]) -> list[Outcome]:
        """After a reset the zones are the boot zones again, and the DIMMs
        still plugged are added anew by the ACPI driver at boot (by slot)."""
        self.zones = self._boot_zones()
        self.blocks.clear()
        self.groups.clear()
        out: list[Outcome] = []
        for group, node, blocks, size in dimms:
            out += self.hot_add(group, node, blocks, size)
        return out

    # -- what the guest should show -----------------------------------------------------
    def block_view(self) -> list[BlockState]:
        out = []
        for n in sorted(self.blocks):
            b = self.blocks[n]
            vz = self.valid_zones(b) if b.state == "offline" else ((b.zone,) if b.zone else ())
            out.append(replace(b, valid_zones=vz))
        return out

    def set_unplugged_pages(self, number: int, pages: int) -> None:
        """A virtio-mem block's pages that are not plugged (fake-offline)."""
        self.blocks[number] = replace(self.blocks[number], unplugged_pages=pages)

    def managed_bytes(self, number: int) -> int:
        """Bytes a block adds to MemTotal while online."""
        b = self.blocks[number]
        return (self.block_pages - b.memmap_pages - b.unplugged_pages) * PAGE_SIZE


def _zone_from_info(z: ZoneInfo) -> _Zone:
    if z.spanned and z.present:
        return _Zone(z.start_pfn, z.end_pfn, z.present, z.present, z.cma)
    return _Zone(0, 0, z.present, z.present, z.cma)
