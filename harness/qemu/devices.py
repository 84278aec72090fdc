"""Memory devices as QEMU sees them: a backend object and a device.

Every memory device memhp plugs is one :class:`MemoryDevice`: a QOM
backend (``-object``/``object-add``) and a qdev device
(``-device``/``device_add``).  The same record gives the QMP arguments for a
hot-add and the command-line options for a cold-plug or a migration
destination, so the two can never disagree.  A device kind (pc-dimm,
virtio-mem-pci) or a backend kind (ram, memfd, file) is a constructor here,
nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

from harness.qemu.argv import opt_value

_backend_ids = itertools.count()

# What a migration destination must pin, per device driver: the properties
# QEMU chose at plug time (as ``query-memory-devices`` reports them under
# the same names).  A destination started without them would place its
# devices first-fit in command-line order: after a removal, or with devices
# plugged at given addresses, that is not the source's layout, and the
# incoming RAM would not fit (QEMU 7.2 hw/mem/memory-device.c
# memory_device_get_free_addr(): an explicit addr is taken as given;
# hw/mem/pc-dimm.c pc_dimm_pre_plug(): an explicit slot likewise).
# A new device kind adds its line here (virtio-mem-pci: "memaddr").
PINNED_PROPS: dict[str, tuple[str, ...]] = {
    "pc-dimm": ("addr", "slot"),
}


def _cli_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return opt_value(value)


@dataclass(frozen=True)
class _Option:
    """``KIND,id=ID,key=value,...``: a QOM object or a qdev device."""

    kind: str
    id: str
    props: tuple[tuple[str, Any], ...] = ()
    flag: ClassVar[str]
    kind_key: ClassVar[str]

    def qmp_args(self) -> dict[str, Any]:
        return {self.kind_key: self.kind, "id": self.id, **dict(self.props)}

    def cli(self) -> list[str]:
        parts = [self.kind, f"id={opt_value(self.id)}"]
        parts += [f"{k}={_cli_value(v)}" for k, v in self.props]
        return [self.flag, ",".join(parts)]

    def prop(self, name: str, default: Any = None) -> Any:
        return dict(self.props).get(name, default)

    def with_props(self, **props: Any) -> Self:
        """The same with ``props`` set (replacing any of the same name)."""
        keep = tuple((k, v) for k, v in self.props if k not in props)
        return replace(self, props=keep + tuple(props.items()))


@dataclass(frozen=True)
class QomObject(_Option):
    """A QOM object, e.g. ``memory-backend-ram,id=be0,size=1073741824``."""

    flag: ClassVar[str] = "-object"
    kind_key: ClassVar[str] = "qom-type"

    @property
    def qom_type(self) -> str:
        return self.kind


@dataclass(frozen=True)
class QdevDevice(_Option):
    """A qdev device, e.g. ``pc-dimm,id=dimm0,memdev=be0,node=1``."""

    flag: ClassVar[str] = "-device"
    kind_key: ClassVar[str] = "driver"

    @property
    def driver(self) -> str:
        return self.kind


@dataclass(frozen=True)
class MemoryDevice:
    """A backend and the device that maps it into the guest."""

    backend: QomObject
    device: QdevDevice

    @property
    def id(self) -> str:
        return self.device.id

    def cli(self) -> list[str]:
        return self.backend.cli() + self.device.cli()

    def pinned(self, reported: Mapping[str, Any]) -> MemoryDevice:
        """This device with what QEMU chose for it pinned, from its
        ``query-memory-devices`` ``data`` (e.g. a pc-dimm's addr and slot):
        the command line a migration destination needs."""
        keys = PINNED_PROPS.get(self.device.driver, ())
        missing = [k for k in keys if k not in reported]
        if missing:
            raise ValueError(f"QEMU reports no {', '.join(missing)} for {self.id} "
                             f"({self.device.driver})")
        return replace(self, device=self.device.with_props(
            **{k: reported[k] for k in keys}))


def new_backend_id() -> str:
    return f"memhp-be{next(_backend_ids)}"


def ram_backend(size: int, backend_id: str | None = None) -> QomObject:
    """``memory-backend-ram`` of ``size`` bytes (anonymous memory)."""
    return QomObject("memory-backend-ram", backend_id or new_backend_id(), (("size", size),))


def pc_dimm(dimm_id: str, backend: QomObject, node: int, addr: int | None = None
            ) -> MemoryDevice:
    """A ``pc-dimm`` on ``node`` (at ``addr`` if given) over ``backend``."""
    props: tuple[tuple[str, Any], ...] = (("memdev", backend.id), ("node", node))
    if addr is not None:
        props += (("addr", addr),)
    return MemoryDevice(backend, QdevDevice("pc-dimm", dimm_id, props))
