"""The model's inputs: the machine, the operations, and their text syntax.

Everything is validated on construction; the syntax mirrors QEMU's own
options (``-m 6G,slots=32,maxmem=32G``) so a user can copy a command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.virtio_mem.ops import AddVirtioMem, ResizeVirtioMem
from harness.errors import UsageError
from harness.machines import MACHINES, Machine, machine
from harness.model.ids import check_id
from harness.model.qemu_rules import (
    CpuSpec,
    QemuRules,
    default_cpu,
    rules_for,
)
from harness.model.qemu_rules.host import HostMemory
from harness.units import MiB, is_count, mib_when_bare, parse_size

# MAX_NODES (QEMU include/sysemu/numa.h): -numa node,nodeid= must be below it.
MAX_NODES = 128
# The smallest memory block on x86-64 (arch/x86/mm/init_64.c MIN_MEMORY_BLOCK_SIZE).
MIN_BLOCK_SIZE = 128 * MiB
DEFAULT_QEMU_VERSION = (7, 2)
# The seed session (the reference command line): memhp's defaults wherever
# a plan is not given (memhp run, memhp model, a scenario file, the plugin).
SEED_MACHINE = "pc"
SEED_MEMORY = "6G,slots=32,maxmem=32G"
SEED_NUMA = "3G,3G"
SEED_DIMM = "dimm0:1G@1"
# (MachineSpec's own defaults are the same machine.)


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

    machine: str = "pc"  # a name in harness.machines.MACHINES
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
        if self.machine not in MACHINES:
            raise UsageError(f"machine type {self.machine!r} is not modelled", value=self.machine,
                             fix=f"use one of {', '.join(MACHINES)} (pc is i440fx)")
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
        return self.machine_model.type_name(self.machine_version)

    @property
    def machine_model(self) -> Machine:
        """What memhp knows of the machine (:mod:`harness.machines`)."""
        return machine(self.machine)

    @property
    def node_count(self) -> int:
        return max(1, len(self.numa))

    def node_boot_bytes(self) -> tuple[int, ...]:
        return self.numa if self.numa else (self.ram_size,)


@dataclass(frozen=True)
class RemoveDevice:
    """Hot-remove the memory device ``id``, whatever its kind."""

    id: str

    def __post_init__(self) -> None:
        check_id(self.id)


Operation = AddDimm | RemoveDevice | AddVirtioMem | ResizeVirtioMem


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
    ram = mib_when_bare(parts[0], "boot memory")
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
    sizes = tuple(mib_when_bare(p, "NUMA node size", allow_zero=True) for p in parts)
    if not any(sizes):
        raise UsageError("every NUMA node is empty", value=text, fix="e.g. 3G,3G or 6G,0")
    for s in sizes:
        if s % MiB:
            raise UsageError(f"NUMA node size {s} is not a whole number of MiB", value=text)
    return sizes




