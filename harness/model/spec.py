"""The model's inputs: the machine, the operations, and their text syntax.

Everything is validated on construction; the syntax mirrors QEMU's own
options (``-m 6G,slots=32,maxmem=32G``) so a user can copy a command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import UsageError
from harness.model.backend import RAM, BackendSpec
from harness.model.qemu_rules import (
    CpuSpec,
    QemuRules,
    default_cpu,
    rules_for,
)
from harness.model.qemu_rules.host import HostMemory
from harness.units import MiB, is_count, parse_size

# QEMU util/id.c id_wellformed(): a letter, then letters, digits, '-', '.', '_';
# at most 64 characters here (QEMU's own ids are short; names are shown in tables).
_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}", re.ASCII)
# MAX_NODES (QEMU include/sysemu/numa.h): -numa node,nodeid= must be below it.
MAX_NODES = 128
# The smallest memory block on x86-64 (arch/x86/mm/init_64.c MIN_MEMORY_BLOCK_SIZE).
MIN_BLOCK_SIZE = 128 * MiB
# ACPI_MAX_RAM_SLOTS (QEMU include/hw/acpi/pc-hotplug.h, checked in
# hw/i386/pc.c pc_memory_init()).
ACPI_MAX_RAM_SLOTS = 256
DEFAULT_QEMU_VERSION = (7, 2)


def check_id(dimm_id: str) -> str:
    """A DIMM id QEMU accepts (util/id.c id_wellformed), or a UsageError."""
    if not isinstance(dimm_id, str) or not _ID.fullmatch(dimm_id):
        raise UsageError(
            f"DIMM id {dimm_id!r} is not a valid QEMU id",
            value=dimm_id,
            fix="start with a letter; use only letters, digits, '-', '.' and '_' "
                "(at most 64 characters)",
        )
    return dimm_id


@dataclass(frozen=True)
class MachineSpec:
    """The VM as the model sees it: machine type, RAM, hotplug room, NUMA,
    the QEMU version and machine-type version whose rules apply, the vCPU
    (vendor, phys-bits) and, optionally, the host's memory facts.

    ``numa`` holds the boot memory of each node (index = node id); empty
    means no ``-numa`` options (QEMU then has one implicit node 0).
    ``maxmem`` of 0 means "not given" (QEMU: maxram = RAM); ``slots`` and
    ``maxmem`` are kept as given, so that the model can refuse what QEMU
    refuses (``slots`` without ``maxmem`` ...) with QEMU's words.
    ``machine_version`` None is the bare ``pc``/``q35`` alias: the binary's
    newest machine type, i.e. ``qemu_version``.
    """

    machine: Literal["pc", "q35"] = "pc"
    ram_size: int = 6 << 30
    slots: int = 32
    maxmem: int = 32 << 30
    numa: tuple[int, ...] = (3 << 30, 3 << 30)
    qemu_version: tuple[int, int] = DEFAULT_QEMU_VERSION
    block_size: int | None = None
    machine_version: tuple[int, int] | None = None
    cpu: CpuSpec = field(default_factory=default_cpu)
    host: HostMemory | None = None
    # pc-dimms on the command line (-object/-device), in command-line order
    coldplug: tuple[AddDimm, ...] = ()

    def __post_init__(self) -> None:
        if self.machine not in ("pc", "q35"):
            raise UsageError(f"machine type {self.machine!r} is not modelled", value=self.machine,
                             fix="use pc (i440fx) or q35")
        if self.ram_size <= 0 or self.ram_size % MiB:
            raise UsageError(f"boot memory {self.ram_size} is not a positive multiple of 1M",
                             value=self.ram_size, fix="e.g. 6G")
        if self.slots < 0 or self.maxmem < 0:
            raise UsageError("slots and maxmem cannot be negative", value=(self.slots, self.maxmem),
                             fix="e.g. 6G,slots=32,maxmem=32G")
        if len(self.numa) > MAX_NODES:
            raise UsageError(f"{len(self.numa)} NUMA nodes exceed QEMU's limit of {MAX_NODES}",
                             value=len(self.numa), fix=f"give at most {MAX_NODES} nodes")
        if self.block_size is not None and (
            self.block_size < MIN_BLOCK_SIZE or self.block_size & (self.block_size - 1)
        ):
            raise UsageError(f"memory block size {self.block_size} is not a power of two of "
                             "at least 128M (x86-64)", value=self.block_size,
                             fix="e.g. 128M (block_size_bytes in sysfs)")
        rules_for(self.qemu_version, self.machine_version)  # refuses unmodelled versions

    @property
    def rules(self) -> QemuRules:
        return rules_for(self.qemu_version, self.machine_version)

    @property
    def maxram(self) -> int:
        """QEMU's maxram_size: maxmem if given, else the boot RAM."""
        return self.maxmem or self.ram_size

    @property
    def machine_name(self) -> str:
        """The ``-machine`` value: ``pc``/``q35`` or ``pc-i440fx-X.Y``/``pc-q35-X.Y``."""
        if self.machine_version is None:
            return self.machine
        prefix = "pc-i440fx" if self.machine == "pc" else "pc-q35"
        return f"{prefix}-{self.machine_version[0]}.{self.machine_version[1]}"

    @property
    def node_count(self) -> int:
        return max(1, len(self.numa))

    def node_boot_bytes(self) -> tuple[int, ...]:
        return self.numa if self.numa else (self.ram_size,)


