"""`--disk`: the user's own bootable image, booted for real and never modified.

The disk is made here from the default guest (a FAT file system with
syslinux, the default kernel and initramfs, and the guest's SSH keys baked
in, as a user's OS image has its own): no network, no root, no loop devices.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.image import ensure_default_image
from harness.image.cpio import CpioWriter
from harness.image.keys import write_guest_keys
from harness.testing import run_cli

pytestmark = [pytest.mark.vm]

TOOLS = ("mkfs.vfat", "mcopy", "syslinux")
SMALL = ["--memory", "2G,slots=2,maxmem=4G", "--numa", "1G,1G", "--add", "d0:512M@1",
         "--accel", "tcg"]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"cannot make a bootable disk: {', '.join(missing)} not installed "
                    "(apt-get install dosfstools mtools syslinux syslinux-common; "
                    "`make test` does)")
    image = ensure_default_image()
    work = tmp_path_factory.mktemp("disk")
    keys = write_guest_keys(work / "keys")
    extra = io.BytesIO()
    w = CpioWriter(extra)
    w.file("etc/memhp/authorized_keys", keys.authorized_keys_path.read_bytes(), 0o600)
    w.file("etc/memhp/host_key", keys.host_key_path.read_bytes(), 0o600)
    w.close()
    # The kernel unpacks concatenated archives in order (compressed or not),
    # each starting on a 4-byte boundary (zero padding is skipped).
    base = Path(image.initrd).read_bytes()
    initrd = work / "initrd"
    initrd.write_bytes(base + b"\0" * (-len(base) % 4) + extra.getvalue())
    cfg = work / "syslinux.cfg"
    cfg.write_text("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n"
                   f"  INITRD initrd\n  APPEND {' '.join(image.cmdline)}\n")
    disk = work / "disk.img"
    with disk.open("wb") as f:
        f.truncate(96 << 20)
    for argv in (["mkfs.vfat", "-n", "MEMHPDISK", str(disk)],
                 ["mcopy", "-i", str(disk), str(image.kernel), "::vmlinuz"],
                 ["mcopy", "-i", str(disk), str(initrd), "::initrd"],
                 ["mcopy", "-i", str(disk), str(cfg), "::syslinux.cfg"],
                 ["syslinux", "--install", str(disk)]):
        subprocess.run(argv, check=True, capture_output=True)
    host_pub = work / "ssh_host_ed25519_key.pub"
    host_pub.write_text(keys.host_public_line + "\n")
    return {"disk": disk, "key": keys.client_key_path, "host_pub": host_pub}


def memhp(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", *SMALL, *args, timeout=600)


def test_disk_boots_passes_and_is_not_modified(disk) -> None:
    before = _sha256(disk["disk"])
    proc = memhp("--disk", str(disk["disk"]), "--ssh-key", str(disk["key"]),
                 "--ssh-host-key", str(disk["host_pub"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout
    assert _sha256(disk["disk"]) == before


def test_disk_host_key_is_pinned_on_first_use_without_host_key(disk) -> None:
    before = _sha256(disk["disk"])
    proc = memhp("--disk", str(disk["disk"]), "--ssh-key", str(disk["key"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pinned on first use" in proc.stderr
    assert _sha256(disk["disk"]) == before


def test_disk_with_a_different_host_key_is_refused(disk, tmp_path: Path) -> None:
    other = write_guest_keys(tmp_path / "other")
    wrong = tmp_path / "wrong.pub"
    wrong.write_text(other.host_public_line + "\n")
    proc = memhp("--disk", str(disk["disk"]), "--ssh-key", str(disk["key"]),
                 "--ssh-host-key", str(wrong))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "host key mismatch" in proc.stderr
    assert "PASS" not in proc.stdout
