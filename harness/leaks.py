"""What memhp could leave behind: QEMU processes it started and work dirs.

Every VM's private work dir is ``memhp-PID-XXXX`` with an ``owner`` file
(PID and start time of the memhp that made it).  A ``kill -9`` of memhp
ends its QEMU (PR_SET_PDEATHSIG) but cannot remove the dir; the next memhp
sweeps such dirs whose owner is gone.  The test suite uses the listings
below to prove that nothing leaks (see tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("harness.leaks")


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start_time(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def workdir_base(runtime_dir: Path | None = None) -> Path:
    """Where VM work dirs go: ``runtime_dir``, else $XDG_RUNTIME_DIR, else the
    temp dir, as long as a unix socket path inside still fits."""
    parent = runtime_dir
    if parent is None:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        parent = Path(xdg) if xdg and os.access(xdg, os.W_OK) else None
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    if len(str(base)) > 60:
        # a unix socket path must fit in sun_path (108 bytes)
        base = Path("/tmp")
    return base


def sweep_stale_workdirs(base: Path | None = None) -> list[Path]:
    """Remove the work dirs in ``base`` whose owner process is gone.  The
    owner is recorded as PID and start time, so a recycled PID does not keep
    a dir alive; dirs of other users and dirs without an owner file are left
    alone.  Returns what was removed."""
    base = base or workdir_base()
    removed: list[Path] = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith("memhp-")]
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            pid_text, start = (path / "owner").read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if proc_start_time(pid) != start:
            log.info("removing stale work dir %s (owner pid %d is gone)", path, pid)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def memhp_qemu_pids(under: Path | None = None) -> set[int]:
    """PIDs of running QEMUs started by memhp (named ``-name memhp-...``),
    optionally only those whose work dir is below ``under``."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            status = (d / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        ours = any(a.startswith(b"memhp-") for a in argv) and b"-name" in argv
        if ours and (under is None or any(str(under).encode() in a for a in argv)):
            out.add(int(d.name))
    return out


def memhp_work_dirs(roots: list[Path] | None = None) -> set[Path]:
    """memhp's private VM directories in ``roots`` (default: the temp and
    runtime dirs)."""
    if roots is None:
        roots = [Path(tempfile.gettempdir())]
        if os.environ.get("XDG_RUNTIME_DIR"):
            roots.append(Path(os.environ["XDG_RUNTIME_DIR"]))
    out: set[Path] = set()
    for root in roots:
        try:
            out |= {p for p in root.iterdir() if p.name.startswith("memhp-") and p.is_dir()}
        except OSError:
            continue
    return out
