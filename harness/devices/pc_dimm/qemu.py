"""The pc-dimm as QEMU reports it (``query-memory-devices``, type
``dimm``) and as memhp expects and prints it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TYPE = "dimm"  # the MemoryDeviceInfo union's tag


@dataclass(frozen=True)
class QemuDimm:
    """A pc-dimm as QEMU reports it in ``query-memory-devices``."""

    id: str
    addr: int
    size: int
    node: int
    slot: int
    memdev: str
    hotplugged: bool


def records(entries: Iterable[dict[str, Any]]) -> tuple[QemuDimm, ...]:
    """The pc-dimms of a ``query-memory-devices`` answer."""
    out = []
    for dev in entries:
        d = dev.get("data", {})
        if dev.get("type") == TYPE:
            out.append(QemuDimm(
                id=d.get("id", ""), addr=int(d["addr"]), size=int(d["size"]),
                node=int(d["node"]), slot=int(d["slot"]), memdev=str(d["memdev"]),
                hotplugged=bool(d.get("hotplugged", False)),
            ))
    return tuple(out)


def dimm_json(d: Any) -> dict[str, Any]:
    """A DIMM (the model's or QEMU's) in a result document."""
    out = {"id": d.id, "addr": d.addr, "size": d.size, "node": d.node, "slot": d.slot}
    if hasattr(d, "blocks"):
        out["blocks"] = list(d.blocks)
        out["guest_accepts"] = d.guest_accepts
        if not d.guest_accepts:
            out["reason"] = d.reason
    return out
