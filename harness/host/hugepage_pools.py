"""The host's hugepage pools and hugetlbfs mounts, read (pure parsers over a
``sysfs_root``/text, tested on fake trees), and what a plan needs of them:

* ``/sys/kernel/mm/hugepages/hugepages-<N>kB/{nr,free,resv,surplus}_hugepages``
  (Documentation/admin-guide/mm/hugetlbpage.rst);
* ``/sys/devices/system/node/nodeM/hugepages/hugepages-<N>kB/{nr,free,surplus}_hugepages``
  (per node; the kernel keeps no per-node reservation count);
* ``/sys/devices/system/node/has_memory`` (the nodes mbind() accepts);
* hugetlbfs mounts in ``/proc/self/mounts`` (``pagesize=``, else the
  default ``Hugepagesize`` of /proc/meminfo).

A plan whose hugepages exceed the host's available memory is refused
before anything changes (:func:`check_room`).  Everything that needs root
or a capable host says why it cannot (:class:`HostCannot`, which tests
turn into a skip with that reason).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import HostEnvironmentError
from harness.units import KiB

SYS = Path("/sys")


_POOLS = "kernel/mm/hugepages"


_NODES = "devices/system/node"


class HostCannot(HostEnvironmentError):
    """The host cannot provide what a test needs (no such hugepage size,
    not root, no hugetlbfs, too few pages allocated); the message says
    which, for a skip."""


@dataclass(frozen=True)
class PoolState:
    """One hugepage size as sysfs shows it (counts in pages)."""

    page_size: int
    nr: int
    free: int
    resv: int = 0
    surplus: int = 0
    nodes: tuple[tuple[int, int, int], ...] = ()  # (node, nr, free)

    @property
    def available(self) -> int:
        """Pages a new mapping can reserve: free minus reserved."""
        return self.free - self.resv

    def node_free(self, node: int) -> int | None:
        for n, _nr, free in self.nodes:
            if n == node:
                return free
        return None


def _int(path: Path) -> int:
    return int(path.read_text().strip())


def _size_of(dirname: str) -> int | None:
    """``hugepages-2048kB`` -> 2 MiB."""
    if not dirname.startswith("hugepages-") or not dirname.endswith("kB"):
        return None
    digits = dirname[len("hugepages-"):-2]
    return int(digits) * KiB if digits.isascii() and digits.isdigit() else None


def parse_node_list(text: str) -> tuple[int, ...]:
    """A kernel node list (``0``, ``0-1,3``) -> node ids."""
    nodes: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        nodes += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return tuple(nodes)


def read_pools(sysfs_root: Path = SYS) -> tuple[PoolState, ...]:
    """Every hugepage size the host kernel offers, with its counts."""
    base = sysfs_root / _POOLS
    if not base.is_dir():
        return ()
    node_dirs = sorted((p for p in (sysfs_root / _NODES).glob("node[0-9]*") if p.is_dir()),
                       key=lambda p: int(p.name[4:]))
    pools = []
    for d in sorted(base.iterdir()):
        size = _size_of(d.name)
        if size is None:
            continue
        nodes = []
        for nd in node_dirs:
            pd = nd / "hugepages" / d.name
            if pd.is_dir():
                nodes.append((int(nd.name[4:]), _int(pd / "nr_hugepages"),
                              _int(pd / "free_hugepages")))
        pools.append(PoolState(size, _int(d / "nr_hugepages"), _int(d / "free_hugepages"),
                               _int(d / "resv_hugepages"), _int(d / "surplus_hugepages"),
                               tuple(nodes)))
    return tuple(sorted(pools, key=lambda p: p.page_size))


def pool(page_size: int, sysfs_root: Path = SYS) -> PoolState | None:
    for p in read_pools(sysfs_root):
        if p.page_size == page_size:
            return p
    return None


def host_nodes(sysfs_root: Path = SYS) -> tuple[int, ...]:
    """The host NUMA nodes with memory (what mbind() accepts)."""
    path = sysfs_root / _NODES / "has_memory"
    try:
        return parse_node_list(path.read_text())
    except OSError:
        return (0,)


@dataclass(frozen=True)
class Mount:
    path: Path
    page_size: int
    options: str


def parse_mounts(mounts: str, default_page_size: int) -> tuple[Mount, ...]:
    """hugetlbfs mounts in ``/proc/mounts`` text (octal escapes decoded)."""
    out = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        path = fields[1].encode().decode("unicode_escape")
        size = default_page_size
        for opt in fields[3].split(","):
            key, _, value = opt.partition("=")
            if key == "pagesize":
                unit = {"K": KiB, "M": 1 << 20, "G": 1 << 30}.get(value[-1:].upper(), 1)
                size = int(value[:-1] if unit != 1 else value) * unit
        out.append(Mount(Path(path), size, fields[3]))
    return tuple(out)


def default_page_size(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("Hugepagesize:"):
            return int(line.split()[1]) * KiB
    return 2 << 20


def find_hugetlbfs(page_size: int) -> Path | None:
    """A writable hugetlbfs mount of ``page_size`` on this host, if any."""
    meminfo = Path("/proc/meminfo").read_text()
    for m in parse_mounts(Path("/proc/self/mounts").read_text(), default_page_size(meminfo)):
        if m.page_size == page_size and "ro" not in m.options.split(",") \
                and os.access(m.path, os.W_OK):
            return m.path
    return None


def needs_of(adds: Iterable[AddDimm], copies: int = 1) -> dict[int, int]:
    """Hugepages (page size -> pages) enough for every hugepage DIMM of a
    plan at once: an upper bound, as removed DIMMs may give theirs back.
    ``copies`` 2 for a plan that migrates (source and destination QEMU map
    their backends at the same time on this host)."""
    needs: dict[int, int] = {}
    for op in adds:
        be = op.backend
        if be.hugepages:
            needs[be.hugepages] = needs.get(be.hugepages, 0) + copies * be.pages(op.size)
    return needs


def check_room(needs: Mapping[int, int], meminfo_text: str | None = None) -> None:
    """UsageError when ``needs`` (page size -> pages) exceeds the host's
    MemAvailable: raising the pools that far would take memory the host
    does not have (and starve it), so the plan is refused up front."""
    from harness.errors import UsageError

    if not needs:
        return
    if meminfo_text is None:
        meminfo_text = Path("/proc/meminfo").read_text()
    available = 0
    for line in meminfo_text.splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * KiB
    want = sum(size * pages for size, pages in needs.items())
    if available and want > available:
        parts = ", ".join(f"{pages} x {size >> 10} kB" for size, pages in sorted(needs.items()))
        raise UsageError(
            f"the plan needs {want >> 20} MiB of hugepages ({parts}); this host has "
            f"{available >> 20} MiB available", value=want,
            fix="make the hugepage-backed DIMMs smaller, or run on a larger host")
