"""The arm64 tier: a representative part of the suite on QEMU's ``virt``
machine, booting memhp's default arm64 guest through UEFI under TCG (its
own QEMU: ``qemu-system-aarch64``, or ``--memhp-qemu debian:X.Y`` fetched
for aarch64).  Every step is checked against the model as on x86; nothing
here names an address or block number.  Slow: each VM emulates another
architecture (a first boot is ~20 s on QEMU 7.2; later ones start warm).
"""

from __future__ import annotations

import pytest

from harness.scenario import add, offline, online, remove, reset
from harness.testing import assert_passed, run_steps

VIRT = {"machine": "virt", "memory": "2G,slots=4,maxmem=8G", "numa": "1G,1G"}
pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.memhp_machine(**VIRT)]


def test_arm64_seed_session(memhp_vm, request) -> None:
    """The seed on virt: a 1G DIMM on node 1 through the ACPI GED, onlined
    movable; blocks, node, zone and node totals as the model predicts."""
    results = run_steps(memhp_vm, [add("dimm0:1G@1"), online("dimm0", "online_movable")],
                        request)
    assert_passed(results)
    assert memhp_vm.config.machine == "virt" and memhp_vm.config.firmware
    blocks = [b for b in results[-1].observed["blocks"] if b["state"] == "online"]
    assert len(blocks) == (1 << 30) // results[-1].expected["block_size"]


def test_arm64_dimms_on_both_nodes_and_unplug(memhp_vm, request) -> None:
    """One DIMM per node, the second taken away again: offline, then ACPI
    eject through the GED."""
    assert_passed(run_steps(memhp_vm, [
        add("dimm0:512M@0"), online("dimm0"), add("dimm1:1G@1"), online("dimm1"),
        offline("dimm1"), remove("dimm1"),
    ], request))


def test_arm64_reset_keeps_dimms(memhp_vm, request) -> None:
    """A system reset: UEFI and the kernel boot again with the DIMM in
    place, which the kernel now finds at boot (the model's after-boot)."""
    assert_passed(run_steps(memhp_vm, [
        add("dimm0:512M@1"), online("dimm0", "online_movable"), reset(),
    ], request))


def test_arm64_on_qemu_10_with_debians_6_12(tmp_path) -> None:
    """The rest of the arm64 matrix, one session: QEMU 10.0's
    qemu-system-aarch64 (fetched as --qemu debian:10.0 does for virt) with
    bookworm-backports' 6.12 cloud-arm64 kernel, two DIMMs and an unplug,
    through the CLI as a user would run it."""
    import json

    from harness.errors import HarnessError
    from harness.qemu.fetch import resolve_qemu
    from harness.testing import run_cli

    try:
        resolve_qemu("debian:10.0", arch="aarch64")
    except HarnessError as exc:
        pytest.skip(f"Debian's qemu-system-aarch64 10.0 could not be fetched: {exc}")
    proc = run_cli("run", "--machine", "virt", "--qemu", "debian:10.0", "--accel", "tcg",
                   "--kernel-package", "linux-image-cloud-arm64/bookworm-backports",
                   "--memory", VIRT["memory"], "--numa", VIRT["numa"],
                   "--add", "a:512M@0", "--add", "b:1G@1", "--remove", "a", "--json",
                   "--keep", str(tmp_path / "art"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["result"] == "pass" and result["qemu_version"].startswith("10.0.")
    assert "6.12" in result["kernel"] and "arm64" in result["kernel"]
    assert [s["passed"] for s in result["steps"]] == [True] * len(result["steps"])
