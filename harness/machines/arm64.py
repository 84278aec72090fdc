"""The arm64 ``virt`` machine (hw/arm/virt.c): where QEMU puts RAM and
device memory, what it refuses at start-up, how a DIMM reaches the guest,
and how memhp would start such a guest (binary, kernel image, console).

Facts from QEMU v7.2.0 unless noted, checked against Debian's
qemu-system-aarch64 7.2.22 and 10.0.2 paused under TCG
(tests/integration/test_arm64_vs_qemu.py); v10.0 computes the same map
(the device-memory container moved to ``machine_memory_devices_init()``
in v8.2; "Addressing limited ..." lost its trailing newline in v9.0):

Memory map -- ``virt_set_memmap()``
  * RAM starts at 1 GiB: ``base_memmap[VIRT_MEM] = { GiB, LEGACY_RAMLIMIT_BYTES }``
    (below it: flash, GIC, UART, PCIe MMIO/ECAM), one contiguous bank;
  * device memory: base = ROUND_UP(VIRT_MEM base + ram_size, 1 GiB), size =
    maxram_size - ram_size + ram_slots x 1 GiB ("assumes 1GiB page max
    alignment per slot"); created when that size is > 0;
  * ``memtop`` = device base + ROUND_UP(device size, 1 GiB): the end of
    RAM and device memory;
  * the high IO regions (``extended_memmap``: GIC redistributors 64 MiB,
    PCIe ECAM 256 MiB, PCIe MMIO 512 GiB) float above max(memtop, 256 GiB),
    each aligned to its size (``virt_set_high_memmap()``); a region that
    does not fit below 2^pa_bits is disabled, not refused.  With
    ``compact-highmem`` (machine types 7.2+; ``virt_machine_7_1_options()``
    sets ``no_highmem_compact``) a disabled region does not move the next
    one.  ``vms->highest_gpa`` is the end of the last fitting region - 1,
    at least memtop - 1 (:attr:`Layout.max_used_gpa`).
  * ``pa_bits`` is the vCPU's: ``machvirt_init()`` makes a temporary CPU
    and asks ``arm_pamax()`` (ID_AA64MMFR0_EL1.PARange): 52 for ``-cpu
    max`` under TCG, 44 for cortex-a57, 40 for cortex-a53 (measured with
    QEMU 7.2); ``highmem=off`` would make it 32 (memhp never sets it).
    Under KVM ``virt_kvm_type()`` uses the host's IPA limit instead (not
    modelled).

Layout's fields, named for x86, hold for virt: ``below_4g`` the RAM below
4 GiB (at most 3 GiB, from 1 GiB up), ``above_4g`` the rest (contiguous,
``above_4g_start`` 4 GiB), ``boot_mem_end`` the end of RAM (1 GiB +
ram_size), ``phys_bits`` the vCPU's pa_bits, ``max_used_gpa`` highest_gpa.

Start-up refusals, in QEMU's order (:func:`check_start`): the shared ones
(:mod:`harness.machines.common`: machine type, ``-m``, host RAM
``mach-virt.ram``, NUMA); then ``virt_set_memmap()``: more than
ACPI_MAX_RAM_SLOTS (256) slots, whether or not maxmem > RAM ("unsupported
number of memory slots: N"); memtop beyond 2^pa_bits ("Addressing limited
to N bits, but memory exceeds it by M bytes"); memtop wrapping past 2^64
("maxmem/slots too huge").  virt has no maxmem page-alignment check (pc's)
and no RAM limit of its own since v4.0 (the old "mach-virt: cannot model
more than 255GB RAM" is gone: 7.2's binary has no such string); the TCG
check of ``virt_cpu_post_init()`` ("VCPU supports less PA bits") cannot
fire, highest_gpa being below 2^pa_bits by construction.

pc-dimm hot-add -- ``virt_memory_pre_plug()``: "memory hotplug is not
enabled: missing acpi-ged device" unless ``vms->acpi_dev``, which
``machvirt_init()`` creates only when ``has_ged && aarch64 &&
firmware_loaded && virt_is_acpi_enabled()``: with UEFI firmware (``-bios``
or pflash), not with ``-kernel`` alone, ``acpi=on`` or not (checked on
7.2).  :data:`VIRT` assumes Debian's QEMU_EFI.fd; :data:`VIRT_NO_FIRMWARE`
is the same machine without it.  Then ``pc_dimm_pre_plug(dimm, machine,
NULL, errp)``: no legacy alignment, so each DIMM is aligned to its
backend's (2 MiB for RAM on an x86_64 host, as on pc).  (nvdimm needs
``nvdimm=on`` and MTE forbids hotplug: memhp sets neither.)

virtio-mem-pci -- a bus-less PCI device lands on the GPEX root bus
``pcie.0`` (``create_pcie()``), which has no hotplug handler: device_add
says "Bus 'pcie.0' does not support hotplugging" (qdev_device_add(),
checked on 7.2), as on q35.

Guest -- the kernel's memory block is one sparsemem section:
arch/arm64/include/asm/sparsemem.h SECTION_SIZE_BITS 27 with 4K (and 16K)
pages = 128 MiB (29, 512 MiB, with 64K pages; Debian's arm64 kernel has
4K pages); arm64 does not override ``memory_block_size_bytes()``.  The
serial console is the PL011 ``ttyAMA0`` (``create_uart()``); the kernel
image an arm64 ``Image`` (Debian's ``vmlinuz``, gzip-compressed, which
QEMU's ``load_aarch64_image()`` unpacks; bookworm's is a plain Image).
memhp boots it through UEFI (``-bios``), which loads the ``-kernel`` given
through fw_cfg, so that QEMU creates the GED (the default arm64 guest:
``guest_images/recipe.toml``'s ``[arch.arm64]``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness.errors import UsageError, refuse
from harness.machines.base import Machine
from harness.machines.common import check_coldplug_ids, check_generic_start
from harness.model.layout import BACKEND_ALIGN, Layout
from harness.units import GiB, MiB

# base_memmap[VIRT_MEM].base and LEGACY_RAMLIMIT_BYTES (hw/arm/virt.c)
VIRT_MEM_BASE = GiB
LEGACY_RAMLIMIT_BYTES = 255 * GiB
FOUR_GIB = 4 * GiB
# ACPI_MAX_RAM_SLOTS (include/hw/acpi/pc-hotplug.h), checked in virt_set_memmap()
ACPI_MAX_RAM_SLOTS = 256
# extended_memmap[] sizes, in order: VIRT_HIGH_GIC_REDIST2, _PCIE_ECAM, _PCIE_MMIO
HIGH_REGIONS = (64 * MiB, 256 * MiB, 512 * GiB)
# arch/arm64/include/asm/sparsemem.h: SECTION_SIZE_BITS 27 (4K pages)
SECTION_SIZE_BITS = 27
BLOCK_SIZE = 1 << SECTION_SIZE_BITS
# arm_pamax() of the vCPU models memhp knows, measured on QEMU 7.2 (TCG):
# the "Addressing limited to N bits" refusal names N
PA_BITS = {"max": 52, "cortex-a57": 44, "cortex-a53": 40}
# virt_machine_7_1_options(): no_highmem_compact for machine types <= 7.1
COMPACT_HIGHMEM_FROM = (7, 2)
VIRT_RAM = "mach-virt.ram"  # machvirt_init()'s memory_region name
NO_GED = "memory hotplug is not enabled: missing acpi-ged device"
# Debian's qemu-efi-aarch64: UEFI firmware, so that QEMU creates the GED
QEMU_EFI = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


def pa_bits(spec: Any) -> int:
    """The vCPU's physical address bits (``arm_pamax()``)."""
    model = spec.cpu.model
    if model not in PA_BITS:
        raise UsageError(f"arm64 CPU model {model!r} is not known to the model", value=model,
                         fix=f"use one of {', '.join(PA_BITS)} (memhp's default is max)")
    return PA_BITS[model]


