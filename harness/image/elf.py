"""Shared-library closure of ELF binaries inside an unpacked package root.

``ldd`` cannot be used on a foreign root, so the ``DT_NEEDED`` entries and
the ``PT_INTERP`` of each ELF file are read with pyelftools and looked up in
the root's multiarch library directories, recursively.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from harness.errors import ImageBuildError


def lib_dirs(triplet: str) -> tuple[str, ...]:
    """Where the loader of a multiarch ``triplet`` looks, in a package root."""
    return (f"lib/{triplet}", f"usr/lib/{triplet}", "lib64", "lib", "usr/lib")


def elf_deps(path: Path) -> tuple[str | None, list[str]]:
    """(interpreter path or None, DT_NEEDED sonames) of one ELF file."""
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            interp = None
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()  # type: ignore[attr-defined]
            needed: list[str] = []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    needed += [str(t.needed) for t in section.iter_tags()  # type: ignore[attr-defined]
                               if t.entry.d_tag == "DT_NEEDED"]
            return interp, needed
    except ELFError:
        return None, []


def find_library(root: Path, soname: str, triplet: str = "x86_64-linux-gnu") -> Path | None:
    for d in lib_dirs(triplet):
        candidate = root / d / soname
        if candidate.exists():
            return candidate
    return None


def library_closure(root: Path, binaries: Iterable[str],
                    triplet: str = "x86_64-linux-gnu") -> dict[str, Path]:
    """Map of in-image path -> source file for every library the binaries need.

    Libraries are placed at ``lib/<triplet>/<soname>`` (a directory
    the Debian loader searches by default); the interpreter at its own path.
    A library found in none of the packages fails the build with its name.
    """
    out: dict[str, Path] = {}
    todo = [root / b for b in binaries]
    seen: set[Path] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if not current.exists():
            raise ImageBuildError(
                f"{current.relative_to(root)} is not in the unpacked packages "
                "(fix: add the package that ships it to guest_images/recipe.toml)")
        interp, needed = elf_deps(current)
        if interp:
            src = root / interp.lstrip("/")
            if not src.exists():
                raise ImageBuildError(f"ELF interpreter {interp} of {current.name} not found")
            out[interp.lstrip("/")] = src
            todo.append(src.resolve())
        for soname in needed:
            lib = find_library(root, soname, triplet)
            if lib is None:
                raise ImageBuildError(
                    f"{current.name} needs {soname}, which none of the recipe's packages "
                    "ships (fix: add its package to guest_images/recipe.toml)")
            out[f"lib/{triplet}/{soname}"] = lib
            todo.append(lib.resolve())
    return out
