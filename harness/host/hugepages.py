"""The host's hugepages: read the pools, reserve what a test needs, give it back.

Reading (pure parsers over a ``sysfs_root``/text, tested on fake trees):

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
back.  A memhp killed with -9 leaves its record; the next
:func:`reserved` (or :func:`sweep_stale`) restores from it.  The lock and
the records live in ``/run/memhp`` (root's, 0700: host-wide, whatever
TMPDIR says); a record is read only when it is a private file of the
caller's, and restoring touches only what memhp itself makes (files
``memhp-<pid>-*`` on a hugetlbfs, its own mount points, pools the host
offers), whatever a record says.  A plan whose hugepages exceed the host's
available memory is refused before anything changes (:func:`check_room`).

Everything that needs root or a capable host says why it cannot
(:class:`HostCannot`, which tests turn into a skip with that reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import HostEnvironmentError
from harness.leaks import proc_start_time, workdir_base
from harness.model.qemu_rules.host import HostMemory, HugepagePool, parse_meminfo
from harness.retry import wait_for
from harness.units import KiB

log = logging.getLogger("harness.host.hugepages")

SYS = Path("/sys")
_POOLS = "kernel/mm/hugepages"
_NODES = "devices/system/node"
LOCK_TIMEOUT_S = 600.0


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


# -- reserving ------------------------------------------------------------------
# The lock and the records are host-wide and root's: /run/memhp (0700), not
# the caller's TMPDIR, so two memhp runs with different TMPDIRs exclude each
# other, and nobody else can plant a record there.  Changing hugepage pools
# needs root anyway (_check_can).

STATE_DIR = Path("/run/memhp")
#: The most pages a record may ask a pool to be restored to (a sanity bound:
#: 16M pages of 2 MiB are 32 TiB).
MAX_RESTORE_PAGES = 1 << 24


def private_dir(path: Path) -> Path:
    """``path`` as a directory of this user's, mode 0700, that no one else
    can write into (created if missing); HostEnvironmentError otherwise."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise HostEnvironmentError(
            f"{path} is not a private directory of uid {os.geteuid()} (mode 0700, not a "
            f"symlink); memhp keeps its hugepage lock and records there (fix: remove it, or "
            f"chmod 0700 it if it is yours)")
    return path


def _lock_path() -> Path:
    return private_dir(_record_dir()) / "hugepages.lock"  # kept: a lock file, not a leak


def _record_dir() -> Path:
    return STATE_DIR


def _write_nr(page_size: int, nr: int, sysfs_root: Path = SYS) -> None:
    path = sysfs_root / _POOLS / f"hugepages-{page_size // KiB}kB" / "nr_hugepages"
    path.write_text(f"{nr}\n")


