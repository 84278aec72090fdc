"""The host's hugepages: reserve what a test needs, give it back.

Reading the pools and mounts is :mod:`harness.host.hugepage_pools`
(pure parsers over a ``sysfs_root``/text, tested on fake trees):

* ``/sys/kernel/mm/hugepages/hugepages-<N>kB/{nr,free,resv,surplus}_hugepages``
  (Documentation/admin-guide/mm/hugetlbpage.rst);
* ``/sys/devices/system/node/nodeM/hugepages/hugepages-<N>kB/{nr,free,surplus}_hugepages``
  (per node; the kernel keeps no per-node reservation count);
* ``/sys/devices/system/node/has_memory`` (the nodes mbind() accepts);
* hugetlbfs mounts in ``/proc/self/mounts`` (``pagesize=``, else the
  default ``Hugepagesize`` of /proc/meminfo).

Reserving (:func:`reserved`, a context manager): takes a host-wide lock
(one memhp at a time changes the pools), records the original
``nr_hugepages`` of every size it touches in a record file, raises each
pool by what the test needs, checks the kernel really allocated them,
finds a hugetlbfs mount of each size or mounts a private one (0700, under
memhp's work-dir base), and on exit -- normal, exception, Ctrl-C or
SIGTERM -- removes its files and mounts and writes the original counts
back.  A memhp killed with -9 leaves its record; the next :func:`reserved`
(or :func:`harness.host.hugepage_records.sweep_stale`) restores from it.
The lock and the records (:mod:`harness.host.hugepage_records`) live in
``/run/memhp`` (root's, 0700: host-wide, whatever TMPDIR says); a record
is read only when it is a private file of the caller's, and restoring
touches only what memhp itself makes (files ``memhp-<pid>-*`` on a
hugetlbfs, its own mount points, pools the host offers), whatever a
record says.  A plan whose hugepages exceed the host's available memory
is refused before anything changes (:func:`check_room`).

Everything that needs root or a capable host says why it cannot
(:class:`HostCannot`, which tests turn into a skip with that reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from harness import cache as store
from harness.devices.pc_dimm.ops import AddDimm
from harness.host import hugepage_records as records
from harness.host.hugepage_pools import (
    SYS,
    HostCannot,
    PoolState,
    check_room,
    find_hugetlbfs,
    host_nodes,
    needs_of,
    pool,
    read_pools,
)
from harness.leaks import proc_start_time, workdir_base
from harness.model.qemu_rules.host import HostMemory, HugepagePool, parse_meminfo
from harness.retry import wait_for
from harness.units import KiB

log = records.log

LOCK_TIMEOUT_S = 600.0


def host_memory(sysfs_root: Path = SYS, proc_root: Path = Path("/proc")) -> HostMemory:
    """The model's :class:`HostMemory` of this host: RAM, overcommit,
    hugepage pools and NUMA nodes."""
    base = parse_meminfo((proc_root / "meminfo").read_text(),
                         (proc_root / "sys/vm/overcommit_memory").read_text())
    pools = tuple(HugepagePool(p.page_size, p.available,
                               tuple((n, free) for n, _nr, free in p.nodes))
                  for p in read_pools(sysfs_root))
    return HostMemory(base.mem_total, base.swap_total, base.overcommit, base.commit_limit,
                      base.committed, hugepages=pools, nodes=host_nodes(sysfs_root))


def filesystem_free(path: str) -> int:
    """Free bytes (for an unprivileged writer) of the file system holding
    ``path`` (or its directory, when the file does not exist yet)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


@dataclass
class Reservation:
    """What :func:`reserved` set up: hugetlbfs mounts per page size, the
    pools' state right after reserving (the baseline host checks compare
    with), and the files handed out (removed on exit)."""

    mounts: dict[int, Path] = field(default_factory=dict)
    baseline: dict[int, PoolState] = field(default_factory=dict)
    needs: dict[int, int] = field(default_factory=dict)
    record: dict[str, object] = field(default_factory=dict)
    _record_path: Path | None = None

    def new_file(self, page_size: int, name: str) -> Path:
        """A path for a backend file on the ``page_size`` hugetlbfs (QEMU
        creates it; it is deleted when the reservation ends)."""
        try:
            mount = self.mounts[page_size]
        except KeyError:
            raise HostCannot(f"no hugetlbfs of {page_size >> 10} kB pages was set up "
                             f"(reserved: {sorted(self.mounts)})") from None
        path = mount / f"memhp-{os.getpid()}-{name}"
        files = self.record.setdefault("files", [])
        assert isinstance(files, list)
        files.append(str(path))
        self._save()
        return path

    def _save(self) -> None:
        if self._record_path is not None:
            store.write_file(self._record_path, json.dumps(self.record), mode=0o600)


