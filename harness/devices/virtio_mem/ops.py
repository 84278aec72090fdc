"""virtio-mem's operations: add one, set its requested-size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.errors import UsageError
from harness.model.ids import check_id


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
