"""The guest's virtio-mem driver in Sub Block Mode: which ``memoryN`` blocks
exist for a plugged size, their state, and the bytes MemTotal counts.

Read in ``drivers/virtio/virtio_mem.c`` of Debian's 6.1.190, 6.12.117,
7.2.13 (sid) and 7.3.4 (trixie-backports, 7.3.4-1~bpo13+1); the Sub Block
Mode (SBM) algorithm below is the same in all (the 6.12 changes --
``virtio_mem_sbm_try_remove_unplugged_mb()`` retrying the removal of fully
unplugged blocks, hibernation/suspend notifiers, fake-offline page
accounting -- do not change which blocks exist once the driver settles;
6.12.107 -> 7.2.13: ``usable_region_size`` kept in the device for the new
kdump ``get_device_ram`` callback, ``alloc_contig_range(..., ACR_FLAGS_NONE)``
for ``MIGRATE_MOVABLE``, ``virtio_device_ready()`` moved into the init
paths, ``hrtimer_setup()``; 7.2.13 -> 7.3.4: macro hygiene in
``virtio_mem_bbm_for_each_bb*`` and a comment typo), so there is one rule
set (:data:`RULES`) for 6.1-7.3.  :func:`rules_for` answers every version:
outside 6.1-7.3 with these rules and ``extrapolated_from`` naming the
version read they come from.  Checked against the running
Debian 6.1 guest (QEMU 7.2 and 10.0: tests/scenarios/test_virtio_mem.py)
and 6.12.95 (QEMU 10.0: tests/kernels/test_virtio_mem_612.py).

* ``virtio_mem_init()``: SBM when the sub-block size
  ``max(device block size, pageblock = 2 MiB)`` is below the Linux memory
  block size (128 MiB here); BBM (big blocks) otherwise -- not modelled
  (:class:`UnmodelledDriver`).  The first usable Linux block is the device
  address rounded *up* to a memory block, the last one ends at the device
  end rounded *down* (``first_mb_id``, ``last_usable_mb_id``).
  ``offline_threshold = max(2 * memory block, 1 GiB)``.
* ``virtio_mem_sbm_plug_request()``: plug sub-blocks into partially plugged
  blocks first (kernel-zone, then movable, then offline ones, each in
  ascending block order; within a block the lowest unplugged sub-blocks,
  ``virtio_mem_sbm_plug_any_sb()``), then re-use removed ("unused") blocks,
  then new ones (``virtio_mem_sbm_prepare_next_mb()``), each plugged from
  sub-block 0 and added with ``add_memory_driver_managed()`` -- where the
  kernel's auto-online policy onlines it (or not).  Before adding a block,
  ``virtio_mem_could_add_memory()``: the added-but-offline memory plus one
  block must stay within ``offline_threshold``, else the driver stops
  (-ENOSPC) until something onlines memory.  So on a guest that onlines
  nothing (Debian 6.1 without ``memhp_default_state=``), at most
  ``offline_threshold / block`` blocks (8 here, 1 GiB) get plugged, whatever
  was requested.
* ``virtio_mem_sbm_unplug_request()``: blocks in the order offline-partial,
  offline, movable-partial, kernel-partial, movable, kernel; each in
  *descending* block order; an online block fully plugged with enough left
  to unplug goes as a whole (``offline_and_remove_memory()``), otherwise
  sub-blocks go from the block's end (``virtio_mem_sbm_unplug_any_sb_*``);
  a block left with no plugged sub-block is removed.  Sub-blocks of an
  online block are fake-offlined (``virtio_mem_fake_offline()``,
  ``alloc_contig_range()``): reliable in ZONE_MOVABLE, but in a kernel zone
  it may fail (-EBUSY) on unmovable pages -- *not determined by the
  inputs*.  ``virtio_mem_sbm_unplug_any_sb_online()`` then skips the busy
  sub-block, tries the next lower ones and the next blocks, and
  ``virtio_mem_sbm_unplug_request()`` returns -EBUSY, so the driver retries
  on a timer (``VIRTIO_MEM_RETRY_TIMER_MIN_MS`` = 50 s, doubling to 5 min):
  for the time a step waits, busy kernel-zone sub-blocks stay plugged.
  :meth:`VirtioMemDriver.resize` then reports ``uncertain``, predicts the
  outcome if every attempt succeeds, and keeps in :attr:`VirtioMemDriver.may_stay`
  the plugged sub-blocks of kernel-zone blocks it unplugged: the kernel may
  leave any of them plugged (:meth:`VirtioMemDriver.accept` tells an
  observed outcome of that kind from a wrong one).  On a kernel that onlines
  hot-added memory by itself (``memhp_default_state=online``, or 6.12's
  Debian config) every block is in ZONE_NORMAL, and an idle guest leaves a
  few MiB busy (8-12 MiB seen on 6.12.95 when unplugging 3 GiB).
* Memory never carries its memmap (no ``MHP_MEMMAP_ON_MEMORY`` in
  ``virtio_mem_add_memory()``), and unplugged sub-blocks of an online block
  stay ``PageOffline`` and unmanaged (``virtio_mem_online_page()``), so
  MemTotal counts exactly the plugged bytes of online blocks (checked on
  6.1: +3 GiB plugged = +3145728 kB, then +2 MiB = +2048 kB).
* Every block is on the device's node (``memory_add_physaddr_to_nid`` is
  bypassed: ``MHP_NID_IS_MGID`` with the device's node in its memory group).

Pure: operates on a :class:`~harness.model.kernel.memory.KernelMemory`,
one block group per Linux memory block (``<device>#<block>``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness.model.changes import clamp
from harness.model.kernel.inputs import PAGE_SIZE, PAGEBLOCK_PAGES
from harness.model.kernel.memory import KernelMemory

PAGEBLOCK_BYTES = PAGEBLOCK_PAGES * PAGE_SIZE  # pageblock_nr_pages * PAGE_SIZE: 2 MiB
DEFAULT_OFFLINE_THRESHOLD = 1 << 30  # VIRTIO_MEM_DEFAULT_OFFLINE_THRESHOLD
MODELLED = ((6, 1), (7, 3))
OLDEST_READ, NEWEST_READ = MODELLED


class UnmodelledDriver(ValueError):
    """A virtio-mem configuration the model was not read for (Big Block Mode,
    the auto-movable policy's dynamic groups)."""


@dataclass(frozen=True)
class DriverRules:
    name: str
    unplug_online: bool = True  # module parameter unplug_online (default true)
    source: str = ""
    #: The version read whose rules these are, when the kernel is outside
    #: :data:`MODELLED`; None within.
    extrapolated_from: tuple[int, int] | None = None


RULES = DriverRules(
    "6.1-7.3", source="drivers/virtio/virtio_mem.c virtio_mem_init, "
    "virtio_mem_sbm_plug_request, virtio_mem_sbm_unplug_request, "
    "virtio_mem_sbm_unplug_any_sb_online (6.1.190, 6.12.117, 7.2.13, 7.3.4)")


def rules_for(version: tuple[int, int]) -> DriverRules:
    """The driver's rules for a kernel MAJOR.MINOR; never refuses (outside
    :data:`MODELLED`: the nearest version read, named in ``extrapolated_from``)."""
    return replace(RULES, extrapolated_from=clamp(version, OLDEST_READ, NEWEST_READ)[1])


@dataclass
class VirtioMemDriver:
    """One virtio-mem device as the guest driver sees it (SBM)."""

    id: str
    addr: int
    region_size: int
    device_block_size: int
    node: int
    memory_block_size: int
    offline_threshold: int = DEFAULT_OFFLINE_THRESHOLD
    plugged: dict[int, int] = field(default_factory=dict)  # block -> plugged sub-blocks
    next_mb: int = field(init=False)
    uncertain: bool = field(default=False, init=False)
    #: Sub-blocks the last resize unplugged from kernel-zone blocks: the ones
    #: ``alloc_contig_range()`` may find busy (block -> count).
    may_stay: dict[int, int] = field(default_factory=dict, init=False)
    #: Plugged bytes the kernel kept busy at the last accepted outcome (0: none).
    busy_bytes: int = field(default=0, init=False)
    _before: tuple[dict[str, Any], dict[int, int], int, int] | None = field(
        default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.sb_size = max(self.device_block_size, PAGEBLOCK_BYTES)
        if self.sb_size >= self.memory_block_size:
            raise UnmodelledDriver(
                f"virtio-mem {self.id}: block size {self.device_block_size >> 20} MiB gives "
                "Big Block Mode (sub-block >= Linux memory block), which is not modelled")
        self.sbs_per_mb = self.memory_block_size // self.sb_size
        mbs = self.memory_block_size
        self.offline_threshold = max(2 * mbs, self.offline_threshold)
        self.first_mb = -(-self.addr // mbs)
        self.last_mb = (self.addr + self.region_size) // mbs - 1
        self.next_mb = self.first_mb

    # -- views ----------------------------------------------------------------
    def group(self, mb: int) -> str:
        return f"{self.id}#{mb}"

    @property
    def plugged_size(self) -> int:
        return sum(self.plugged.values()) * self.sb_size

    @property
    def usable_blocks(self) -> range:
        return range(self.first_mb, self.last_mb + 1)

    def _state(self, km: KernelMemory, mb: int) -> str:
        """The driver's VIRTIO_MEM_SBM_MB_* state of an added block."""
        b = km.blocks[mb]
        full = self.plugged[mb] == self.sbs_per_mb
        kind = ("offline" if b.state != "online"
                else "movable" if b.zone == "Movable" else "kernel")
        return kind if full else f"{kind}_partial"

    def _offline_size(self, km: KernelMemory) -> int:
        return sum(self.memory_block_size for mb in self.plugged
                   if km.blocks[mb].state != "online")

    def _sync_pages(self, km: KernelMemory, mb: int) -> None:
        km.set_unplugged_pages(mb, (self.sbs_per_mb - self.plugged[mb]) * self.sb_size
                               // PAGE_SIZE)

    # -- plug -------------------------------------------------------------------
    def _add_block(self, km: KernelMemory, mb: int, count: int) -> None:
        self.plugged[mb] = count
        km.hot_add(self.group(mb), self.node, [mb], self.memory_block_size, memmap=False)
        self._sync_pages(km, mb)

    def _plug(self, km: KernelMemory, nb: int) -> int:
        for kind in ("kernel_partial", "movable_partial", "offline_partial"):
            for mb in sorted(self.plugged):
                if nb and self._state(km, mb) == kind:
                    take = min(nb, self.sbs_per_mb - self.plugged[mb])
                    self.plugged[mb] += take
                    nb -= take
                    self._sync_pages(km, mb)
        # Removed ("unused") blocks first, then new ones up to the last
        # usable block (virtio_mem_sbm_prepare_next_mb(): -ENOSPC after it).
        unused = [mb for mb in range(self.first_mb, self.next_mb) if mb not in self.plugged]
        for mb in [*unused, *range(self.next_mb, self.last_mb + 1)]:
            if not nb:
                return 0
            if self._offline_size(km) + self.memory_block_size > self.offline_threshold:
                return nb  # -ENOSPC: wait for onlining
            self.next_mb = max(self.next_mb, mb + 1)
            take = min(nb, self.sbs_per_mb)
            self._add_block(km, mb, take)
            nb -= take
        return nb

    # -- unplug -----------------------------------------------------------------
    def _remove_block(self, km: KernelMemory, mb: int) -> None:
        del self.plugged[mb]
        km.remove(self.group(mb))

    def _unplug(self, km: KernelMemory, nb: int, rules: DriverRules,
                busy: Mapping[int, int] | None = None) -> int:
        """``virtio_mem_sbm_unplug_request()``; ``busy``: sub-blocks of a
        kernel-zone block that fake-offlining finds busy (skipped, left plugged)."""
        busy = busy or {}
        order = ("offline_partial", "offline", "movable_partial", "kernel_partial",
                 "movable", "kernel")
        for i, kind in enumerate(order):
            for mb in sorted(self.plugged, reverse=True):
                if not nb:
                    return 0
                if mb not in self.plugged or self._state(km, mb) != kind:
                    continue
                stuck = 0
                if kind.startswith("kernel"):
                    self.uncertain = True  # alloc_contig_range() may fail: EBUSY
                    stuck = min(busy.get(mb, 0), self.plugged[mb])
                if (nb >= self.sbs_per_mb and self.plugged[mb] == self.sbs_per_mb
                        and not stuck):
                    nb -= self.sbs_per_mb
                    self._note_kernel(kind, mb, self.sbs_per_mb)
                    self._remove_block(km, mb)
                    continue
                take = min(nb, self.plugged[mb] - stuck)
                self.plugged[mb] -= take
                nb -= take
                self._note_kernel(kind, mb, take)
                if self.plugged[mb] == 0:
                    self._remove_block(km, mb)
                else:
                    self._sync_pages(km, mb)
            if not rules.unplug_online and i == 1:
                return nb
        return nb

    def _note_kernel(self, kind: str, mb: int, count: int) -> None:
        if kind.startswith("kernel") and count:
            self.may_stay[mb] = self.may_stay.get(mb, 0) + count

    def resize(self, km: KernelMemory, requested: int, rules: DriverRules = RULES) -> int:
        """Settle at ``requested`` (virtio_mem_run_wq): plug or unplug the
        difference in sub-blocks; returns the plugged size the driver reaches
        if every attempt succeeds (see :attr:`uncertain`, :meth:`accept`)."""
        self.uncertain = False
        self.may_stay = {}
        self.busy_bytes = 0
        self._before = None
        have = self.plugged_size
        if requested > have:
            self._plug(km, (requested - have) // self.sb_size)
        elif requested < have:
            nb = (have - requested) // self.sb_size
            before = ({k: copy.deepcopy(v) for k, v in vars(km).items()},
                      dict(self.plugged), self.next_mb, nb)
            self._unplug(km, nb, rules)
            if self.uncertain:
                self._before = before
        return self.plugged_size

    def accept(self, km: KernelMemory, plugged_size: int, blocks: set[int],
               rules: DriverRules = RULES) -> str | None:
        """The kernel left ``plugged_size`` plugged in ``blocks`` after an
        uncertain unplug: if some sub-blocks of kernel-zone blocks being busy
        explains it (the driver skips them and goes on, in its order), take
        that outcome as the model's state and return None; otherwise leave the
        prediction as it is and return why the outcome is not one the kernel
        may reach.  Which sub-blocks in a block stay does not show in what is
        compared (blocks present, their zone, MemTotal per node), only how many."""
        want = set(blocks)
        if want == set(self.plugged) and plugged_size == self.plugged_size:
            return None
        if self._before is None:
            return "the last resize unplugged nothing from a kernel zone: its outcome is exact"
        if plugged_size % self.sb_size:
            return f"{plugged_size} bytes is not a whole number of {self.sb_size}-byte sub-blocks"
        kept = want - set(self.plugged)
        if not kept <= set(self.may_stay):
            return (f"blocks {sorted(kept - set(self.may_stay))} were not unplugged from a "
                    "kernel zone: nothing busy can keep them")
        busy = {mb: 1 for mb in kept}
        candidates = sorted(want & set(self.may_stay))
        km_state, plugged0, next_mb0, nb = self._before
        for _ in range(sum(plugged0.values()) + 1):
            self._replay(km, km_state, plugged0, next_mb0, nb, rules, busy)
            if set(self.plugged) == want and self.plugged_size == plugged_size:
                self.busy_bytes = sum(min(busy.get(mb, 0), n) for mb, n in self.plugged.items()
                                      ) * self.sb_size
                return None  # _before stays: the driver's retries may free more
            if self.plugged_size >= plugged_size:
                break
            # Another busy sub-block in a kept kernel-zone block that has one to give.
            grow = next((mb for mb in candidates if busy.get(mb, 0) < plugged0.get(mb, 0)), None)
            if grow is None:
                break
            busy[grow] = busy.get(grow, 0) + 1
        why = (f"no set of busy kernel-zone sub-blocks leaves {plugged_size >> 20} MiB plugged "
               f"in blocks {sorted(want)} (the driver's order and busy sub-blocks give "
               f"{self.plugged_size >> 20} MiB in {sorted(self.plugged)} at best)")
        # Back to the prediction: every attempt succeeds.
        self._replay(km, km_state, plugged0, next_mb0, nb, rules, {})
        return why

    def _replay(self, km: KernelMemory, km_state: dict[str, Any], plugged0: dict[int, int],
                next_mb0: int, nb: int, rules: DriverRules, busy: Mapping[int, int]) -> int:
        for key, value in km_state.items():
            setattr(km, key, copy.deepcopy(value))
        self.plugged, self.next_mb, self.may_stay = dict(plugged0), next_mb0, {}
        return self._unplug(km, nb, rules, busy)

    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted(self.plugged))

    def remove_all(self, km: KernelMemory) -> None:
        """The device is gone (unplugged at size 0, or reset): forget its blocks."""
        for mb in list(self.plugged):
            self._remove_block(km, mb)
        self.next_mb = self.first_mb
