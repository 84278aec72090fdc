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

from harness.errors import UsageError
from harness.model.backend import RAM, BackendSpec
from harness.qemu.options import opt_value

_backend_ids = itertools.count()

# What a migration destination must pin, per device driver: (qdev property,
# key in the source's ``VM.memory_device_info()``), i.e. the properties QEMU
# chose at plug time, as ``query-memory-devices`` reports them (plus
# ``pci-addr``, which memhp reads from ``query-pci``: see
# :func:`pci_addresses`).  A destination started without them would place its
# devices first-fit in command-line order: after a removal, or with devices
# plugged at given addresses, that is not the source's layout, and the
# incoming RAM would not fit (QEMU 7.2 hw/mem/memory-device.c
# memory_device_get_free_addr(): an explicit addr is taken as given;
# hw/mem/pc-dimm.c pc_dimm_pre_plug(): an explicit slot likewise).
#
# virtio-mem-pci (QEMU 7.2 and 10.0 hw/virtio/virtio-mem.c,
# vmstate_virtio_mem_sanity_checks, virtio_mem_mig_sanity_checks_post_load()):
# the destination refuses the incoming state unless its ``memaddr``, backend
# size, ``block-size`` and ``node`` are the source's ("Property 'memaddr'
# changed from ..."); node and backend come with the plug-time record,
# ``memaddr`` and ``block-size`` (QEMU's default depends on the backend) are
# pinned.  ``requested-size`` is migrated too (vmstate_virtio_mem_device:
# usable_region_size, requested_size; size and the plugged bitmap there or,
# from QEMU 8.0, in the early-setup vmstate_virtio_mem_device_early sent
# before any RAM), so the destination's value is overwritten; it is pinned to
# the current request all the same, so the command line states what the
# device is (realize checks it against the backend and block size).  The PCI
# address: virtio-mem-pci's ``addr`` is its PCI slot.function (the memory
# address is ``memaddr``).  The device registers its backend's RAM block
# under its qdev path, which is the PCI address (virtio_mem_device_realize()
# -> vmstate_register_ram(); migration/savevm.c vmstate_register_ram() ->
# qemu_ram_set_idstr() with qdev_get_dev_path() -> hw/pci/pci.c
# pcibus_get_dev_path(): "0000:00:04.0/memhp-be2"), and its vmstate section
# likewise, so at another slot the destination refuses the RAM: QEMU 10.0
# said 'Unknown ramblock "0000:00:04.0/memhp-be2", cannot accept migration'
# when memhp left the slot unpinned after a removal freed a lower one (and
# "Property 'memaddr' changed from 0x2c8400000 to 0x1c8400000" without
# memaddr: both tried, tests/scenarios/virtio_mem_qemu10.toml).
# dynamic-memslots (8.2+) needs nothing more: the memslots mapped follow the
# migrated bitmap (virtio_mem_post_load_bitmap() activates the plugged
# ranges' memslots, virtio_mem_activate_memslot_range_cb(); checked on 10.0).
PCI_ADDR_KEY = "pci-addr"
PINNED_PROPS: dict[str, tuple[tuple[str, str], ...]] = {
    "pc-dimm": (("addr", "addr"), ("slot", "slot")),
    "virtio-mem-pci": (("memaddr", "memaddr"), ("block-size", "block-size"),
                       ("requested-size", "requested-size"), ("addr", PCI_ADDR_KEY)),
}


