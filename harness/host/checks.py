"""Host-side observations of a DIMM's backend, around its plug and unplug.

What the host must show (the expectations come from the model's
:class:`harness.model.predict.PlacedDimm` and its
:class:`harness.model.backend.BackendSpec`):

* ``query-memdev`` reports the backend with the spec's options (QEMU's
  defaults where the spec leaves them out), size, policy and host nodes;
* hugepages: on plug, the pages a new mapping can still reserve
  (HugePages_Free - HugePages_Rsvd, per size) fall by exactly the DIMM's
  pages (Linux mm/hugetlb.c ``hugetlb_reserve_pages()`` at mmap, or the
  faults of ``prealloc``); ``nr_hugepages`` does not move; without
  prealloc HugePages_Rsvd rises by exactly that and Free stays (tp-qemu's
  hotplug_mem_reserve arithmetic; read right after ``device_add``, before
  the guest can touch the memory); with ``prealloc`` Rsvd stays and the
  free pages fall by exactly that, on the one host
  node of ``host_nodes`` when it names one (the kernel keeps no per-node
  reservation count, so only preallocated pages show per node).  On
  unplug they come back, except those a shared file without
  ``discard-data`` keeps (mm/hugetlb.c: a shared file's reservations live
  in its inode until it is truncated or deleted);
* a file backend's file exists while plugged and after unplug (QEMU never
  deletes it); with ``discard-data`` its blocks are gone after unplug
  (backends/hostmem-file.c ``file_backend_unparent()``: MADV_REMOVE).

Each check returns :class:`harness.verify.Mismatch` items (source
``host``), for the step to report like any other disagreement.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.host.hugepage_pools import SYS, PoolState, read_pools
from harness.model.backend import BackendSpec
from harness.verify import Mismatch

MEMDEV_BOOLS = ("share", "prealloc", "reserve", "dump", "merge")


@dataclass(frozen=True)
class HostView:
    """The pools (by page size) at one moment."""

    pools: Mapping[int, PoolState]

    @classmethod
    def read(cls, sysfs_root: Path = SYS) -> HostView:
        return cls({p.page_size: p for p in read_pools(sysfs_root)})


def check_memdev(memdevs: Sequence[Mapping[str, Any]], backend_id: str, spec: BackendSpec,
                 size: int, subject: str) -> list[Mismatch]:
    """``query-memdev`` agrees with the request."""
    found = [m for m in memdevs if m.get("id") == backend_id]
    if not found:
        return [Mismatch("memdev", subject, backend_id, None, "host")]
    got = found[0]
    expect: dict[str, object] = {k: spec.effective(k) for k in MEMDEV_BOOLS}
    expect |= {"size": size, "policy": spec.policy, "host-nodes": list(spec.host_nodes)}
    return [Mismatch(f"memdev {key}", subject, want, got.get(key), "host")
            for key, want in expect.items() if got.get(key) != want]


def check_plug(before: HostView, after: HostView, spec: BackendSpec, pages: int,
               subject: str) -> list[Mismatch]:
    """The hugepage pools moved by exactly ``pages`` (the model's count)."""
    if spec.hugepages is None:
        return []
    size = spec.hugepages
    b, a = before.pools.get(size), after.pools.get(size)
    if b is None or a is None:
        return [Mismatch("hugepage pool", subject, size, None, "host")]
    out = []
    if a.nr != b.nr:
        out.append(Mismatch("nr_hugepages", subject, b.nr, a.nr, "host"))
    if b.available - a.available != pages:
        out.append(Mismatch("hugepages taken (free - rsvd)", subject, pages,
                            b.available - a.available, "host"))
    if pages and not spec.effective("prealloc"):
        # tp-qemu hotplug_mem_reserve: a reservation, nothing faulted yet
        # (the guest has not touched the new memory when this is read)
        if a.resv - b.resv != pages:
            out.append(Mismatch("hugepages reserved (HugePages_Rsvd)", subject, pages,
                                a.resv - b.resv, "host"))
        if a.free != b.free:
            out.append(Mismatch("hugepages faulted in (free)", subject, 0, b.free - a.free,
                                "host"))
    if spec.effective("prealloc"):
        if a.resv != b.resv:
            out.append(Mismatch("hugepages reserved (HugePages_Rsvd)", subject, 0,
                                a.resv - b.resv, "host"))
        if b.free - a.free != pages:
            out.append(Mismatch("hugepages faulted in (free)", subject, pages, b.free - a.free,
                                "host"))
        if len(spec.host_nodes) == 1:
            node = spec.host_nodes[0]
            nb, na = b.node_free(node), a.node_free(node)
            if nb is not None and na is not None and nb - na != pages:
                out.append(Mismatch(f"hugepages free on host node {node}", subject, pages,
                                    nb - na, "host"))
    return out


def file_pages(path: Path | None, spec: BackendSpec) -> int | None:
    """Hugepages in a hugetlbfs file now (its blocks: fs/hugetlbfs counts
    each page it holds in i_blocks)."""
    if path is None or spec.hugepages is None:
        return None
    try:
        return os.stat(path).st_blocks * 512 // spec.hugepages
    except FileNotFoundError:
        return None


def check_unplug(plugged: HostView, after: HostView, spec: BackendSpec, pages: int,
                 subject: str, in_file: int | None = None) -> list[Mismatch]:
    """The pages came back, except what a shared file keeps: all of them
    without ``discard-data``; with it, the punched hole frees the pages
    the file held (``in_file``, read just before the unplug) and their
    accounting, while the reservations of pages never faulted stay with
    the file's inode until it is deleted (Linux mm/hugetlb.c,
    fs/hugetlbfs/inode.c ``remove_inode_single_folio()``: a punch
    unreserves only the folios it removes)."""
    if spec.hugepages is None:
        return []
    size = spec.hugepages
    p, a = plugged.pools.get(size), after.pools.get(size)
    if p is None or a is None:
        return [Mismatch("hugepage pool", subject, size, None, "host")]
    back = pages
    if spec.kind == "file" and spec.effective("share"):
        back = (in_file or 0) if spec.effective("discard_data") else 0
    if a.available - p.available != back:
        return [Mismatch("hugepages returned (free - rsvd)", subject, back,
                         a.available - p.available, "host")]
    return []


def check_file(path: Path | None, spec: BackendSpec, *, plugged: bool, subject: str
               ) -> list[Mismatch]:
    """A file backend's file: there while plugged; after unplug still there,
    emptied when ``discard-data`` is on."""
    if spec.kind != "file" or path is None:
        return []
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [Mismatch("backend file", subject, str(path), "missing", "host")]
    if not plugged and spec.effective("discard_data") and st.st_blocks:
        return [Mismatch("backend file blocks after discard-data", subject, 0,
                         st.st_blocks * 512, "host")]
    return []


class TouchPagesSampler:
    """Counts QEMU's "touch_pages" threads (prealloc; named with
    ``-name ...,debug-threads=on``) while a block runs: the most seen at
    once is :attr:`peak`.  Sampling cannot prove a short-lived thread
    never ran, so only more threads than QEMU's rule allows is a finding;
    :attr:`samples` says how often it looked."""

    def __init__(self, pid: int, interval: float = 0.0005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self) -> int:
        n = 0
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return 0
        for tid in tasks:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    n += f.read().strip() == "touch_pages"
            except OSError:
                continue
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._count())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TouchPagesSampler:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
