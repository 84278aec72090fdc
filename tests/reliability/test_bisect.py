"""`memhp bisect` exit codes, for real: git bisect run's convention."""

from __future__ import annotations

import subprocess

import pytest

from harness.cli.regress import BAD, GOOD, SKIP
from harness.testing import run_cli

pytestmark = [pytest.mark.vm]

SMALL = ["--memory", "2G,slots=2,maxmem=4G", "--numa", "1G,1G", "--add", "d0:512M@1",
         "--accel", "tcg"]


def bisect(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bisect", *SMALL, *args, timeout=600)


def test_good_kernel_is_0(default_kernel) -> None:
    proc = bisect("--kernel", str(default_kernel))
    assert proc.returncode == GOOD, proc.stderr


def test_guest_that_never_boots_is_125(default_kernel) -> None:
    """No init in the initramfs: the kernel panics before userspace."""
    proc = bisect("--kernel", str(default_kernel), "--append", "rdinit=/no/such/init",
                  "--timeout-scale", "0.5")
    assert proc.returncode == SKIP, proc.stderr
    assert "skip" in proc.stderr


def test_model_mismatch_is_1(default_kernel) -> None:
    """A guest that puts hot-added memory on the wrong node is bad: with
    ``numa=off`` the kernel ignores the SRAT, so the DIMM QEMU plugs on
    node 1 shows up on node 0 (a behaviour memhp must flag, as it would a
    regression in the kernel's NUMA placement)."""
    proc = bisect("--kernel", str(default_kernel), "--append", "numa=off",
                  "--add", "d1:128M@1")
    assert proc.returncode == BAD, proc.stderr
    assert "mismatch" in proc.stderr or "node" in proc.stderr


def test_unbuildable_source_is_125(tmp_path) -> None:
    proc = bisect("--source", str(tmp_path), "--build-cmd", "exit 2")
    assert proc.returncode == SKIP
    assert "build failed" in proc.stderr


def test_guest_without_nic_driver_is_125_at_once(default_kernel, tmp_path) -> None:
    """A modules tree that claims the NIC and fw_cfg drivers are built in
    (they are not, in this kernel): the guest's /init reports it has no
    network, and memhp says so instead of waiting out the SSH timeout."""
    from harness.image.bzimage import kernel_version

    mdir = tmp_path / "lib/modules" / kernel_version(default_kernel)
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text("")
    (mdir / "modules.builtin").write_text(
        "".join(f"kernel/drivers/x/{m}.ko\n"
                for m in ("virtio_pci", "virtio_net", "qemu_fw_cfg", "pvpanic_mmio")))
    proc = bisect("--kernel", str(default_kernel), "--modules", str(tmp_path))
    assert proc.returncode == SKIP, proc.stderr
    assert "cannot be reached over SSH" in proc.stderr
    assert "CONFIG_VIRTIO_NET" in proc.stderr