def pci_addresses(query_pci: list[dict[str, Any]]) -> dict[str, str]:
    """qdev id -> ``SLOT.FUNCTION`` (hex, as qdev's PCI ``addr`` property
    takes it: hw/core/qdev-properties-system.c set_pci_devfn()) of every
    device with an id on the root bus (bus 0) in QMP ``query-pci``'s answer.
    memhp hot-plugs its PCI devices there (i440fx's pci.0); a device behind a
    bridge would need its bus pinned too, so it is left out (and pinning it
    then fails, naming the missing key)."""
    out: dict[str, str] = {}
    for bus in query_pci:
        if bus.get("bus") != 0:
            continue
        for dev in bus.get("devices", []):
            qdev_id = dev.get("qdev_id")
            if qdev_id and dev.get("bus") == 0:
                out[str(qdev_id)] = f"{int(dev['slot']):x}.{int(dev['function']):x}"
    return out


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
        for k, v in self.props:
            # A list (host-nodes) repeats its key: host-nodes=0,host-nodes=2
            # (QemuOpts' repeated-key list syntax, as qom/object_interfaces.c
            # user_creatable_add_opts() reads -object).
            values = v if isinstance(v, list) else [v]
            parts += [f"{k}={_cli_value(x)}" for x in values]
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
        ``query-memory-devices`` ``data`` (e.g. a pc-dimm's addr and slot;
        see :data:`PINNED_PROPS`): the command line a migration destination
        needs."""
        pins = PINNED_PROPS.get(self.device.driver, ())
        missing = [key for _, key in pins if key not in reported]
        if missing:
            raise ValueError(f"QEMU reports no {', '.join(missing)} for {self.id} "
                             f"({self.device.driver})")
        return replace(self, device=self.device.with_props(
            **{prop: reported[key] for prop, key in pins}))


def new_backend_id() -> str:
    return f"memhp-be{next(_backend_ids)}"


def ram_backend(size: int, backend_id: str | None = None) -> QomObject:
    """``memory-backend-ram`` of ``size`` bytes (anonymous memory)."""
    return QomObject("memory-backend-ram", backend_id or new_backend_id(), (("size", size),))


def _common_props(spec: BackendSpec) -> tuple[tuple[str, Any], ...]:
    """The options every memory backend has (backends/hostmem.c
    ``host_memory_backend_class_init()``), in the order QEMU applies them
    (``reserve`` before ``prealloc``, so that their conflict is reported
    as QEMU reports it from the command line too).  Options left at QEMU's
    default are not passed."""
    props: list[tuple[str, Any]] = []
    for name in ("share", "reserve", "dump", "merge", "prealloc"):
        value = getattr(spec, name)
        if value is not None:
            props.append((name, value))
    if spec.prealloc_threads is not None:
        props.append(("prealloc-threads", spec.prealloc_threads))
    if spec.host_nodes:
        props.append(("host-nodes", list(spec.host_nodes)))
    if spec.policy != "default":
        props.append(("policy", spec.policy))
    return tuple(props)


def memfd_backend(size: int, spec: BackendSpec, backend_id: str | None = None) -> QomObject:
    """``memory-backend-memfd`` (backends/hostmem-memfd.c): ``hugetlb`` and
    ``hugetlbsize`` with hugepages, ``seal``, and the common options."""
    if spec.kind != "memfd":
        raise UsageError(f"memfd_backend() given a {spec.kind} backend", value=spec.kind,
                         fix="use backend_object()")
    props: tuple[tuple[str, Any], ...] = (("size", size),)
    if spec.hugepages:
        props += (("hugetlb", True), ("hugetlbsize", spec.hugepages))
    if spec.seal is not None:
        props += (("seal", spec.seal),)
    return QomObject("memory-backend-memfd", backend_id or new_backend_id(),
                     props + _common_props(spec))


def file_backend(size: int, spec: BackendSpec, mem_path: str,
                 backend_id: str | None = None) -> QomObject:
    """``memory-backend-file`` (backends/hostmem-file.c) at ``mem_path`` (a
    file QEMU creates or opens; the caller resolves ``spec.mem_path`` and
    hugetlbfs mounts), with ``discard-data`` and the common options."""
    if spec.kind != "file":
        raise UsageError(f"file_backend() given a {spec.kind} backend", value=spec.kind,
                         fix="use backend_object()")
    if not mem_path.startswith("/") or "," in mem_path:
        raise UsageError(f"mem-path {mem_path!r} is not an absolute path without ','",
                         value=mem_path, fix="give an absolute path")
    props: tuple[tuple[str, Any], ...] = (("size", size), ("mem-path", mem_path))
    if spec.discard_data is not None:
        props += (("discard-data", spec.discard_data),)
    return QomObject("memory-backend-file", backend_id or new_backend_id(),
                     props + _common_props(spec))


def backend_object(size: int, spec: BackendSpec = RAM, *, backend_id: str | None = None,
                   mem_path: str | None = None) -> QomObject:
    """The backend ``spec`` describes, ``size`` bytes; a file backend needs
    ``mem_path`` (resolved by the caller)."""
    bid = backend_id or new_backend_id()
    if spec.kind == "memfd":
        return memfd_backend(size, spec, bid)
    if spec.kind == "file":
        path = mem_path or spec.mem_path
        if path is None:
            raise UsageError("a file backend needs a mem-path", value=spec.describe(),
                             fix="pass mem_path= (the VM driver picks one)")
        return file_backend(size, spec, path, bid)
    if spec == RAM:
        return ram_backend(size, bid)
    return QomObject("memory-backend-ram", bid, (("size", size),) + _common_props(spec))


def pc_dimm(dimm_id: str, backend: QomObject, node: int, addr: int | None = None
            ) -> MemoryDevice:
    """A ``pc-dimm`` on ``node`` (at ``addr`` if given) over ``backend``."""
    props: tuple[tuple[str, Any], ...] = (("memdev", backend.id), ("node", node))
    if addr is not None:
        props += (("addr", addr),)
    return MemoryDevice(backend, QdevDevice("pc-dimm", dimm_id, props))


def virtio_mem(vmem_id: str, backend: QomObject, node: int, requested: int = 0, *,
               block_size: int | None = None, memaddr: int | None = None,
               unplugged_inaccessible: bool | None = None,
               dynamic_memslots: bool | None = None) -> MemoryDevice:
    """A ``virtio-mem-pci`` on ``node`` over ``backend`` (its max-size), asking
    the guest for ``requested`` bytes.  Properties left None are not passed
    (QEMU's defaults apply; ``dynamic-memslots`` exists from QEMU 8.2,
    ``unplugged-inaccessible`` from 7.0)."""
    props: tuple[tuple[str, Any], ...] = (("memdev", backend.id), ("node", node),
                                          ("requested-size", requested))
    optional: tuple[tuple[str, Any], ...] = (("block-size", block_size), ("memaddr", memaddr),
                ("unplugged-inaccessible", unplugged_inaccessible),
                ("dynamic-memslots", dynamic_memslots))
    for key, value in optional:
        if value is None:
            continue
        if key == "unplugged-inaccessible":  # an OnOffAuto, not a bool
            value = "on" if value else "off"
        props += ((key, value),)
    return MemoryDevice(backend, QdevDevice("virtio-mem-pci", vmem_id, props))
