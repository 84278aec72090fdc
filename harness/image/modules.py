"""Kernel module dependency closure from ``modules.dep`` (or, when a tree has
none, as in an unpacked Debian package, from each module's ``depends=``).

``modules.dep`` lines read ``kernel/drivers/net/virtio_net.ko:
kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko``;
a module's dependencies must be loaded before it.  Names compare with ``-``
and ``_`` treated alike, as modprobe does.
"""

from __future__ import annotations

import gzip
import io
import lzma
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.errors import ImageBuildError


def _norm(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """Path of each module -> paths of its dependencies (modprobe's order)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    return deps


def load_order(deps: Mapping[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """Module paths to insmod, dependencies first, each once."""
    by_name = {_norm(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise ImageBuildError(f"module dependency cycle through {path}")
        visiting.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(_norm(name))
        if path is None:
            raise ImageBuildError(f"kernel module {name!r} is not in modules.dep "
                                  "(built in, or missing from this kernel?)")
        visit(path)
    return order


# -- module files (no depmod: nothing is ever written into a modules tree) ------------

COMPRESSED = (".ko.xz", ".ko.zst", ".ko.gz")


def module_bytes(path: Path) -> bytes:
    """The module's ELF image, decompressed when it is ``.ko.xz/.zst/.gz``.

    Debian's 6.12 kernels ship ``.ko.xz`` (CONFIG_MODULE_COMPRESS_XZ) and
    busybox's ``insmod`` first hands the file to ``finit_module(fd, "", 0)``
    (modutils/modutils.c: bb_init_module), without
    ``MODULE_INIT_COMPRESSED_FILE``; the kernel then rejects the xz data with
    "Invalid ELF header magic: != \\x7fELF" (6.12's kernel/module/main.c:
    elf_validity_ehdr) -- one console line per module -- before busybox
    falls back to ``init_module`` on the image it decompressed itself.  So
    the initramfs carries plain ``.ko`` files, decompressed at build time.
    """
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(data, format=lzma.FORMAT_XZ)
        if name.endswith(".ko.gz"):
            return gzip.decompress(data)
        if name.endswith(".ko.zst"):
            proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True,
                                  check=False)
            if proc.returncode != 0:
                raise ImageBuildError(f"cannot decompress {path}: "
                                      f"{proc.stderr.decode(errors='replace').strip()}")
            return proc.stdout
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ImageBuildError(f"cannot decompress {path}: {exc}") from exc
    return data


def plain_name(path: str) -> str:
    """``x/virtio_net.ko.xz`` -> ``virtio_net.ko`` (the name in the initramfs)."""
    base = path.rsplit("/", 1)[-1]
    for ext in COMPRESSED:
        if base.endswith(ext):
            return base[: -len(ext)] + ".ko"
    return base


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a module image: key -> values, in order."""
    try:
        elf = ELFFile(io.BytesIO(data))
        sec = elf.get_section_by_name(".modinfo")
    except ELFError as exc:
        raise ImageBuildError(f"not a kernel module (ELF): {exc}") from exc
    info: dict[str, list[str]] = {}
    if sec is None:
        return info
    for item in sec.data().split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def module_paths(mdir: Path) -> list[str]:
    """Module paths relative to ``mdir``: ``modules.order`` (kbuild's list) when
    present, else every ``*.ko*`` file below it."""
    order = mdir / "modules.order"
    names: list[str] = []
    if order.is_file():
        for line in order.read_text().split():
            rel = line.removeprefix("kernel/") if not (mdir / line).exists() else line
            for cand in (line, rel, f"kernel/{line}"):
                hits = [cand + ext for ext in ("", ".xz", ".zst", ".gz")
                        if (mdir / (cand + ext)).is_file()]
                if hits:
                    names.append(hits[0])
                    break
    if not names:
        names = sorted(str(p.relative_to(mdir)) for p in mdir.rglob("*.ko*")
                       if p.name.endswith((".ko", *COMPRESSED)))
    return names


def modules_release(mdir: Path) -> str | None:
    """The kernel release the modules were built for (``vermagic`` of the first
    module), or None when the tree has no module."""
    for rel in module_paths(mdir)[:1]:
        magic = modinfo(module_bytes(mdir / rel)).get("vermagic", [""])[0]
        return magic.split(" ", 1)[0] or None
    return None


class ModinfoDeps(Mapping[str, list[str]]):
    """A read-only ``modules.dep`` substitute taken from the modules themselves:
    each module's ``depends=`` names (what depmod reads too), mapped to paths.
    Modules are read lazily, only those on the way to the wanted ones."""

    def __init__(self, mdir: Path) -> None:
        self.mdir = mdir
        self._paths = module_paths(mdir)
        self._by_name = {_norm(p): p for p in self._paths}
        self._cache: dict[str, list[str]] = {}

    def __getitem__(self, path: str) -> list[str]:
        if path not in self._cache:
            if path not in self._by_name.values():
                raise KeyError(path)
            names = modinfo(module_bytes(self.mdir / path)).get("depends", [""])[0]
            out = []
            for name in filter(None, names.split(",")):
                dep = self._by_name.get(_norm(name))
                if dep is None:
                    raise ImageBuildError(f"{path} depends on {name}, not in {self.mdir}")
                out.append(dep)
            self._cache[path] = out
        return self._cache[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
