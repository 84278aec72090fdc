"""The virtio-mem driver's own view, from the guest's ``/proc/iomem``.

At probe the driver claims the device's whole region as a resource named
after the virtio device (``virtio1``: ``virtio_mem_init()`` ->
``__request_mem_region()``), and every Linux memory block it adds appears
under it as ``System RAM (virtio_mem)`` (``add_memory_driver_managed()``
with ``MHP_MERGE_RESOURCE``: adjacent added blocks merge into one range).
Pure: text in, ranges out (end exclusive); the caller reads the file as
root (others see zeros).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"^(?P<indent> *)(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) : (?P<name>.*)$")
VIRTIO_MEM_RAM = "System RAM (virtio_mem)"


@dataclass
class VirtioMemRegion:
    name: str
    start: int
    end: int
    added: list[tuple[int, int]] = field(default_factory=list)  # merged ranges


def parse_iomem(text: str) -> dict[int, VirtioMemRegion]:
    """virtio-mem regions by start address: top-level ``virtioN`` resources
    with ``System RAM (virtio_mem)`` children (or none yet)."""
    out: dict[int, VirtioMemRegion] = {}
    current: VirtioMemRegion | None = None
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        start, end = int(m["start"], 16), int(m["end"], 16) + 1
        if not m["indent"]:
            current = None
            if re.fullmatch(r"virtio\d+", m["name"]):
                current = out.setdefault(start, VirtioMemRegion(m["name"], start, end))
        elif current is not None and m["name"] == VIRTIO_MEM_RAM:
            current.added.append((start, end))
    return out


def merged_ranges(blocks: tuple[int, ...], block_size: int) -> list[tuple[int, int]]:
    """Contiguous memory blocks as the merged address ranges iomem shows."""
    out: list[tuple[int, int]] = []
    for n in sorted(blocks):
        lo, hi = n * block_size, (n + 1) * block_size
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