@dataclass(frozen=True)
class AddDimm:
    """Hot-add a pc-dimm of ``size`` bytes on ``node`` (at ``addr`` if given)
    over ``backend`` (anonymous RAM unless said otherwise)."""

    id: str
    size: int
    node: int = 0
    addr: int | None = None
    backend: BackendSpec = RAM

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise UsageError(f"DIMM {self.id}: size {self.size!r} must be a positive byte count",
                             value=self.size, fix="e.g. 1G")
        if isinstance(self.node, bool) or not isinstance(self.node, int) or self.node < 0:
            raise UsageError(f"DIMM {self.id}: node {self.node!r} must be a non-negative integer",
                             value=self.node, fix="e.g. @1 for node 1")
        if self.addr is not None and (not isinstance(self.addr, int) or self.addr < 0):
            raise UsageError(f"DIMM {self.id}: address {self.addr!r} is not a valid address",
                             value=self.addr, fix="e.g. :0x1c0000000")
        if not isinstance(self.backend, BackendSpec):
            raise UsageError(f"DIMM {self.id}: backend {self.backend!r} is not a BackendSpec",
                             value=self.backend, fix="use harness.model.backend.BackendSpec")


@dataclass(frozen=True)
class RemoveDimm:
    """Hot-remove the DIMM ``id``."""

    id: str

    def __post_init__(self) -> None:
        check_id(self.id)


@dataclass(frozen=True)
class AddVirtioMem:
    """Hot-add a ``virtio-mem-pci`` on ``node`` over a RAM backend of ``size``
    bytes (its max-size), asking the guest for ``requested`` bytes.

    ``block_size`` None is QEMU's default; ``addr`` is ``memaddr`` (None:
    QEMU places it); ``unplugged_inaccessible``/``dynamic_memslots`` None
    leave QEMU's default (the property is then not passed).  The rules,
    refusals and placement are in :mod:`harness.model.virtio_mem`.
    """

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

    id: str
    requested: int

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.requested, bool) or not isinstance(self.requested, int) \
                or self.requested < 0:
            raise UsageError(f"virtio-mem {self.id}: requested size {self.requested!r} must "
                             "be a non-negative byte count", value=self.requested,
                             fix='e.g. requested = "3G"')


Operation = AddDimm | RemoveDimm | AddVirtioMem | ResizeVirtioMem


def _mib_when_bare(text: str, what: str, *, allow_zero: bool = False) -> int:
    """A size where a bare number means MiB, as QEMU's ``-m 4096`` (softmmu/vl.c
    ``parse_memory_options()`` v7.2.0, system/vl.c v10.0.0: "Fix up legacy
    suffix-less format" appends ``M`` when the value ends in a digit) and
    ``-numa node,mem=2048`` (hw/core/numa.c ``set_numa_options()``,
    ``qemu_strtosz_MiB()``)."""
    raw = text.strip(" ")
    if raw and raw[-1].isascii() and raw[-1].isdigit():
        raw += "M"
    return parse_size(raw, what=what, allow_zero=allow_zero)