def device_region(spec: Any) -> tuple[int, int]:
    """``virt_set_memmap()``: (device_memory_base, device_memory_size)."""
    size = spec.maxram - spec.ram_size + spec.slots * GiB
    return _round_up(VIRT_MEM_BASE + spec.ram_size, GiB), max(0, size)


def memtop(spec: Any) -> int:
    """The end of RAM and device memory, as QEMU's 64-bit arithmetic has it."""
    base, size = device_region(spec)
    return (base + _round_up(size, GiB)) % (1 << 64)


def highest_gpa(top: int, bits: int, compact: bool) -> int:
    """``virt_set_high_memmap()``: the last fitting high IO region's end - 1."""
    highest = top - 1
    base = max(top, VIRT_MEM_BASE + LEGACY_RAMLIMIT_BYTES)
    for size in HIGH_REGIONS:
        region = _round_up(base, size)
        fits = region + size <= 1 << bits
        if compact and not fits:
            continue
        base = region + size
        if fits:
            highest = base - 1
    return highest


def virt_layout(spec: Any) -> Layout:
    """Where QEMU's virt puts RAM and device memory (module docstring)."""
    ram, bits = spec.ram_size, pa_bits(spec)
    below = min(ram, FOUR_GIB - VIRT_MEM_BASE)
    base, size = device_region(spec)
    why = (f"virt: RAM at 1G..{(VIRT_MEM_BASE + ram) >> 20}M (virt_set_memmap, "
           "base_memmap[VIRT_MEM])")
    if spec.maxram >= ram and size:
        why += (f"; device memory starts at ROUND_UP(1G + {ram >> 20}M, 1G) = {base:#x} and "
                f"spans maxmem - mem + 1G x {spec.slots} slots (virt.c virt_set_memmap)")
    else:
        base = size = 0
    compact = spec.rules.machine_version >= COMPACT_HIGHMEM_FROM
    top = memtop(spec)
    return Layout(spec.machine, below, ram - below, base, size, spec.block_size or BLOCK_SIZE,
                  VIRT_MEM_BASE + ram, BACKEND_ALIGN, why, FOUR_GIB,
                  highest_gpa(top, bits, compact) if top <= 1 << bits else top - 1, bits)


