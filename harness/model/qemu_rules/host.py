"""Whether the host kernel lets QEMU map a RAM backend of a given size.

QEMU maps each ``memory-backend-ram`` (``reserve=on``, the default) with
``qemu_anon_ram_alloc()``; when the host kernel refuses, ``ram_block_add()``
(softmmu/physmem.c v7.2.0, system/physmem.c v10.0.0) fails with
``cannot set up guest memory 'ID': Cannot allocate memory``: at start-up for
the boot RAM, at ``object-add`` for a DIMM's backend.

The host kernel's verdict (Linux mm/util.c ``__vm_enough_memory()``), per
``vm.overcommit_memory``:
  * 0 (heuristic): refused when the one mapping is larger than total RAM +
    swap;
  * 1 (always): never refused;
  * 2 (never): refused when it would take the committed address space past
    CommitLimit.
The facts are inputs (``/proc/meminfo``, ``/proc/sys/vm/overcommit_memory``),
read by the caller; the model stays pure.  Mode 2 depends on what else the
host commits meanwhile, so it is a prediction at the time of reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HugepagePool:
    """One hugepage size of the host: pages a new mapping can still
    reserve (``free_hugepages - resv_hugepages`` of
    /sys/kernel/mm/hugepages/hugepages-NkB), and the free pages per node
    (/sys/devices/system/node/nodeN/hugepages/hugepages-NkB/free_hugepages).

    Linux mm/hugetlb.c ``hugetlb_reserve_pages()`` -> ``hugetlb_acct_memory()``
    refuses a reservation larger than that (-ENOMEM), which QEMU reports as
    "unable to map backing store for guest RAM: Cannot allocate memory"
    (system/physmem.c ``file_ram_alloc()``).
    """

    page_size: int
    available: int
    node_free: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class HostMemory:
    """The host's memory facts.  ``mem_total`` 0 means "not read" (no RAM
    mapping is then predicted to fail); ``hugepages`` None means the
    hugepage pools were not read (no hugepage refusal is predicted);
    ``nodes`` None means the host's NUMA nodes were not read."""

    mem_total: int = 0
    swap_total: int = 0
    overcommit: int = 0
    commit_limit: int = 0
    committed: int = 0
    hugepages: tuple[HugepagePool, ...] | None = None
    nodes: tuple[int, ...] | None = field(default=None)
    # free bytes of the file system at a file backend's mem_path (as the
    # spec spells the path; statvfs f_bavail * f_frsize), where read
    fs_free: tuple[tuple[str, int], ...] = ()
    # file backends' mem_paths (as the spec spells them) that neither exist
    # nor can be created: their directory is missing, where read
    unopenable: tuple[str, ...] = ()

    def free_at(self, mem_path: str) -> int | None:
        """Free bytes where ``mem_path`` puts the backend's file, if read."""
        for path, free in self.fs_free:
            if path == mem_path:
                return free
        return None

    def hugepages_available(self, page_size: int) -> int | None:
        """Pages of ``page_size`` a new mapping can reserve; None if not read
        (0 when the host has no such pool)."""
        if self.hugepages is None:
            return None
        for pool in self.hugepages:
            if pool.page_size == page_size:
                return pool.available
        return 0

    def refuses(self, size: int, already: int = 0) -> bool:
        """Would a new ``size``-byte mapping be refused (``already``: bytes
        this plan maps before it, which count in mode 2 only)?"""
        if self.mem_total == 0 or self.overcommit == 1:
            return False
        if self.overcommit == 2:
            return self.committed + already + size > self.commit_limit
        return size > self.mem_total + self.swap_total


def parse_meminfo(meminfo: str, overcommit: str) -> HostMemory:
    """A :class:`HostMemory` from ``/proc/meminfo`` and ``overcommit_memory`` text."""
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isascii() and words[0].isdigit():
            scale = 1024 if len(words) > 1 and words[1] == "kB" else 1
            values[key.strip()] = int(words[0]) * scale
    mode = overcommit.strip()
    return HostMemory(
        mem_total=values.get("MemTotal", 0), swap_total=values.get("SwapTotal", 0),
        overcommit=int(mode) if mode.isascii() and mode.isdigit() else 0,
        commit_limit=values.get("CommitLimit", 0), committed=values.get("Committed_AS", 0))
