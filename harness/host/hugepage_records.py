"""The hugepage lock and records: what
:func:`harness.host.hugepages.reserved` changed, kept in
``/run/memhp`` so that what a killed memhp left can be given back
(:func:`sweep_stale`).

The lock and the records are host-wide and root's: /run/memhp (0700), not
the caller's TMPDIR, so two memhp runs with different TMPDIRs exclude each
other, and nobody else can plant a record there.  Changing hugepage pools
needs root anyway (_check_can).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

from harness.errors import HostEnvironmentError
from harness.host.hugepage_pools import _POOLS, SYS, parse_mounts, read_pools
from harness.leaks import proc_start_time
from harness.units import KiB

log = logging.getLogger("harness.host.hugepages")


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


def lock_path() -> Path:
    return private_dir(record_dir()) / "hugepages.lock"  # kept: a lock file, not a leak


def record_dir() -> Path:
    return STATE_DIR


def write_nr(page_size: int, nr: int, sysfs_root: Path = SYS) -> None:
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


def restore(record: Mapping[str, object], sysfs_root: Path = SYS,
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
            write_nr(size, pages, sysfs_root)
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
    base = record_dir()
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
        problems = restore(data, sysfs_root, mounts_text)
        if problems:
            log.error("could not fully restore %s: %s", rec, "; ".join(problems))
        rec.unlink(missing_ok=True)
        done.append(rec)
    return done
