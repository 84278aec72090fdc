"""The frozen description of a VM, validated once on construction.

Later code (argv, the VM process, the verifier) never re-checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.errors import UsageError
from harness.units import MiB

if TYPE_CHECKING:
    from harness.qemu.devices import MemoryDevice

# pc, q35 or a versioned pc-i440fx-X.Y / pc-q35-X.Y (harness.model.qemu_rules)
Machine = str
Accel = Literal["kvm", "tcg"]
MACHINES: tuple[str, ...] = ("pc", "q35")
# ACPI_MAX_RAM_SLOTS in QEMU's include/hw/acpi/pc-hotplug.h / hw/i386/pc.c
MAX_SLOTS = 256
_VM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class FwCfgFile:
    """A ``-fw_cfg name=...,file=...`` blob handed to the guest."""

    name: str
    path: Path


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: ``-kernel``/``-initrd``/``-append``."""

    kernel: Path
    initrd: Path | None = None
    append: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiskBoot:
    """Boot the user's own disk image, never modified (``snapshot=on``)."""

    image: Path
    format: Literal["raw", "qcow2"] = "qcow2"


@dataclass(frozen=True)
class VMConfig:
    """Everything needed to start one QEMU.

    ``numa`` holds the boot memory of each node (index = node id); empty
    means no ``-numa`` options (a single implicit node 0).  ``slots`` and
    ``maxmem`` of 0 mean "no hotplug region" (QEMU then refuses DIMMs).
    ``memory_devices`` and ``incoming`` belong to one QEMU process (cold-plug,
    a migration destination); :meth:`without_devices` strips them.
    """

    name: str
    machine: Machine = "pc"
    memory: int = 6 << 30
    slots: int = 32
    maxmem: int = 32 << 30
    numa: tuple[int, ...] = (3 << 30, 3 << 30)
    smp: int = 2
    accel: Accel = "tcg"
    cpu: str | None = None
    boot: KernelBoot | DiskBoot | None = None
    fw_cfg: tuple[FwCfgFile, ...] = ()
    ssh_port: int | None = None
    pvpanic: bool = True
    qemu_binary: str = "qemu-system-x86_64"
    # -bios: the machine's firmware (virt's UEFI), "" for QEMU's default
    firmware: str = ""
    # Memory devices on the command line, in order: cold-plugged DIMMs, or
    # (on a migration destination) everything plugged at the source, pinned.
    memory_devices: tuple[MemoryDevice, ...] = ()
    # ``-incoming unix:<work dir>/migrate.sock``: a migration destination.
    incoming: bool = False
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not _VM_NAME.match(self.name):
            raise UsageError(
                f"VM name {self.name!r} is not usable in -name",
                value=self.name,
                fix="use a letter followed by letters, digits, '-', '_' or '.'",
            )
        from harness.machines import machine
        from harness.model.qemu_rules import parse_machine_type

        mtype = parse_machine_type(self.machine)  # a UsageError naming it if unmodelled
        # -m, maxmem/slots and NUMA: the model's machine, checked by the rules
        # QEMU starts with (harness.machines.common), in QEMU's words: one
        # description of the machine, one set of rules.
        from harness.machines.common import check_generic_start
        from harness.model.spec import MachineSpec

        spec = MachineSpec(machine=mtype.family, machine_version=mtype.version,
                           ram_size=self.memory, slots=self.slots, maxmem=self.maxmem,
                           numa=self.numa)
        check_generic_start(spec, machine(mtype.family).ram_region)
        if self.slots < 0 or self.slots > MAX_SLOTS:
            raise UsageError(
                f"slots={self.slots} is outside 0..{MAX_SLOTS}", value=self.slots,
                fix=f"use at most {MAX_SLOTS} slots (ACPI_MAX_RAM_SLOTS)",
            )
        if any(n < 0 or n % MiB for n in self.numa) or (self.numa and not any(self.numa)):
            raise UsageError(
                "NUMA node sizes must be whole MiB (0 for a memoryless node), not all 0",
                value=self.numa, fix="e.g. --numa 3G,3G or 6G,0",
            )
        if self.smp < 1:
            raise UsageError(f"smp={self.smp} must be at least 1", value=self.smp)
        if self.accel not in ("kvm", "tcg"):
            raise UsageError(f"accelerator {self.accel!r} unknown", fix="use kvm or tcg")
        if self.ssh_port is not None and not 0 < self.ssh_port < 65536:
            raise UsageError(f"port {self.ssh_port} is not a TCP port", value=self.ssh_port)

    def without_devices(self) -> VMConfig:
        """The machine alone: no command-line memory devices, no ``-incoming``."""
        from dataclasses import replace

        return replace(self, memory_devices=(), incoming=False)

    @property
    def hotplug_enabled(self) -> bool:
        return self.slots > 0

    def cpu_model(self) -> str:
        """``host`` under KVM; under TCG ``max`` (every feature TCG emulates,
        so the guest's crypto and string routines use fast paths)."""
        if self.cpu:
            return self.cpu
        return "host" if self.accel == "kvm" else "max"
