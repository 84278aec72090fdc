"""virtio-mem as QEMU reports it (``query-memory-devices``, type
``virtio-mem``: ``VirtioMEMDeviceInfo``) and as memhp expects it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TYPE = "virtio-mem"  # the MemoryDeviceInfo union's tag


@dataclass(frozen=True)
class QemuVirtioMem:
    """A virtio-mem device as QEMU reports it: ``size`` is what the guest
    has plugged."""

    id: str
    addr: int  # memaddr
    size: int
    requested_size: int
    max_size: int
    block_size: int
    node: int
    memdev: str


@dataclass(frozen=True)
class ExpectedVirtioMem:
    """What QEMU should report for one virtio-mem device."""

    id: str
    addr: int
    max_size: int
    block_size: int
    node: int
    requested_size: int
    size: int  # plugged by the guest driver, as the model predicts


def records(entries: Iterable[dict[str, Any]]) -> tuple[QemuVirtioMem, ...]:
    """The virtio-mem devices of a ``query-memory-devices`` answer."""
    out = []
    for dev in entries:
        d = dev.get("data", {})
        if dev.get("type") == TYPE:
            out.append(QemuVirtioMem(
                id=d.get("id", ""), addr=int(d["memaddr"]), size=int(d["size"]),
                requested_size=int(d["requested-size"]), max_size=int(d["max-size"]),
                block_size=int(d["block-size"]), node=int(d["node"]),
                memdev=str(d["memdev"]),
            ))
    return tuple(out)
