"""The arm64 ``virt`` machine's model (harness.machines.arm64), pure.

Expected values come from QEMU's formulas (hw/arm/virt.c v7.2.0
``virt_set_memmap()``/``virt_set_high_memmap()``/``virt_memory_pre_plug()``),
written out here, not from the model: RAM at 1 GiB; device memory at
ROUND_UP(1 GiB + ram, 1 GiB), maxmem - ram + slots x 1 GiB long; memtop =
that base + ROUND_UP(size, 1 GiB) against 2^pa_bits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.devices.pc_dimm.ops import AddDimm
from harness.devices.virtio_mem.ops import AddVirtioMem
from harness.errors import PlanRefused, UsageError
from harness.machines import MACHINES, machine
from harness.machines import arm64 as arm
from harness.model.predict import predict
from harness.model.qemu_rules import CpuSpec, parse_machine_type
from harness.model.spec import MachineSpec
from harness.qemu.config import VMConfig
from harness.units import GiB, MiB

MAX = CpuSpec("other", 40, "max")


def virt(**kw: object) -> MachineSpec:
    base: dict[str, object] = {"machine": "virt", "ram_size": 2 * GiB, "slots": 4,
                               "maxmem": 8 * GiB, "numa": (GiB, GiB), "cpu": MAX}
    return MachineSpec(**{**base, **kw})  # type: ignore[arg-type]


def refusal(spec: MachineSpec, ops: list[object] | None = None) -> PlanRefused:
    with pytest.raises(PlanRefused) as exc:
        predict(spec, ops or [])  # type: ignore[arg-type]
    return exc.value


def test_registry_names_virt_once() -> None:
    assert MACHINES["virt"] == "harness.machines.arm64:VIRT"
    m = machine("virt")
    assert (m.arch, m.qemu_binary, m.console, m.type_prefix) == (
        "aarch64", "qemu-system-aarch64", "ttyAMA0", "virt")
    assert (m.pci_bus, m.pci_bus_hotplug, m.acpi_memory_hotplug) == ("pcie.0", False, True)
    assert parse_machine_type("virt-7.2").qemu_name((7, 2)) == "virt-7.2"


def test_brief_example_places_the_dimm_at_the_device_memory_base() -> None:
    # memhp model --machine virt --memory 2G,slots=4,maxmem=8G --numa 1G,1G --add d:1G@1
    p = predict(virt(), [AddDimm("d", GiB, 1)])
    base = -(-(GiB + 2 * GiB) // GiB) * GiB  # ROUND_UP(1G + 2G, 1G) = 3G
    assert p.layout.device_base == base == 0xC0000000
    assert p.layout.device_size == 8 * GiB - 2 * GiB + 4 * GiB
    (d,) = p.final.of("pc-dimm")
    assert (d.addr, d.slot, d.node, d.guest_accepts) == (base, 0, 1, True)
    assert d.blocks == tuple(range(base // (128 * MiB), (base + GiB) // (128 * MiB)))


@pytest.mark.parametrize("ram_mib", [512, 1024, 1536, 3072, 3584, 5120])
def test_layout_follows_virt_set_memmap(ram_mib: int) -> None:
    ram = ram_mib * MiB
    lay = predict(virt(ram_size=ram, maxmem=ram + 3 * GiB, numa=()), []).layout
    assert lay.device_base == (GiB + ram + GiB - 1) // GiB * GiB
    assert lay.device_size == 3 * GiB + 4 * GiB
    assert lay.boot_mem_end == GiB + ram
    assert lay.below_4g + lay.above_4g == ram and lay.below_4g == min(ram, 3 * GiB)
    assert lay.block_size == 1 << 27 and lay.phys_bits == 52


def test_highest_gpa_counts_the_high_io_regions_that_fit() -> None:
    # 52 bits: all three fit above 256 GiB: redist2 [256G, +64M), ECAM at
    # 256G+256M, MMIO aligned to 512G: [512G, 1T)
    assert predict(virt(), []).layout.max_used_gpa == (1 << 40) - 1
    # 40 bits (cortex-a53): MMIO [512G, 1T) fits exactly
    a53 = virt(cpu=CpuSpec("other", 40, "cortex-a53"))
    assert predict(a53, []).layout.max_used_gpa == (1 << 40) - 1
    # memtop past 512G on 40 bits: MMIO no longer fits (disabled, not refused);
    # compact: ECAM right after redist2 above memtop
    big = virt(ram_size=GiB, slots=2, maxmem=600 * GiB, numa=(),
               cpu=CpuSpec("other", 40, "cortex-a53"))
    top = 2 * GiB + 600 * GiB - GiB + 2 * GiB
    ecam = -(-(top + 64 * MiB) // (256 * MiB)) * (256 * MiB)
    assert predict(big, []).layout.max_used_gpa == ecam + 256 * MiB - 1


def test_start_up_refusals_in_qemus_order_and_words() -> None:
    exc = refusal(virt(slots=257, maxmem=4 * GiB, numa=(GiB, 2 * GiB)))
    assert exc.kind == "numa-mismatch"  # numa_complete_configuration() first
    exc = refusal(virt(slots=257, maxmem=4 * GiB, numa=()))
    assert exc.qemu_message == "unsupported number of memory slots: 257"
    # cortex-a53: 40 bits; 1G RAM, 4 slots, maxmem 2T (measured on 7.2)
    exc = refusal(virt(ram_size=GiB, maxmem=2 << 40, numa=(),
                       cpu=CpuSpec("other", 40, "cortex-a53")))
    top = 2 * GiB + (2 << 40) - GiB + 4 * GiB
    assert exc.qemu_message == ("Addressing limited to 40 bits, but memory exceeds it by "
                                f"{top - (1 << 40)} bytes")
    assert top - (1 << 40) == 1104880336896
    exc = refusal(virt(maxmem=GiB, numa=()))
    assert exc.kind == "maxmem-below-ram"
    exc = refusal(virt(ram_size=1 << 30, slots=0, maxmem=(1 << 64) - GiB, numa=()))
    assert exc.qemu_message == "maxmem/slots too huge"
    # no page-alignment check of maxmem on virt (pc has one)
    predict(virt(ram_size=GiB, slots=1, maxmem=2 * GiB + 1, numa=()), [])


def test_no_firmware_means_no_ged_and_every_dimm_is_refused(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setitem(MACHINES, "virt", "harness.machines.arm64:VIRT_NO_FIRMWARE")
    exc = refusal(virt(), [AddDimm("d", GiB, 1)])
    assert exc.qemu_message == "memory hotplug is not enabled: missing acpi-ged device"
    assert exc.kind == "no-memory-hotplug"
    # after the id check (qdev_set_id), before the slots (pc_dimm_pre_plug)
    exc = refusal(virt(slots=0, maxmem=0, numa=()), [AddDimm("d", GiB)])
    assert exc.kind == "no-memory-hotplug"


def test_virtio_mem_pci_meets_pcie0() -> None:
    exc = refusal(virt(), [AddVirtioMem("vm0", GiB, 0)])
    assert exc.qemu_message == "Bus 'pcie.0' does not support hotplugging"


def test_unknown_arm_cpu_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="arm64 CPU model"):
        predict(virt(cpu=CpuSpec("other", 40, "cortex-a15")), [])


def test_virt_boots_through_uefi_without_pvpanic() -> None:
    """virt's VM: qemu-system-aarch64, -bios before -kernel (the GED needs
    firmware), no ISA pvpanic; the seed's NUMA options as on pc."""
    from harness.qemu.argv import RuntimePaths, build_argv
    from harness.qemu.config import KernelBoot

    cfg = VMConfig(name="x", machine="virt", memory=2 * GiB, slots=4, maxmem=8 * GiB,
                   numa=(GiB, GiB), qemu_binary=arm.VIRT.qemu_binary,
                   pvpanic=arm.VIRT.pvpanic, firmware="/fw/QEMU_EFI.fd",
                   boot=KernelBoot(Path("/k"), Path("/i"), ("console=ttyAMA0",)))
    argv = build_argv(cfg, RuntimePaths(Path("/w")))
    assert argv[0] == "qemu-system-aarch64"
    assert argv.index("-bios") + 1 == argv.index("/fw/QEMU_EFI.fd") < argv.index("-kernel")
    assert "pvpanic" not in argv
    assert "-numa" in argv and "virt" in argv


def test_the_default_arm64_recipe() -> None:
    """The arm64 guest: arm64 packages, the PL011 console, no pvpanic module."""
    from harness.image.guest import Recipe

    recipe = Recipe.load(arch="arm64")
    assert recipe.kernel_package.endswith("-arm64") and recipe.triplet == "aarch64-linux-gnu"
    assert f"console={arm.VIRT.console}" in recipe.cmdline
    assert not any(m.startswith("pvpanic") for m in recipe.modules)
    assert Recipe.load().packages == recipe.packages
    with pytest.raises(UsageError, match="'s390x'"):
        Recipe.load(arch="s390x")
