"""What memhp knows of a QEMU machine: one frozen :class:`Machine` value.

Pure data and pure functions: the model reads the layout and refusal
rules from it, the live side the binary, kernel image and console.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Machine:
    name: str  # QEMU's -machine alias: "pc"
    arch: str  # "x86_64"
    type_prefix: str  # versioned machine types: "<prefix>-X.Y"
    qemu_binary: str  # "qemu-system-x86_64"
    console: str  # the guest's serial console ("ttyS0")
    kernel_image: str  # the kernel image memhp boots ("vmlinuz": a bzImage)
    # RAM -> (the lowmem boundary: RAM at or above it is split there; why)
    ram_split: Callable[[int], tuple[int, str]]
    pci_hole64_size: int  # the 64-bit PCI hole above device memory
    pci_bus: str  # the bus a bus-less PCI device (virtio-mem-pci) lands on
    pci_bus_hotplug: bool  # ... and whether it takes hot-plugged devices
    # where QEMU puts RAM and device memory: MachineSpec -> harness.model.layout.Layout
    layout: Callable[[Any], Any]
    # QEMU's start-up refusals: (MachineSpec, Layout) -> None or PlanRefused
    check_start: Callable[[Any, Any], None]
    # refusals while QEMU parses the command line (MachineSpec) -> None
    check_coldplug: Callable[[Any], None]
    acpi_memory_hotplug: bool  # pc-dimm hot-add through the ACPI memory device
    # ... and QEMU's words for a pc-dimm when it is off (the machine's pre_plug)
    memory_hotplug_refusal: str = ""
    # the firmware memhp starts it with (-bios), "" for none
    firmware: str = ""
    # Debian's name of the guest's architecture: its default image's packages
    debian_arch: str = "amd64"
    # the ISA pvpanic device (a guest panic -> QMP GUEST_PANICKED): x86 only
    pvpanic: bool = True
    # the name of boot RAM in QEMU's refusals (memory_region_init_ram's)
    ram_region: str = "pc.ram"

    def type_name(self, version: tuple[int, int] | None) -> str:
        """The ``-machine`` value: the alias, or ``<prefix>-X.Y``."""
        return self.name if version is None else f"{self.type_prefix}-{version[0]}.{version[1]}"
