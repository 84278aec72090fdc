"""Input and output files named on the command line or in a scenario
(which may come from a pull request): a regular file, readable, of bounded
size; an output path that is not a device or a link.  Each refusal is a
:class:`UsageError` naming the path and the fix."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UsageError

# Inputs memhp reads whole (scenarios, keys, result documents) are small;
# kernels and disks are opened by QEMU, not read by memhp.
MAX_READ_BYTES = 16 << 20


def _require_regular(mode: int, path: Path, what: str, fix: str) -> None:
    """UsageError unless ``mode`` is a regular file's (decided from stat)."""
    import stat as _stat

    if _stat.S_ISDIR(mode):
        raise UsageError(f"{what} {str(path)!r} is a directory", value=path, fix=fix)
    if not _stat.S_ISREG(mode):
        kind = ("a FIFO" if _stat.S_ISFIFO(mode) else
                "a device" if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode) else
                "a socket" if _stat.S_ISSOCK(mode) else "not a regular file")
        raise UsageError(f"{what} {str(path)!r} is {kind}, not a regular file", value=path,
                         fix=fix)


def check_readable_file(path: Path, what: str, fix: str, *,
                        max_bytes: int | None = None) -> None:
    """UsageError naming ``path`` unless it is an existing, readable regular
    file (at most ``max_bytes`` long when given).  Decided from ``stat``: a
    FIFO, a device or a directory is refused without being opened."""

    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{what} {str(path)!r} does not exist", value=path, fix=fix) from None
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be read: {exc.strerror}", value=path,
                         fix=fix) from None
    _require_regular(st.st_mode, path, what, fix)
    if max_bytes is not None and st.st_size > max_bytes:
        raise UsageError(f"{what} {str(path)!r} is {st.st_size} bytes, over the limit of "
                         f"{max_bytes}", value=path, fix=fix)
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {str(path)!r} is not readable", value=path,
                         fix="check its permissions")


def check_output_file(path: Path, what: str, fix: str = "give a file name, e.g. out.json"
                      ) -> None:
    """UsageError naming ``path`` unless it is a regular file or a name
    that does not exist yet in an existing directory: a FIFO, a device, a
    socket or a directory is refused without being opened (writing to a
    FIFO with no reader blocks for ever)."""

    try:
        st = path.stat()
    except FileNotFoundError:
        if not path.absolute().parent.is_dir():
            raise UsageError(f"{what} {str(path)!r}: directory {str(path.parent)!r} does not "
                             "exist", value=path, fix="create it first or choose another path"
                             ) from None
        return
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be written: {exc.strerror}", value=path,
                         fix=fix) from None
    _require_regular(st.st_mode, path, what, fix)


def read_small_file(path: Path, what: str, fix: str, *, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """The bytes of a small regular input file (see :func:`check_readable_file`)."""
    check_readable_file(path, what, fix, max_bytes=max_bytes)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror}", value=path,
                         fix=fix) from exc
    if len(data) > max_bytes:
        raise UsageError(f"{what} {str(path)!r} is over the limit of {max_bytes} bytes",
                         value=path, fix=fix)
    return data


def write_text_no_link(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path``, refusing a symbolic link there or as its
    directory (a checked-out pull request can plant one at a default output
    path): the file is opened with O_NOFOLLOW, its directory checked first."""
    if path.parent.is_symlink():
        raise UsageError(f"{what} {str(path.parent)!r} is a symbolic link", value=path.parent,
                         fix="give a real directory")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be written: {exc.strerror}", value=path,
                         fix="remove what is there (a link is never followed)") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
