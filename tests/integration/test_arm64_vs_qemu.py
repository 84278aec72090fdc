"""The arm64 ``virt`` model (harness.machines.arm64) against a real
qemu-system-aarch64 (Debian 12's 7.2; 10.0 when given), paused (-S), TCG,
no guest.

With firmware (Debian's QEMU_EFI.fd, as :data:`harness.machines.arm64.VIRT`
assumes) QEMU has its ACPI GED and takes pc-dimms: ``query-memory-devices``
must report the model's address, slot, node and size, and each refusal the
model's words.  Without firmware (:data:`VIRT_NO_FIRMWARE`) every DIMM is
refused for want of the GED.  Start-up refusals come from the machine's
memory options.  ``MEMHP_RANDOM_PLANS=N`` random plans (seeded; 20 by
default); ``MEMHP_AGREEMENT_LOG=FILE`` logs each comparison (as
test_model_vs_qemu.py does).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from _qemu import log, paused_qemu

from harness.calibrate import qemu as calibrate
from harness.calibrate.qemu import Comparison
from harness.devices.pc_dimm.ops import AddDimm
from harness.machines import MACHINES
from harness.machines.arm64 import QEMU_EFI
from harness.model.predict import predict
from harness.model.qemu_rules import CpuSpec
from harness.model.spec import MachineSpec
from harness.qemu.qmp import QMPCommandError
from harness.qemu.version import qemu_version
from harness.units import GiB, MiB

MAX = CpuSpec("other", 40, "max")
SIZES = (2 * MiB, 128 * MiB, 130 * MiB, 129 * MiB, 256 * MiB, 512 * MiB, GiB)


# QEMU versions checked: the system's 7.2 (Debian 12's qemu-system-arm) and
# 10.0 (bookworm-backports' qemu-system-arm, fetched into memhp's cache as
# --qemu debian:10.0 does for a virt machine)


@pytest.fixture(scope="module", params=["7.2", "10.0"], ids=["qemu7.2", "qemu10.0"])
def aarch64(request: pytest.FixtureRequest) -> tuple[str, tuple[int, int]]:
    want: str = request.param
    if want == "7.2":
        found = shutil.which("qemu-system-aarch64")
        if found is None:
            pytest.skip("qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)")
    else:
        from harness.errors import HarnessError
        from harness.qemu.fetch import resolve_qemu

        try:
            found = resolve_qemu(f"debian:{want}", arch="aarch64")
        except HarnessError as exc:
            pytest.skip(f"Debian's qemu-system-aarch64 {want} could not be fetched: {exc}")
    version = qemu_version(found)
    if not version.startswith(want + "."):
        pytest.skip(f"{found} is QEMU {version}, not {want}")
    if not Path(QEMU_EFI).is_file():
        pytest.skip(f"{QEMU_EFI} is missing (apt-get install qemu-efi-aarch64): no ACPI GED")
    major, minor = want.split(".")
    return found, (int(major), int(minor))


def _checked(version: str, comparisons: list[Comparison]) -> None:
    for c in comparisons:
        log({"qemu": version, "machine": "virt", "what": c.what, "agree": c.agree})
    bad = [f"{c.what}: {c.detail}\n  reproduce: {c.reproducer}" for c in comparisons
           if not c.agree]
    assert not bad, "\n".join(bad)


def virt(version: tuple[int, int], **kw: object) -> MachineSpec:
    base: dict[str, object] = {"machine": "virt", "qemu_version": version, "cpu": MAX,
                               "numa": ()}
    return MachineSpec(**{**base, **kw})  # type: ignore[arg-type]


def check_plan(binary: str, spec: MachineSpec, plan: list[AddDimm]) -> None:
    comparisons = calibrate.check_plan(binary, spec, plan, calibrate.Tally())
    assert comparisons
    _checked(qemu_version(binary), comparisons)


def test_brief_example(aarch64: tuple[str, tuple[int, int]]) -> None:
    """memhp model --machine virt --memory 2G,slots=4,maxmem=8G --numa 1G,1G --add d:1G@1"""
    binary, version = aarch64
    spec = virt(version, ram_size=2 * GiB, slots=4, maxmem=8 * GiB, numa=(GiB, GiB))
    assert predict(spec, [AddDimm("d", GiB, 1)]).final.of("pc-dimm")[0].addr == 3 * GiB
    check_plan(binary, spec, [AddDimm("d", GiB, 1)])


START_UP: tuple[dict[str, object], ...] = (
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 4 * GiB},                  # starts
    {"ram_size": 2 * GiB, "slots": 0, "maxmem": 4 * GiB},                  # no slots: starts
    {"ram_size": GiB, "slots": 1, "maxmem": 2 * GiB + 1},                  # no page check
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": 2 * GiB},                  # maxmem == RAM
    {"ram_size": 2 * GiB, "slots": 2, "maxmem": GiB},                      # maxmem < RAM
    {"ram_size": 2 * GiB, "slots": 257, "maxmem": 4 * GiB},                # > 256 slots
    {"ram_size": 2 * GiB, "slots": 256, "maxmem": 4 * GiB},                # 256 slots
    {"ram_size": 2 * GiB, "slots": 257, "maxmem": 4 * GiB, "numa": (GiB, 2 * GiB)},
    {"ram_size": GiB, "slots": 4, "maxmem": 2 << 40, "cpu": CpuSpec("other", 40, "cortex-a53")},
    {"ram_size": GiB, "slots": 4, "maxmem": 1019 * GiB,
     "cpu": CpuSpec("other", 40, "cortex-a53")},                           # memtop = 1T
    {"ram_size": GiB, "slots": 4, "maxmem": 1020 * GiB,
     "cpu": CpuSpec("other", 40, "cortex-a53")},                           # 1 GiB over
    {"ram_size": GiB, "slots": 4, "maxmem": 16 << 40, "cpu": CpuSpec("other", 40, "cortex-a57")},
    {"ram_size": GiB, "slots": 4, "maxmem": 5000 << 40},                   # beyond 52 bits
)


@pytest.mark.parametrize("kw", START_UP, ids=lambda kw: ",".join(
    f"{k}={getattr(v, 'model', v)}" for k, v in kw.items()))
def test_start_up_refusals(aarch64: tuple[str, tuple[int, int]], kw: dict[str, object]) -> None:
    binary, version = aarch64
    c = calibrate.check_start(binary, virt(version, **kw), calibrate.Tally())
    _checked(qemu_version(binary), [c])


def test_without_firmware_every_dimm_is_refused(aarch64: tuple[str, tuple[int, int]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """-kernel-style start (no -bios): no GED; QEMU's words, the model's."""
    binary, version = aarch64
    monkeypatch.setitem(MACHINES, "virt", "harness.machines.arm64:VIRT_NO_FIRMWARE")
    spec = virt(version, ram_size=2 * GiB, slots=4, maxmem=8 * GiB, numa=(GiB, GiB))
    check_plan(binary, spec, [AddDimm("d0", GiB, 1), AddDimm("d1", 128 * MiB, 0)])


def test_virtio_mem_pci_is_refused_on_pcie0(aarch64: tuple[str, tuple[int, int]]) -> None:
    binary, version = aarch64
    spec = virt(version, ram_size=2 * GiB, slots=4, maxmem=8 * GiB)
    from harness.devices.virtio_mem.ops import AddVirtioMem

    want = calibrate.model_refusal(spec, [AddVirtioMem("vm0", GiB)])
    assert want is not None
    with paused_qemu(binary, spec) as qmp:
        qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": "v0", "size": GiB})
        with pytest.raises(QMPCommandError) as exc:
            qmp.execute("device_add", {"driver": "virtio-mem-pci", "id": "vm0",
                                       "memdev": "v0", "node": 0})
    same = exc.value.desc == want.qemu_message
    _checked(qemu_version(binary), [Comparison("refusal", same, "" if same else
                                               f"model {want.qemu_message!r}; QEMU "
                                               f"{exc.value.desc!r}")])


def random_plan(version: tuple[int, int], rng: random.Random
                ) -> tuple[MachineSpec, list[AddDimm]]:
    """Two nodes, 1-4 slots, up to six DIMMs: sizes aligned or not, first
    fit, address 0, aligned and misaligned explicit addresses, a missing node."""
    ram = rng.choice((512, 1024, 1536, 2048, 3072, 5120)) * MiB
    slots = rng.choice((1, 2, 4))
    spec = virt(version, ram_size=ram, slots=slots, maxmem=ram + rng.randint(1, 3) * GiB,
                numa=(ram // 2, ram - ram // 2))
    base = predict(spec, []).layout.device_base
    plan = []
    for i in range(rng.randint(1, 6)):
        where = rng.choice((None, None, 0, 1, 3))
        addr = None if where is None else 0 if where == 0 else \
            base + where * GiB - (MiB if where == 3 else 0)
        plan.append(AddDimm(f"d{i}", rng.choice(SIZES), rng.randint(0, 2), addr))
    return spec, plan


@pytest.mark.parametrize("seed", range(int(os.environ.get("MEMHP_RANDOM_PLANS", "20"))))
def test_random_plans_match_qemu(aarch64: tuple[str, tuple[int, int]], seed: int) -> None:
    binary, version = aarch64
    spec, plan = random_plan(version, random.Random(seed))
    check_plan(binary, spec, plan)