def check_start(spec: Any, layout: Any) -> None:
    """QEMU's start-up refusals, in QEMU's order (module docstring)."""
    check_generic_start(spec, VIRT_RAM)
    if spec.slots > ACPI_MAX_RAM_SLOTS:
        raise refuse("too-many-slots", f"slots={spec.slots} exceeds ACPI_MAX_RAM_SLOTS "
                     f"({ACPI_MAX_RAM_SLOTS})", f"unsupported number of memory slots: "
                     f"{spec.slots}", value=spec.slots, limit=ACPI_MAX_RAM_SLOTS,
                     fix=f"use at most {ACPI_MAX_RAM_SLOTS} slots")
    top, limit = memtop(spec), 1 << layout.phys_bits
    if top > limit:
        raise refuse("phys-bits", f"RAM and device memory end at {top:#x}, beyond the "
                     f"{layout.phys_bits} physical address bits of -cpu {spec.cpu.model}",
                     f"Addressing limited to {layout.phys_bits} bits, but memory exceeds it "
                     f"by {top - limit} bytes", value=top, limit=limit,
                     fix="use a smaller maxmem or fewer slots, or -cpu max (52 bits)")
    if top < device_region(spec)[0]:
        raise refuse("maxmem-overflow", "maxmem and slots overflow the 64-bit address space",
                     "maxmem/slots too huge", value=spec.maxram, limit=None,
                     fix="use a smaller maxmem")


VIRT = Machine(name="virt", arch="aarch64", type_prefix="virt",
               qemu_binary="qemu-system-aarch64", console="ttyAMA0", kernel_image="vmlinuz",
               # RAM is one bank from 1 GiB: nothing splits it
               ram_split=lambda ram: (ram + 1, "virt: one RAM bank from 1G (virt_set_memmap)"),
               pci_hole64_size=0, pci_bus="pcie.0", pci_bus_hotplug=False,
               layout=virt_layout, check_start=check_start, check_coldplug=check_coldplug_ids,
               acpi_memory_hotplug=True, memory_hotplug_refusal=NO_GED,
               firmware=QEMU_EFI, debian_arch="arm64", pvpanic=False,
               ram_region=VIRT_RAM)
# The same machine started without firmware (-kernel only): no ACPI GED, so
# every pc-dimm is refused (not registered: tests use it directly)
VIRT_NO_FIRMWARE = replace(VIRT, acpi_memory_hotplug=False, firmware="")
