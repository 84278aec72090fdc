"""Where an untrusted scenario may make QEMU write on the host.

A scenario file is data: it may come from a pull request and run in CI,
where QEMU runs as root.  A file backend's ``mem_path`` is handed to QEMU,
which creates, grows, maps and (with ``discard_data``) zeroes what it
names.  So a ``mem_path`` is accepted only when:

* it lies inside a directory the user allowed on the command line
  (``--allow-mem-path DIR``; none by default), compared after resolving
  the allowed directory, and no component of the path below that
  directory is a symlink;
* it names a directory there (memhp then creates a file of its own inside
  it and removes it afterwards), or a file that does not exist yet in an
  existing directory (created by QEMU, removed by memhp afterwards);
* never an existing file, device, FIFO or socket: QEMU would overwrite,
  grow or zero it.

Without ``mem_path`` memhp picks a file in a private 0700 directory of the
VM's, or on a hugetlbfs it reserved (harness.host.hugepages), and nothing
here applies.  The check runs before any VM starts (``memhp run``,
``compare``, ``bisect``) and again just before QEMU is asked to open the
path (:meth:`harness.qemu.vm.VM.backend_path`), so a symlink planted in
between is refused too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import UsageError

FIX = ("pass --allow-mem-path DIR to let scenarios put backend files in DIR, or drop "
       "mem_path so memhp picks a private file")


def allowed_dirs(values: Iterable[str | Path]) -> tuple[Path, ...]:
    """``--allow-mem-path`` values as resolved existing directories."""
    out = []
    for value in values:
        p = Path(value)
        if not p.is_absolute() or not p.is_dir():
            raise UsageError(f"--allow-mem-path {str(value)!r} is not an existing directory "
                             "given as an absolute path", value=value,
                             fix="create it first, and give it as /absolute/path")
        out.append(p.resolve())
    return tuple(out)


def check_mem_path(mem_path: str, allowed: Sequence[Path], where: str = "mem_path") -> None:
    """UsageError unless ``mem_path`` is one QEMU may be given (see above)."""
    path = Path(mem_path)
    if not path.is_absolute() or ".." in path.parts:
        raise UsageError(f"{where} {mem_path!r} is not an absolute path without '..'",
                         value=mem_path, fix="give an absolute path")
    base = next((a for a in allowed if path == a or a in path.parents), None)
    if base is None:
        dirs = ", ".join(str(a) for a in allowed) or "none"
        raise UsageError(f"{where} {mem_path!r} is outside the directories scenarios may "
                         f"write to (allowed: {dirs})", value=mem_path, fix=FIX)
    # every component below the allowed directory: no symlink
    here = base
    for part in path.relative_to(base).parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if here != path:
                raise UsageError(f"{where} {mem_path!r}: directory {str(here)!r} does not "
                                 "exist", value=mem_path, fix="create it first") from None
            return  # a new file in an existing directory: QEMU creates it, memhp removes it
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{where} {mem_path!r}: {str(here)!r} is a symlink", value=mem_path,
                             fix="name the real path (memhp never follows a link for QEMU)")
        if here != path and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{where} {mem_path!r}: {str(here)!r} is not a directory",
                             value=mem_path, fix="give a directory or a new file in one")
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return  # memhp creates its own file inside
    kind = ("a regular file" if stat.S_ISREG(st.st_mode) else "a block device"
            if stat.S_ISBLK(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket"
            if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise UsageError(f"{where} {mem_path!r} exists and is {kind}: QEMU would overwrite or "
                     "grow it", value=mem_path,
                     fix="name a directory (memhp makes its own file inside) or a file that "
                         "does not exist yet")


def scenario_mem_paths(scenario: Any) -> list[tuple[str, str]]:
    """(where, mem_path) of every file backend of ``scenario`` naming one:
    hot-added and cold-plugged DIMMs."""
    out = []
    for i, step in enumerate(scenario.steps):
        add = getattr(step, "op", None)  # an AddStep's device
        path = getattr(getattr(add, "backend", None), "mem_path", None)
        if path is not None:
            out.append((f"step {i + 1}: mem_path", path))
    for d in getattr(scenario.machine, "coldplug", ()):
        path = getattr(getattr(d, "backend", None), "mem_path", None)
        if path is not None:
            out.append((f"cold-plugged {d.id}: mem_path", path))
    return out


def check_scenario(scenario: Any, allowed: Sequence[Path]) -> None:
    for where, path in scenario_mem_paths(scenario):
        check_mem_path(path, allowed, where)
