"""Version-dependent rules of the guest kernel, each with its source.

A rule set is chosen by the guest's MAJOR.MINOR.  The rules were read in
Debian's ``linux-source-6.1`` (6.1.190), ``linux-source-6.12`` (6.12.95,
bookworm-backports), ``linux-source-7.2`` (7.2.13, sid) and
``linux-source-7.3`` (7.3.4-1~bpo13+1, trixie-backports), and checked
against the running 6.1 and 6.12 guests by this project's tests.

7.3 against 7.2.13 (``diff`` of mm/memory_hotplug.c, drivers/base/memory.c,
drivers/acpi/acpi_memhotplug.c, include/linux/memory_hotplug.h): no rule
changed.  acpi_memhotplug.c is identical; memory.c only exports
``mhp_online_type_from_str()``/``mhp_online_type_to_str()``;
memory_hotplug.c passes the online type down explicitly
(``__add_memory_resource(..., online_type)``, ``online_memory_block()`` takes
it from its argument, a new ``__add_memory_driver_managed()`` for kmem),
with ``add_memory_resource()``/``add_memory_driver_managed()`` still passing
``mhp_get_default_online_type()`` -- the same auto-online as 7.2 for ACPI
DIMMs and virtio-mem -- and ``offline_and_remove_memory()`` becomes a
one-range ``offline_and_remove_memory_ranges()`` with the same offline-all,
roll-back-on-failure, then remove semantics.

Every version is answered (:func:`rules_for` never refuses): a kernel newer
than :data:`NEWEST_READ` gets the newest rules and one older than
:data:`OLDEST_READ` the oldest, with :attr:`KernelRules.extrapolated_from`
naming the version read they come from, so a caller can say the model may
be behind (or ahead of) that kernel.

What does *not* vary between 6.1 and 7.2 (the function bodies are the
same in all three trees, so the simulator in :mod:`.memory` has one copy):
``zone_for_pfn_range()``, ``default_kernel_zone_for_pfn()``,
``default_zone_for_pfn()``, ``auto_movable_zone_for_pfn()``,
``auto_movable_can_online_movable()`` (mm/memory_hotplug.c),
``resize_zone_range()``/``shrink_zone_span()``, and ``state_store()``
(drivers/base/memory.c), which returns -EINVAL when ``device_online()`` or
``device_offline()`` finds the block already in the requested state.

What varies is where the memmap of hot-added memory lives with
``memory_hotplug.memmap_on_memory``:

* up to 6.5 (read in 6.1.190): ``mhp_supports_memmap_on_memory(size)``
  requires ``size == memory_block_size_bytes()``; the ACPI driver
  (drivers/acpi/acpi_memhotplug.c ``acpi_memory_enable_device``) asks for
  it per ACPI range, i.e. per DIMM, so only a DIMM of exactly one block
  carries its own memmap;
* from 6.6 (commit "mm/memory_hotplug: split memmap_on_memory requests
  across memblocks"; read in 6.12.95 and 7.2.13): the ACPI driver always
  sets ``MHP_MEMMAP_ON_MEMORY`` and ``create_altmaps_and_memory_blocks()``
  gives *every* block its own altmap of ``memory_block_memmap_on_memory_pages()``
  pages (rounded up to a pageblock in ``force`` mode).

Those pages are present but never managed: ``memory_block_online()``
onlines only the rest, so MemTotal grows by block size minus memmap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.model.changes import clamp
from harness.model.kernel.inputs import PAGE_SIZE, PAGEBLOCK_PAGES, STRUCT_PAGE_SIZE, KernelPolicy

# The kernel releases whose rules are read from their source (inclusive).
MODELLED = ((6, 1), (7, 3))
OLDEST_READ, NEWEST_READ = MODELLED


class UnmodelledKernel(ValueError):
    """The guest kernel is outside the versions the rules were read from.

    :func:`rules_for` no longer raises it (it extrapolates instead); kept
    for callers that catch it."""


@dataclass(frozen=True)
class KernelRules:
    name: str
    per_block_memmap: bool  # 6.6+: every block carries its memmap
    source: str
    #: The version read whose rules these are, when the kernel is outside
    #: :data:`MODELLED` (newer: :data:`NEWEST_READ`; older: :data:`OLDEST_READ`);
    #: None when the kernel is within.
    extrapolated_from: tuple[int, int] | None = None

    def memmap_pages(self, policy: KernelPolicy, block_size: int, dimm_size: int) -> int:
        """Pages of each block of a ``dimm_size`` DIMM that hold its own memmap."""
        if policy.memmap_on_memory == "N":
            return 0
        block_pages = block_size // PAGE_SIZE
        vmemmap_size = block_pages * STRUCT_PAGE_SIZE
        if not self.per_block_memmap:
            # 6.1 mhp_supports_memmap_on_memory(size): one block, PMD-aligned
            # vmemmap, pageblock-aligned remainder.
            remaining = dimm_size - vmemmap_size
            if (dimm_size != block_size or vmemmap_size % (2 << 20)
                    or remaining % (PAGEBLOCK_PAGES * PAGE_SIZE)):
                return 0
            return vmemmap_size // PAGE_SIZE
        # 6.6+ memory_block_memmap_on_memory_pages() and the checks of
        # mhp_supports_memmap_on_memory(void).
        pages = -(-vmemmap_size // PAGE_SIZE)
        if policy.memmap_on_memory == "force":
            pages = -(-pages // PAGEBLOCK_PAGES) * PAGEBLOCK_PAGES
        if vmemmap_size % PAGE_SIZE or pages % PAGEBLOCK_PAGES or pages == block_pages:
            return 0
        if vmemmap_size % (2 << 20):  # arch_supports_memmap_on_memory(): PMD_SIZE
            return 0
        return pages


RULES_6_1 = KernelRules(
    "6.1-6.5", per_block_memmap=False,
    source="mm/memory_hotplug.c mhp_supports_memmap_on_memory(size) (6.1.190); "
           "drivers/acpi/acpi_memhotplug.c acpi_memory_enable_device (6.1.190)")
RULES_6_6 = KernelRules(
    "6.6-7.3", per_block_memmap=True,
    source="mm/memory_hotplug.c mhp_supports_memmap_on_memory(void), "
           "create_altmaps_and_memory_blocks (6.12.95, 7.2.13, 7.3.4); "
           "drivers/acpi/acpi_memhotplug.c (MHP_MEMMAP_ON_MEMORY always)")


def rules_for(version: tuple[int, int]) -> KernelRules:
    """The rule set of a kernel MAJOR.MINOR; never refuses.  Outside
    :data:`MODELLED` the nearest version read is used and named in
    ``extrapolated_from``."""
    applied, extrapolated = clamp(version, OLDEST_READ, NEWEST_READ)
    return replace(_within(applied), extrapolated_from=extrapolated)


def _within(version: tuple[int, int]) -> KernelRules:
    return RULES_6_1 if version < (6, 6) else RULES_6_6


def extrapolation_note(what: str, version: tuple[int, int],
                       extrapolated_from: tuple[int, int] | None) -> str | None:
    """One line saying a rule set is extrapolated (None when it is not)."""
    if extrapolated_from is None:
        return None
    newer = tuple(version) > extrapolated_from
    return (f"Linux {version[0]}.{version[1]} is {'newer' if newer else 'older'} than any "
            f"version memhp's model of {what} was read from: it uses the rules of "
            f"{extrapolated_from[0]}.{extrapolated_from[1]}, the "
            f"{'newest' if newer else 'oldest'} read; a mismatch may mean the model is "
            f"{'behind' if newer else 'ahead of'} this kernel")