class _Terminated(BaseException):
    """SIGTERM arrived while hugepages were reserved (restored, then re-raised)."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signum}")


def _check_can(needs: Mapping[int, int], sysfs_root: Path) -> dict[int, PoolState]:
    if os.geteuid() != 0:
        raise HostCannot("changing hugepage pools needs root (nr_hugepages is root's)")
    pools = {p.page_size: p for p in read_pools(sysfs_root)}
    for size in needs:
        if size not in pools:
            has = ", ".join(f"{s >> 10} kB" for s in sorted(pools)) or "none"
            raise HostCannot(f"the host kernel offers no {size >> 10} kB hugepages (has: {has})")
    return pools


@contextlib.contextmanager
def reserved(needs: Mapping[int, int], *, mount: bool = True, sysfs_root: Path = SYS,
             lock_timeout: float = LOCK_TIMEOUT_S) -> Iterator[Reservation]:
    """Reserve ``needs`` (page size -> pages) on top of what the host has,
    with a hugetlbfs of each size if ``mount``; everything is given back
    on exit, whatever ends the block."""
    pools = _check_can(needs, sysfs_root)
    lock_path = records.lock_path()
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def locked() -> bool | None:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return None

    try:
        wait_for(locked, what=f"the hugepage lock {lock_path} (another memhp holds it)",
                 timeout=lock_timeout, max_interval=0.5, phase="environment")
    except BaseException:
        os.close(lock_fd)
        raise
    old_term = None
    # SIGTERM's default kills without running `finally`: make it an
    # exception for the block, unless someone (memhp run) already did.
    if threading_main() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        old_term = signal.signal(signal.SIGTERM, _on_term)
    res = Reservation(needs=dict(needs))
    try:
        records.sweep_stale(sysfs_root)
        pools = _check_can(needs, sysfs_root)
        pid = os.getpid()
        res._record_path = (records.private_dir(records.record_dir())
                            / f"memhp-hugepages-{pid}.json")
        res.record = {"pid": pid, "start": proc_start_time(pid),
                      "nr": {str(s): pools[s].nr for s in needs}, "mounts": [], "files": []}
        res._save()
        for size, pages in needs.items():
            want = pools[size].nr + pages
            try:
                records.write_nr(size, want, sysfs_root)
            except OSError as exc:  # read-only sysfs (a container), EPERM...
                raise HostCannot(f"cannot raise nr_hugepages of {size >> 10} kB pages: "
                                 f"{exc}") from exc
            got = pool(size, sysfs_root)
            if got is None or got.nr < want:
                extra = 0 if got is None else got.nr - pools[size].nr
                raise HostCannot(f"the kernel allocated {extra} of the {pages} {size >> 10} kB "
                                 "hugepages asked for "
                                 "(memory too fragmented or too small)")
        if mount:
            for size in needs:
                existing = find_hugetlbfs(size)
                if existing is not None:
                    res.mounts[size] = existing
                    continue
                mp = Path(tempfile.mkdtemp(prefix=f"memhp-{pid}-hugetlbfs-",
                                           dir=workdir_base()))
                os.chmod(mp, 0o700)
                mounts = res.record["mounts"]
                assert isinstance(mounts, list)
                mounts.append(str(mp))
                res._save()
                out = subprocess.run(
                    ["mount", "-t", "hugetlbfs", "-o", f"pagesize={size // KiB}K,mode=0700",
                     "none", str(mp)], capture_output=True, text=True, check=False)
                if out.returncode:
                    raise HostCannot(f"cannot mount hugetlbfs ({size >> 10} kB pages) at {mp}: "
                                     f"{out.stderr.strip()}")
                res.mounts[size] = mp
        res.baseline = {p.page_size: p for p in read_pools(sysfs_root) if p.page_size in needs}
        yield res
    finally:
        problems = records.restore(res.record, sysfs_root) if res.record else []
        if res._record_path is not None:
            if problems:
                log.error("hugepages not fully restored (record kept in %s): %s",
                          res._record_path, "; ".join(problems))
            else:
                res._record_path.unlink(missing_ok=True)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def reserved_for(adds: Iterable[AddDimm], copies: int = 1) -> Iterator[Reservation | None]:
    """:func:`reserved` with what ``adds`` need, or nothing when they need no
    hugepages (``memhp run`` wraps a run in it)."""
    needs = needs_of(adds, copies)
    if not needs:
        yield None
        return
    check_room(needs)
    with reserved(needs) as res:
        yield res
