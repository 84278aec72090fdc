"""memhp's cache: where it is, and the one way anything is written into it.

Every cached thing (guest images, kernels, unpacked sources, Debian
packages, fetched QEMUs, the KVM probe's verdict, calibration records,
saved VM states) is written the same way:

* :func:`lock` — an exclusive lock for one key (``<dir>/<key>.lock``,
  filelock), held while one process checks for the entry and builds it;
* :func:`building` — a temp dir beside the entry (same file system, so the
  rename is atomic), removed when the build fails, published when it
  succeeds: readers see a whole entry or none;
* :func:`publish` — the rename itself; when another publisher got there
  first and ``replace`` is false, the loser's temp dir is removed and the
  winner's entry kept;
* :func:`write_file` — a small file written atomically with a given mode
  (``O_EXCL|O_NOFOLLOW`` temp file in the same directory, then rename);
* :func:`private_dir` — a directory of mode 0700 (records and states).

Trust checks on what is read back (owner, type, mode) stay with each
reader: this module only writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock


def cache_root(override: Path | None = None) -> Path:
    """memhp's cache: ``override``, else ``$MEMHP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/memhp``, else ``~/.cache/memhp``."""
    if override is not None:
        return override
    base = os.environ.get("MEMHP_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "memhp"


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700 (made with its parents if need be)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def lock(directory: Path, key: str) -> FileLock:
    """The exclusive lock of ``key`` in ``directory`` (``<directory>/<key>.lock``;
    the directory is made if missing).  Use as ``with lock(d, key): ...``."""
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / f"{key}.lock"))


def temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty directory (mode 0700) inside ``parent``: ``prefix``, a
    random part, ``suffix``."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))


def remove(path: Path) -> None:
    """Remove a file, a link (never its target) or a directory tree; a
    missing path is fine."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A temp dir inside ``parent`` that is removed however the block ends
    (for downloads whose files are published one by one)."""
    tmp = temp_dir(parent, prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path, *, mode: int | None = None, replace: bool = True) -> bool:
    """Rename ``tmp`` (a directory or file beside ``final``) to ``final`` atomically.

    ``mode`` is applied to ``tmp`` first (mkdtemp makes directories 0700;
    a shared CI cache wants 0755).  With ``replace``, an existing ``final``
    is moved aside and removed (a link is unlinked, never followed).
    Without it, a ``final`` that exists already wins: ``tmp`` is removed
    and False returned.  True when ``tmp`` became ``final``."""
    if mode is not None:
        os.chmod(tmp, mode)
    if replace:
        if tmp.is_dir() and (final.exists() or final.is_symlink()):
            old = final.with_name(f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)
            remove(old)
        os.replace(tmp, final)  # a file replaces a file atomically
        return True
    try:
        if tmp.is_dir():
            os.rename(tmp, final)  # fails when final is a non-empty directory
        else:
            os.link(tmp, final)  # fails when final exists
            tmp.unlink()
    except OSError:
        if not (final.exists() or final.is_symlink()):
            remove(tmp)
            raise
        remove(tmp)  # lost the race: the winner's entry stays
        return False
    return True


@contextlib.contextmanager
def building(final: Path, *, mode: int | None = 0o755, replace: bool = True,
             prefix: str = ".build-") -> Iterator[Path]:
    """Build an entry in a temp dir beside ``final``; on success it is
    published (:func:`publish`), on any failure removed.

    Hold the entry's :func:`lock` around it so that only one process
    builds a key; without one, concurrent builders all build and
    (``replace=False``) the first to publish wins."""
    tmp = temp_dir(final.parent, f"{prefix}{final.name}-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        publish(tmp, final, mode=mode, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically with ``mode`` (not reduced by the
    umask): a temp file in the same directory (created exclusively, never
    through a link), then a rename.  A failure leaves ``path`` as it was."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path
