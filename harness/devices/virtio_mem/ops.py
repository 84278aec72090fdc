"""virtio-mem's operations: add one, set its requested-size."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import UsageError
from harness.model.ids import check_id
from harness.toml_keys import expect
from harness.units import parse_size, size_text


@dataclass(frozen=True)
class AddVirtioMem:
    """Hot-add a ``virtio-mem-pci`` on ``node`` over a RAM backend of ``size``
    bytes (its max-size), asking the guest for ``requested`` bytes.

    ``block_size`` None is QEMU's default; ``addr`` is ``memaddr`` (None:
    QEMU places it); ``unplugged_inaccessible``/``dynamic_memslots`` None
    leave QEMU's default (the property is then not passed).  The rules,
    refusals and placement are in :mod:`harness.devices.virtio_mem.model`.
    """

    kind: ClassVar[str] = "virtio-mem"
    label: ClassVar[str] = "virtio-mem"
    id: str
    size: int
    node: int = 0
    requested: int = 0
    block_size: int | None = None
    addr: int | None = None
    unplugged_inaccessible: bool | None = None
    dynamic_memslots: bool | None = None

    def __post_init__(self) -> None:
        check_id(self.id)
        for name in ("size", "node", "requested"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (
                    name == "size" and v == 0):
                raise UsageError(f"virtio-mem {self.id}: {name} {v!r} must be a "
                                 f"{'positive' if name == 'size' else 'non-negative'} integer",
                                 value=v, fix="e.g. vmem0:4G@1 with requested = \"1G\"")
        if self.block_size is not None and (
                isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                or self.block_size <= 0):
            raise UsageError(f"virtio-mem {self.id}: block size {self.block_size!r} is not a "
                             "size", value=self.block_size, fix="e.g. block_size = \"2M\"")
        if self.addr is not None and (not isinstance(self.addr, int) or self.addr < 0):
            raise UsageError(f"virtio-mem {self.id}: memaddr {self.addr!r} is not an address",
                             value=self.addr, fix="e.g. memaddr = \"0x200000000\"")
        if self.requested > self.size:
            # memhp's own check: QEMU 7.2-11.1 accept it at device_add
            # (virtio_mem_set_requested_size() stores it before realize)
            raise UsageError(
                f"virtio-mem {self.id}: requested {self.requested} bytes exceed its size "
                f"{self.size}; memhp refuses this (QEMU accepts it at device_add, but what "
                "the guest plugs then is not modelled)", value=self.requested,
                fix="request at most the device's size (a later resize above it is refused "
                    "by QEMU, and that is modelled)")

    def describe(self) -> str:
        where = f" at {self.addr:#x}" if self.addr is not None else ""
        return (f"add virtio-mem {self.id} ({self.size >> 20} MiB, node {self.node}{where}, "
                f"requested {self.requested >> 20} MiB)")


@dataclass(frozen=True)
class ResizeVirtioMem:
    """Set the ``requested-size`` of virtio-mem ``id`` (``qom-set``)."""

    kind: ClassVar[str] = "virtio-mem"
    label: ClassVar[str] = "virtio-mem"
    id: str
    requested: int

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.requested, bool) or not isinstance(self.requested, int) \
                or self.requested < 0:
            raise UsageError(f"virtio-mem {self.id}: requested size {self.requested!r} must "
                             "be a non-negative byte count", value=self.requested,
                             fix='e.g. requested = "3G"')


# The keys an ``add`` step of a virtio-mem takes beyond ``add`` itself.
ADD_KEYS = frozenset({"device", "requested", "block_size", "memaddr", "unplugged_inaccessible",
              "dynamic_memslots"})


def parse_add(raw: Mapping[str, Any], dimm: Any, where: str) -> AddVirtioMem:
    """The virtio-mem keys of an add step (``ID:SIZE@NODE`` gives id, max-size, node)."""
    if dimm.addr is not None:
        raise UsageError(f"{where}: a virtio-mem takes its address as memaddr, not :ADDR",
                         value=dimm.addr, fix='e.g. memaddr = "0x240000000"')

    def size_key(key: str, allow_zero: bool = False) -> int | None:
        if key not in raw:
            return None
        return parse_size(expect(raw, key, str, where), what=f"{where}.{key}",
                          allow_zero=allow_zero)

    def bool_key(key: str) -> bool | None:
        return expect(raw, key, bool, where) if key in raw else None

    addr = None
    if "memaddr" in raw:
        text = expect(raw, "memaddr", str, where).strip()
        if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}", text, re.ASCII):
            raise UsageError(f"{where}.memaddr {text!r} is not a number", value=text,
                             fix='give it in hex, e.g. memaddr = "0x240000000"')
        addr = int(text, 16) if text.lower().startswith("0x") else int(text)
    return AddVirtioMem(dimm.id, dimm.size, dimm.node,
                        requested=size_key("requested", allow_zero=True) or 0,
                        block_size=size_key("block_size"), addr=addr,
                        unplugged_inaccessible=bool_key("unplugged_inaccessible"),
                        dynamic_memslots=bool_key("dynamic_memslots"))


def to_table(op: AddVirtioMem) -> dict[str, Any]:
    """The ``add`` step's table for ``op`` (what :func:`parse_add` reads back)."""
    table: dict[str, Any] = {"add": f"{op.id}:{size_text(op.size)}@{op.node}",
                             "device": "virtio-mem", "requested": size_text(op.requested)}
    if op.block_size is not None:
        table["block_size"] = size_text(op.block_size)
    if op.addr is not None:
        table["memaddr"] = f"{op.addr:#x}"
    for key in ("unplugged_inaccessible", "dynamic_memslots"):
        if getattr(op, key) is not None:
            table[key] = getattr(op, key)
    return table
