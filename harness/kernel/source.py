"""The kernel source a build starts from: a user's tree (identified by
path, version and git state) or Debian's ``linux-source-X.Y`` (downloaded
with memhp's own apt and unpacked into ``<cache>/src/`` once, under a lock,
through :mod:`harness.cache`)."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import cache as store
from harness.apt import Apt
from harness.errors import ImageBuildError, UsageError
from harness.image.debs import run_tool

log = logging.getLogger("harness.kernel")

Progress = Callable[[str], None]


#: Builds with tinyconfig + kconfigs/memhp.config on Debian 12's gcc 12.2
#: (measured: 550 CPU-seconds, 1232 compiler runs); linux-source-6.1 still works.
SOURCE_PACKAGE = "linux-source-6.12"


@dataclass(frozen=True)
class KernelSource:
    """An unpacked kernel tree and the string that identifies it in the cache key."""

    path: Path  # the tree; empty until unpacked for a .deb source
    identity: str
    deb: Path | None = None


def _tree_version(tree: Path) -> str:
    head = (tree / "Makefile").read_text(errors="replace")[:2000]
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION) = ?(.*)$", head,
                             re.M))
    return "{}.{}.{}{}".format(fields.get("VERSION", "?"), fields.get("PATCHLEVEL", "?"),
                               fields.get("SUBLEVEL", "?"), fields.get("EXTRAVERSION", ""))


def user_source(tree: Path) -> KernelSource:
    """A kernel tree the user gave; identified by path, version and, in a git
    checkout, the commit and a hash of uncommitted changes to tracked files.
    Other edits are not seen: rebuild with ``force=True`` (``--force``)."""
    tree = tree.expanduser().resolve()
    for rel in ("Makefile", "Kconfig", "scripts/kconfig/merge_config.sh"):
        if not (tree / rel).is_file():
            raise UsageError(f"{str(tree)!r} is not a kernel source tree (no {rel})",
                             value=tree, fix="give the top directory of a Linux source tree")
    identity = f"dir:{tree}:{_tree_version(tree)}"
    if (tree / ".git").exists():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False)
        if head.returncode == 0:
            identity += f":{head.stdout.strip()}"
            diff = subprocess.run(["git", "-C", str(tree), "diff", "HEAD"],
                                  capture_output=True, check=False).stdout
            if diff:
                identity += f":dirty-{hashlib.sha256(diff).hexdigest()[:12]}"
    return KernelSource(tree, identity)


def debian_source_deb(package: str = SOURCE_PACKAGE, progress: Progress | None = None,
                      suite: str | None = None) -> Path:
    """The ``linux-source-X.Y`` .deb (memhp's own apt, :mod:`harness.apt`), cached."""
    say = progress or (lambda msg: log.info("%s", msg))
    if not re.fullmatch(r"linux-source-\d+\.\d+", package):
        raise UsageError(f"source package {package!r} is not a linux-source-X.Y name",
                         value=package, fix="e.g. --source-package linux-source-6.12")
    apt = Apt.for_suite(suite, store.cache_root(), progress=say)
    return apt.download([package], suite)[package]


def unpack_debian_source(deb: Path, progress: Progress | None = None) -> Path:
    """Unpack ``usr/src/linux-source-*.tar.*`` from the .deb into the cache, once."""
    say = progress or (lambda msg: log.info("%s", msg))
    root = store.cache_root() / "src"
    final = root / deb.stem
    with store.lock(root, deb.stem):
        trees = [p for p in final.iterdir() if p.is_dir()] if final.is_dir() else []
        if (final / ".memhp-unpacked").exists() and len(trees) == 1:
            return trees[0]
        say(f"unpacking {deb.name}")
        with store.building(final, mode=0o755, prefix=".unpack-") as tmp:
            run_tool(["dpkg-deb", "-x", str(deb), str(tmp / "deb")], f"unpacking {deb.name}")
            tarballs = sorted((tmp / "deb/usr/src").glob("linux-source-*.tar.*"))
            if not tarballs:
                raise ImageBuildError(f"{deb.name} holds no usr/src/linux-source-*.tar.*")
            run_tool(["tar", "-xf", str(tarballs[0]), "-C", str(tmp)],
                 f"untarring {tarballs[0].name}")
            shutil.rmtree(tmp / "deb")
            (tmp / ".memhp-unpacked").write_text(deb.name + "\n")
        trees = [p for p in final.iterdir() if p.is_dir()]
        if len(trees) != 1:
            raise ImageBuildError(f"{deb.name}: expected one directory in its tarball, "
                                  f"found {[t.name for t in trees]}")
        return trees[0]


def resolve_source(source: Path | None, progress: Progress | None = None,
                   *, unpack: bool = True, package: str = SOURCE_PACKAGE,
                   suite: str | None = None) -> KernelSource:
    """The user's tree, or Debian's ``linux-source-X.Y`` (downloaded and unpacked;
    default :data:`SOURCE_PACKAGE`)."""
    if source is not None:
        return user_source(source)
    deb = debian_source_deb(package, progress, suite)
    tree = unpack_debian_source(deb, progress) if unpack else Path()
    return KernelSource(tree, f"deb:{deb.name}", deb)
