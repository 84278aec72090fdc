"""tp-qemu's ``hotplug_memory`` backend x policy x options matrix, as data.

tp-qemu (qemu/tests/cfg/hotplug_memory.cfg) varies the backend
(memory-backend-ram, -file on hugetlbfs, -memfd with hugetlb), the host
policy (default, bind, preferred, interleave with host-nodes) and the
options (prealloc with prealloc-threads, share, reserve, discard-data,
dump, merge).  Here each variant is one DIMM: a :class:`Variant` with its
backend and size; the checks (model vs real QEMU) live in
tests/integration/test_backends_vs_qemu.py.  Sizes are small (4 MiB, one
page for 1 GiB pages): QEMU's placement and refusals do not depend on the
size beyond alignment, and the host's hugepage pool stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.model.backend import BackendSpec
from harness.units import GiB, KiB, MiB


@dataclass(frozen=True)
class Variant:
    name: str
    backend: BackendSpec
    size: int
    addr_offset: int | None = None  # explicit address: device base + offset


BACKENDS: tuple[tuple[str, BackendSpec], ...] = (
    ("ram", BackendSpec()),
    ("memfd", BackendSpec("memfd")),
    ("file", BackendSpec("file")),
    ("memfd-2M", BackendSpec("memfd", hugepages=2 * MiB)),
    ("file-2M", BackendSpec("file", hugepages=2 * MiB)),
    ("memfd-1G", BackendSpec("memfd", hugepages=GiB)),
    ("file-1G", BackendSpec("file", hugepages=GiB)),
)

POLICIES: tuple[tuple[str, dict[str, object]], ...] = (
    ("default", {}),
    ("bind0", {"policy": "bind", "host_nodes": (0,)}),
    ("preferred0", {"policy": "preferred", "host_nodes": (0,)}),
    ("interleave0", {"policy": "interleave", "host_nodes": (0,)}),
    ("bind-nonodes", {"policy": "bind"}),              # QEMU refuses
    ("default-node0", {"host_nodes": (0,)}),           # QEMU refuses
    ("bind63", {"policy": "bind", "host_nodes": (63,)}),  # no such host node: refused
)

OPTIONS: tuple[tuple[str, dict[str, object]], ...] = (
    ("plain", {}),
    ("prealloc", {"prealloc": True, "prealloc_threads": 2}),
    ("share", {"share": True}),
    ("noshare", {"share": False}),
    ("noreserve", {"reserve": False}),
    ("prealloc-noreserve", {"prealloc": True, "reserve": False}),  # QEMU refuses
    ("nodump-nomerge", {"dump": False, "merge": False}),
    ("discard", {"discard_data": True, "share": True}),  # file only
)


def _size(be: BackendSpec) -> int:
    return be.hugepages if be.hugepages == GiB else 4 * MiB


def variants() -> list[Variant]:
    """The full product (minus combinations memhp itself refuses as input,
    e.g. discard-data on a non-file backend), then the size and alignment
    cases of each backend."""
    out: list[Variant] = []
    for bname, base in BACKENDS:
        for pname, pol in POLICIES:
            for oname, opts in OPTIONS:
                if "discard_data" in opts and base.kind != "file":
                    continue
                if base.hugepages == GiB and pname not in ("default", "bind0", "bind-nonodes"):
                    continue  # 1 GiB pages are scarce: fewer variants
                be = replace(base, **pol, **opts)  # type: ignore[arg-type]
                out.append(Variant(f"{bname}-{pname}-{oname}", be, _size(be)))
        page = base.hugepages or 4 * KiB
        # size and alignment: an odd size, one below/above a page, a
        # misaligned explicit address, and a pool too small
        out.append(Variant(f"{bname}-size-plus-4k", base, _size(base) + 4 * KiB))
        out.append(Variant(f"{bname}-size-plus-half-page", base, _size(base) + page // 2
                           if page > 4 * KiB else _size(base) + 2 * MiB))
        out.append(Variant(f"{bname}-addr-plus-4k", base, _size(base), addr_offset=4 * KiB))
        out.append(Variant(f"{bname}-addr-plus-1M", base, _size(base), addr_offset=MiB))
        out.append(Variant(f"{bname}-host-node-200",
                           replace(base, policy="bind", host_nodes=(200,)), _size(base)))
        if not base.hugepages:  # sizes off the 4 KiB host page (memfd: issue 26)
            out.append(Variant(f"{bname}-size-plus-1", base, _size(base) + 1))
            out.append(Variant(f"{bname}-size-plus-2k", base, _size(base) + 2 * KiB))
        if base.hugepages:
            out.append(Variant(f"{bname}-pool-too-small", base, 64 * base.hugepages))
            out.append(Variant(f"{bname}-below-page", base, base.hugepages // 2))
    return out


def mixed() -> list[Variant]:
    """DIMMs of different alignments in one machine: the 1 GiB-page DIMM
    moves to the next 1 GiB boundary past the small RAM DIMM, and smaller
    ones fill the gap first-fit, each on its own backend's alignment."""
    return [
        Variant("mixed-ram", BackendSpec(), 4 * MiB),
        Variant("mixed-memfd-1G", BackendSpec("memfd", hugepages=GiB), GiB),
        Variant("mixed-memfd-odd", BackendSpec("memfd"), 4 * MiB + 4 * KiB),
        Variant("mixed-file-2M", BackendSpec("file", hugepages=2 * MiB), 4 * MiB),
        Variant("mixed-ram-after", BackendSpec(), 4 * MiB),
        Variant("mixed-file-1G-shared", BackendSpec("file", hugepages=GiB, share=True), GiB),
    ]


def overcommit(host_bytes: int) -> list[Variant]:
    """Mappings twice the host's RAM + swap (``host_bytes``): the host's
    heuristic overcommit refuses the accounted ones at object-add (private
    RAM and files, shared anonymous RAM on 7.2), not the others.  Nothing
    is touched, so nothing is really allocated."""
    size = -(-2 * host_bytes // GiB) * GiB
    return [
        Variant("overcommit-ram", BackendSpec(), size),
        Variant("overcommit-ram-share", BackendSpec(share=True), size),
        Variant("overcommit-ram-noreserve", BackendSpec(reserve=False), size),
        Variant("overcommit-memfd", BackendSpec("memfd"), size),
        Variant("overcommit-memfd-private", BackendSpec("memfd", share=False), size),
        Variant("overcommit-file-shared", BackendSpec("file", share=True), size),
        Variant("overcommit-file-private", BackendSpec("file"), size),
    ]


PREALLOC_SPACE_NAMES = ("space-4M", "space-4M-again", "space-64M-prealloc",
                        "space-64M-private-prealloc", "space-64M-lazy", "space-4M-threads")


def prealloc_space(mount: str) -> list[Variant]:
    """File backends on a 16 MiB tmpfs at ``mount``: preallocation fails
    once the file system has no room left (the lazy one is mapped fine)."""
    def file(**kw: object) -> BackendSpec:
        return BackendSpec("file", mem_path=mount, **kw)  # type: ignore[arg-type]

    sizes = (4 * MiB, 4 * MiB, 64 * MiB, 64 * MiB, 64 * MiB, 4 * MiB)
    specs = (file(share=True, prealloc=True), file(share=True, prealloc=True),
             file(share=True, prealloc=True), file(prealloc=True), file(share=True),
             file(share=True, prealloc=True, prealloc_threads=2))
    return [Variant(n, b, sz) for n, b, sz in zip(PREALLOC_SPACE_NAMES, specs, sizes,
                                                  strict=True)]