def parse_memory_option(text: str) -> tuple[int, int, int]:
    """``6G,slots=32,maxmem=32G`` -> (ram_size, slots, maxmem), as QEMU's ``-m``.

    Units follow QEMU: the RAM size is MiB when bare (``4096`` = 4 GiB);
    ``maxmem`` is a plain QEMU size, bytes when bare (vl.c passes it on
    as ``max-size`` unchanged).  ``maxmem`` 0 means not given.  Relations
    between the values (maxmem below RAM, slots without maxmem, slots over
    256) are not usage errors but QEMU refusals, predicted with QEMU's own
    words by :func:`harness.model.predict.predict`.
    """
    if not isinstance(text, str) or not text.strip(" "):
        raise UsageError("memory option is empty", value=text, fix="e.g. 6G,slots=32,maxmem=32G")
    parts = [p.strip(" ") for p in text.split(",")]
    ram = _mib_when_bare(parts[0], "boot memory")
    slots, maxmem = 0, 0
    seen: set[str] = set()
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("slots", "maxmem") or key in seen:
            raise UsageError(
                f"memory option part {part!r} is not slots=N or maxmem=SIZE (once each)",
                value=text, fix="e.g. 6G,slots=32,maxmem=32G")
        seen.add(key)
        if key == "slots":
            if not is_count(value):
                raise UsageError(f"slots={value!r} is not a number", value=text,
                                 fix="e.g. slots=32")
            slots = int(value)
        else:
            # 0 is memhp's "no maxmem" (memhp then passes none to QEMU)
            maxmem = parse_size(value, what="maxmem", allow_zero=True)
    if ram % MiB:
        raise UsageError(f"boot memory {ram} is not a whole number of MiB",
                         value=text, fix="e.g. 6G or 6144M")
    if "slots" in seen and "maxmem" not in seen and slots == 0:
        # hw/core/machine.c machine_set_mem(): has_slots without max-size.
        raise UsageError("slots specified but no max-size", value=text,
                         fix="give maxmem= with slots=, or neither")
    return ram, slots, maxmem


def parse_numa_option(text: str) -> tuple[int, ...]:
    """``3G,3G`` -> boot memory of node 0, node 1, ...; a bare number is MiB,
    as in QEMU's ``-numa node,mem=2048``."""
    if not isinstance(text, str) or not text.strip(" "):
        raise UsageError("NUMA option is empty", value=text, fix="e.g. 3G,3G")
    # 0 makes a memoryless node (QEMU: -numa node without memdev), which
    # hot-added memory can then populate.
    parts = text.split(",")
    if len(parts) > MAX_NODES:
        raise UsageError(f"{len(parts)} NUMA nodes exceed QEMU's limit of {MAX_NODES}",
                         value=f"{text[:40]}...", fix=f"give at most {MAX_NODES} node sizes")
    sizes = tuple(_mib_when_bare(p, "NUMA node size", allow_zero=True) for p in parts)
    if not any(sizes):
        raise UsageError("every NUMA node is empty", value=text, fix="e.g. 3G,3G or 6G,0")
    for s in sizes:
        if s % MiB:
            raise UsageError(f"NUMA node size {s} is not a whole number of MiB", value=text)
    return sizes


_DIMM = re.compile(r"(?P<id>[^:@]*):(?P<size>[^:@]+)(?:@(?P<node>[^:]*))?(?::(?P<addr>.+))?",
                   re.DOTALL)


def parse_dimm_option(text: str) -> AddDimm:
    """``ID:SIZE[@NODE][:ADDR]`` -> AddDimm, e.g. ``dimm0:1G@1`` or
    ``dimm1:512M@0:0x240000000`` (ADDR in hex with 0x, or decimal bytes)."""
    fix = "write ID:SIZE@NODE[:ADDR], e.g. dimm0:1G@1"
    if not isinstance(text, str):
        raise UsageError(f"DIMM {text!r} is not text", value=text, fix=fix)
    m = _DIMM.fullmatch(text.strip(" "))
    if m is None:
        raise UsageError(f"DIMM {text!r} is not ID:SIZE@NODE", value=text, fix=fix)
    dimm_id = check_id(m.group("id"))
    size = parse_size(m.group("size"), what=f"DIMM {dimm_id} size")
    node_text = m.group("node")
    if node_text is None:
        node = 0
    elif is_count(node_text):
        node = int(node_text)
    else:
        raise UsageError(f"DIMM {dimm_id}: node {node_text!r} is not a non-negative integer",
                         value=text, fix=fix)
    addr = None
    if m.group("addr") is not None:
        raw = m.group("addr").strip(" ")
        # ASCII only: int() also reads '١٢' (Arabic-Indic digits) as 12.
        if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}", raw, re.ASCII):
            raise UsageError(f"DIMM {dimm_id}: address {raw!r} is not a number", value=text,
                             fix="give it in hex, e.g. 0x1c0000000")
        addr = int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
        if addr < 0 or addr >= 1 << 64:
            raise UsageError(f"DIMM {dimm_id}: address {raw!r} is out of range", value=text)
    return AddDimm(dimm_id, size, node, addr)
