"""A DIMM's memory backend as the model and the VM driver both see it.

:class:`BackendSpec` is what a scenario asks for (``backend``,
``hugepages``, ``share``, ``prealloc``, ``host_nodes``, ``policy`` ... on
an ``add`` step); it is pure and validated once.  The VM driver turns it
into ``memory-backend-ram|memfd|file`` properties
(:func:`harness.qemu.devices.backend_object`); the model reads from it the
backend's alignment and page size (:meth:`BackendSpec.alignment`).

Only what memhp cannot express is a UsageError here (an unknown kind, a
hugepage size x86-64 has not, ``mem_path`` on a memfd...).  Combinations
QEMU itself refuses (policy ``bind`` without host nodes, ``prealloc`` with
``reserve`` off, a size that is no multiple of the hugepage size...) are
valid specs: QEMU's refusal is predicted with QEMU's words by
:mod:`harness.model.predict`, so a scenario can expect it.

Defaults are QEMU's (v7.2.0 and v10.0.0 alike): ``share`` off, but on for
memfd (backends/hostmem-memfd.c ``memfd_backend_instance_init()``);
``reserve``, ``dump`` and ``merge`` on (backends/hostmem.c
``host_memory_backend_init()``: machine ``dump-guest-core`` and
``mem-merge`` default on); ``seal`` on for memfd; ``discard-data`` off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import UsageError
from harness.units import GiB, KiB, MiB

BackendKind = Literal["ram", "file", "memfd"]
HostPolicy = Literal["default", "bind", "preferred", "interleave"]
KINDS: tuple[str, ...] = ("ram", "file", "memfd")
HOST_POLICIES: tuple[str, ...] = ("default", "bind", "preferred", "interleave")
# The hugepage sizes of x86-64 (arch/x86/mm/hugetlbpage.c: PMD 2 MiB,
# PUD 1 GiB with pdpe1gb).
HUGEPAGE_SIZES: dict[str, int] = {"2M": 2 * MiB, "1G": GiB}
HOST_PAGE_SIZE = 4 * KiB
# QEMU_VMALLOC_ALIGN on an x86-64 Linux host (include/qemu/osdep.h, v7.2.0
# and v10.0.0: 512 * 4096): anonymous RAM is mapped with it and the memory
# region reports it as its alignment (util/oslib-posix.c
# qemu_anon_ram_alloc(); v10.0.0 system/physmem.c qemu_ram_alloc_internal()
# sets it for share=on RAM too, which it backs by a memfd).
QEMU_VMALLOC_ALIGN = 2 * MiB
# QEMU's MAX_NODES (include/sysemu/numa.h v7.2.0, sysemu/numa.h v10.0.0):
# host-nodes at or above it: "Invalid host-nodes value: %d"
# (backends/hostmem.c host_memory_backend_set_host_nodes()).
QEMU_MAX_NODES = 128
MAX_PREALLOC_THREADS = 256
# BackendSpec's boolean options (None: QEMU's default, see effective()).
BOOL_OPTIONS = ("share", "prealloc", "reserve", "dump", "merge", "discard_data", "seal")


def parse_hugepages(value: object, where: str = "hugepages") -> int | None:
    """``"none"`` -> None, ``"2M"`` / ``"1G"`` -> the page size in bytes."""
    if value in (None, "none", False):
        return None
    if isinstance(value, str) and value.upper() in HUGEPAGE_SIZES:
        return HUGEPAGE_SIZES[value.upper()]
    raise UsageError(f"{where} {value!r} is not a hugepage size of x86-64", value=value,
                     fix='use "none", "2M" or "1G"')


def parse_host_nodes(value: object, where: str = "host_nodes") -> tuple[int, ...]:
    """``"0"``, ``"0-1"``, ``"0,2"``, ``[0, 2]`` or ``2`` -> sorted node ids
    (QEMU's ``host-nodes=0-1`` spelling)."""
    fix = 'e.g. host_nodes = "0" or "0-1" or "0,2"'
    if isinstance(value, bool):
        raise UsageError(f"{where} {value!r} is not a node list", value=value, fix=fix)
    if isinstance(value, int):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = list(value)
    elif isinstance(value, str):
        items = []
        for part in value.split(","):
            lo, sep, hi = part.strip().partition("-")
            if not lo.isascii() or not lo.isdigit() or (sep and not (hi.isascii()
                                                                   and hi.isdigit())):
                raise UsageError(f"{where} {value!r} is not a node list", value=value, fix=fix)
            if sep and int(hi) < int(lo):
                raise UsageError(f"{where} {value!r}: range {part.strip()} runs backwards",
                                 value=value, fix=fix)
            if sep and int(hi) - int(lo) > QEMU_MAX_NODES:
                raise UsageError(f"{where} {value!r}: range {part.strip()} is too long",
                                 value=value, fix=fix)
            items += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    else:
        raise UsageError(f"{where} {value!r} is not a node list", value=value, fix=fix)
    nodes: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise UsageError(f"{where}: {item!r} is not a node number", value=value, fix=fix)
        nodes.add(item)
    if len(nodes) > QEMU_MAX_NODES + 1:
        raise UsageError(f"{where}: {len(nodes)} nodes", value=value, fix=fix)
    return tuple(sorted(nodes))


def size_to_str(size: int) -> str:
    """QEMU's util/cutils.c ``size_to_str()`` for a power-of-two size
    (``2 MiB``, ``1 GiB``, ``4 KiB``), the spelling v10.0.0 uses in
    "memory size must be multiple of"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    value = float(size)
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:0.3g} {units[i]}"


def _opt_bool(value: object, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise UsageError(f"backend option {name}={value!r} must be true or false", value=value,
                     fix=f"write {name} = true or {name} = false")


@dataclass(frozen=True)
class BackendSpec:
    """One memory backend: the QOM type, its page size and its options.

    ``hugepages`` is the page size in bytes (2 MiB or 1 GiB) or None.
    ``None`` for a boolean option means "QEMU's default" and is not passed
    to QEMU; :meth:`effective` gives the value QEMU then uses (what
    ``query-memdev`` reports).  ``mem_path`` (file only) None means memhp
    picks: a file in a private directory of the VM's, or, with hugepages,
    in a hugetlbfs mount of that page size (:mod:`harness.host.hugepages`).
    """

    kind: BackendKind = "ram"
    hugepages: int | None = None
    share: bool | None = None
    prealloc: bool | None = None
    prealloc_threads: int | None = None
    reserve: bool | None = None
    dump: bool | None = None
    merge: bool | None = None
    host_nodes: tuple[int, ...] = ()
    policy: HostPolicy = "default"
    mem_path: str | None = None
    discard_data: bool | None = None
    seal: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"backend {self.kind!r} unknown", value=self.kind,
                             fix="use ram, file or memfd")
        if self.hugepages is not None and self.hugepages not in HUGEPAGE_SIZES.values():
            raise UsageError(f"hugepage size {self.hugepages} is not one of x86-64's",
                             value=self.hugepages, fix='use "2M" or "1G"')
        if self.hugepages is not None and self.kind == "ram":
            raise UsageError("memory-backend-ram has no hugepages", value="ram",
                             fix='use backend = "memfd" or "file" with hugepages')
        for name in BOOL_OPTIONS:
            _opt_bool(getattr(self, name), name)
        if self.prealloc_threads is not None:
            t = self.prealloc_threads
            if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= \
                    MAX_PREALLOC_THREADS:
                raise UsageError(f"prealloc_threads={t!r} is not 1..{MAX_PREALLOC_THREADS}",
                                 value=t, fix="e.g. prealloc_threads = 2")
            if not self.prealloc:
                raise UsageError(f"prealloc_threads={t} does nothing without prealloc",
                                 value=t, fix="add prealloc = true, or drop prealloc_threads")
        if self.policy not in HOST_POLICIES:
            raise UsageError(f"host policy {self.policy!r} unknown", value=self.policy,
                             fix="use default, bind, preferred or interleave")
        if not isinstance(self.host_nodes, tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for n in self.host_nodes):
            raise UsageError(f"host_nodes {self.host_nodes!r} is not a tuple of node ids",
                             value=self.host_nodes, fix='e.g. host_nodes = "0"')
        if self.mem_path is not None and self.kind != "file":
            raise UsageError(f"mem_path is for file backends, not {self.kind}",
                             value=self.mem_path, fix='add backend = "file" or drop mem_path')
        if self.mem_path is not None and (not isinstance(self.mem_path, str)
                                          or not self.mem_path.startswith("/")
                                          or "," in self.mem_path or "\0" in self.mem_path):
            raise UsageError(f"mem_path {self.mem_path!r} is not an absolute path",
                             value=self.mem_path,
                             fix="give an absolute path without ',' (a directory or a file)")
        if self.discard_data is not None and self.kind != "file":
            raise UsageError(f"discard_data is for file backends, not {self.kind}",
                             value=self.discard_data, fix='add backend = "file"')
        if self.seal is not None and self.kind != "memfd":
            raise UsageError(f"seal is for memfd backends, not {self.kind}", value=self.seal,
                             fix='add backend = "memfd"')

    # -- what QEMU makes of it -------------------------------------------------
    @property
    def qom_type(self) -> str:
        return f"memory-backend-{self.kind}"

    def effective(self, name: str) -> bool:
        """The value QEMU uses for boolean option ``name`` (its default when
        the spec leaves it out)."""
        value = getattr(self, name)
        if value is not None:
            return bool(value)
        if name == "share":
            return self.kind == "memfd"
        if name in ("reserve", "dump", "merge"):
            return True
        if name == "seal":
            return self.kind == "memfd"
        return False

    @property
    def page_size(self) -> int:
        """The RAMBlock's page size: the hugepage size, else the host's
        (system/physmem.c ``file_ram_alloc()``: ``qemu_fd_getpagesize()``,
        which is the hugetlbfs block size, else the host page size)."""
        return self.hugepages or HOST_PAGE_SIZE

    @property
    def alignment(self) -> int:
        """``memory_region_get_alignment()`` of the backend: what QEMU aligns
        a DIMM's address (and, per version, its size) to.

        * ram: QEMU_VMALLOC_ALIGN, 2 MiB (``qemu_anon_ram_alloc()`` sets
          ``mr->align``; v10.0.0 ``qemu_ram_alloc_internal()`` also for
          share=on);
        * file, memfd: the page size (``file_ram_alloc()``:
          ``mr->align = MAX(page_size, mr->align)``, ``mr->align`` 0 unless
          the file backend's ``align`` is set, which memhp does not) -- a
          4 KiB memfd or plain file DIMM is placed on a 4 KiB boundary,
          a 1 GiB-hugepage one on a 1 GiB boundary.

        softmmu/physmem.c (v7.2.0), system/physmem.c (v10.0.0); used by
        hw/mem/memory-device.c ``memory_device_pre_plug()``.
        """
        if self.kind == "ram":
            return QEMU_VMALLOC_ALIGN
        return self.page_size

    def pages(self, size: int) -> int:
        """Hugepages a backend of ``size`` bytes maps (size rounded up to the
        page size: ``file_ram_alloc()`` ROUND_UP); 0 without hugepages."""
        if self.hugepages is None:
            return 0
        return -(-size // self.hugepages)

    @property
    def holds_pages_after_unplug(self) -> bool:
        """A shared hugetlbfs file keeps its pages (and the reservations of
        pages never touched) after QEMU unmaps it; ``discard-data``
        (backends/hostmem-file.c ``file_backend_unparent()``:
        ``qemu_madvise(QEMU_MADV_REMOVE)``, v7.2.0 and v10.0.0) frees only
        the pages the file holds, so only with ``prealloc`` (every page
        faulted in) does it free all.  memhp deletes its files when the VM
        stops.  Without prealloc the model counts all pages as kept (an
        upper bound: what the guest touched comes back)."""
        return self.kind == "file" and self.effective("share") and \
            not (self.effective("discard_data") and self.effective("prealloc"))

    def prealloc_threads_used(self, size: int, host_cpus: int, vcpus: int) -> int:
        """How many "touch_pages" threads QEMU starts to preallocate ``size``
        bytes: util/oslib-posix.c ``get_memset_num_threads()`` (v7.2.0,
        v10.0.0): min(host CPUs, 16, prealloc-threads, pages, max(1, size /
        64 MiB)), prealloc-threads defaulting to the guest's vCPUs
        (backends/hostmem.c ``host_memory_backend_init()``:
        ``machine->smp.cpus``); ``touch_all_pages()`` starts none when that
        is 1 and MADV_POPULATE_WRITE works (Linux 5.14+)."""
        if not self.effective("prealloc"):
            return 0
        pages = -(-size // self.page_size)
        n = min(host_cpus, 16, self.prealloc_threads or vcpus, pages,
                max(1, self.page_size * pages // (64 * MiB)))
        return 0 if n <= 1 else n

    def describe(self) -> str:
        """A short human description, e.g. ``memfd 2M-hugepages share prealloc``."""
        words: list[str] = [self.kind]
        if self.hugepages:
            words.append(f"{self.hugepages >> 20}M-hugepages" if self.hugepages < GiB
                         else f"{self.hugepages >> 30}G-hugepages")
        for name in BOOL_OPTIONS:
            value = getattr(self, name)
            if value is not None:
                words.append(name if value else f"no-{name}")
        if self.prealloc_threads:
            words.append(f"threads={self.prealloc_threads}")
        if self.policy != "default" or self.host_nodes:
            nodes = ",".join(map(str, self.host_nodes)) or "-"
            words.append(f"{self.policy}:{nodes}")
        if self.mem_path:
            words.append(self.mem_path)
        return " ".join(words)


RAM = BackendSpec()