def hugetlbfs_mount_points(mounts_text: str | None = None) -> set[Path]:
    """Every hugetlbfs mount point of this host (``/proc/self/mounts``)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/self/mounts").read_text()
        except OSError:
            return set()
    return {m.path for m in parse_mounts(mounts_text, 2 << 20)}


def _ours(path: Path, pid: int) -> bool:
    return path.name.startswith(f"memhp-{pid}-")


def _restore(record: Mapping[str, object], sysfs_root: Path = SYS,
             mounts_text: str | None = None) -> list[str]:
    """Undo what ``record`` says was done; returns what could not be undone.

    Only what memhp itself makes is touched, whatever the record says:
    files named ``memhp-<pid>-*`` directly on a hugetlbfs mount, and mount
    points named ``memhp-<pid>-hugetlbfs-*`` that are hugetlbfs mounts (or
    empty directories); pool sizes the host offers, restored to a bounded
    count.  Anything else in a record is skipped with a warning."""
    problems = []
    mounts = record.get("mounts", [])
    files = record.get("files", [])
    nr = record.get("nr", {})
    pid = record.get("pid")
    if not (isinstance(mounts, list) and isinstance(files, list) and isinstance(nr, dict)
            and isinstance(pid, int) and not isinstance(pid, bool)):
        return [f"malformed record: {record!r:.200}"]
    hugetlbfs = hugetlbfs_mount_points(mounts_text)
    for f in files:  # files first: a mount holding one cannot go
        fp = Path(str(f))
        if not (fp.is_absolute() and _ours(fp, pid) and fp.parent in hugetlbfs):
            log.warning("hugepage record names %s, not a memhp file on a hugetlbfs: left "
                        "alone", fp)
            continue
        with contextlib.suppress(FileNotFoundError):
            fp.unlink()
    for mount in mounts:
        mp = Path(str(mount))
        if not (mp.is_absolute() and mp.name.startswith(f"memhp-{pid}-hugetlbfs-")):
            log.warning("hugepage record names mount %s, not one memhp made: left alone", mp)
            continue
        if mp in hugetlbfs:
            for f in mp.iterdir():
                if _ours(f, pid):
                    with contextlib.suppress(OSError):
                        f.unlink()
            result = subprocess.run(["umount", str(mp)], capture_output=True, text=True,
                                    check=False)
            if result.returncode and mp.is_mount():
                problems.append(f"umount {mp}: {result.stderr.strip()}")
        with contextlib.suppress(OSError):
            mp.rmdir()  # only ever an empty directory
    offered = {p.page_size for p in read_pools(sysfs_root)}
    for size_text, count in nr.items():
        try:
            size, pages = int(str(size_text)), int(count)
        except (TypeError, ValueError):
            problems.append(f"malformed pool count {size_text!r}: {count!r}")
            continue
        if size not in offered or not 0 <= pages <= MAX_RESTORE_PAGES:
            problems.append(f"pool {size_text!r} -> {count!r} is not one to restore")
            continue
        try:
            _write_nr(size, pages, sysfs_root)
        except OSError as exc:
            problems.append(f"nr_hugepages of {size >> 10} kB back to {pages}: {exc}")
    return problems


def _trusted_record(path: Path) -> bool:
    """A record memhp wrote: a regular file of this user's, in a directory
    of this user's that no one else can write, not writable by others."""
    try:
        st, dst = os.lstat(path), os.lstat(path.parent)
    except OSError:
        return False
    uid = os.geteuid()
    return (stat.S_ISREG(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022
            and stat.S_ISDIR(dst.st_mode) and dst.st_uid == uid and not dst.st_mode & 0o022
            and st.st_size < 1 << 20)


def sweep_stale(sysfs_root: Path = SYS, mounts_text: str | None = None) -> list[Path]:
    """Restore what memhp processes that died (kill -9) left reserved."""
    done: list[Path] = []
    base = _record_dir()
    if not base.is_dir():
        return done
    for rec in base.glob("memhp-hugepages-*.json"):
        if not _trusted_record(rec):
            log.warning("ignoring %s: not a private record of this user's", rec)
            continue
        try:
            data = json.loads(rec.read_text())
            alive = proc_start_time(int(data["pid"])) == data["start"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            continue
        log.warning("restoring hugepages left by dead memhp %s: %s", data["pid"], data)
        problems = _restore(data, sysfs_root, mounts_text)
        if problems:
            log.error("could not fully restore %s: %s", rec, "; ".join(problems))
        rec.unlink(missing_ok=True)
        done.append(rec)
    return done


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
            tmp = self._record_path.with_suffix(".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.record))
            tmp.replace(self._record_path)


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
    lock_path = _lock_path()
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
        sweep_stale(sysfs_root)
        pools = _check_can(needs, sysfs_root)
        pid = os.getpid()
        res._record_path = private_dir(_record_dir()) / f"memhp-hugepages-{pid}.json"
        res.record = {"pid": pid, "start": proc_start_time(pid),
                      "nr": {str(s): pools[s].nr for s in needs}, "mounts": [], "files": []}
        res._save()
        for size, pages in needs.items():
            want = pools[size].nr + pages
            try:
                _write_nr(size, want, sysfs_root)
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
        problems = _restore(res.record, sysfs_root) if res.record else []
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
