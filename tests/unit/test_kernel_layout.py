"""Where memhp finds a user kernel's modules and config: Debian's layouts
(``boot/vmlinuz-VER`` + ``lib/modules/VER``, and since trixie's 6.12 / 7.x
everything in ``usr/lib/modules/VER/``), checked against fake trees in a temp
dir (FAKE_*: a bzImage header with a version string and nothing else, empty
module files, one-line configs; not real kernel files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.image.user_kernel import check_needed_drivers, modules_candidates, user_kernel

FAKE_KVER = "9.9.9+fake-amd64"  # never a host's /lib/modules/<release>
FAKE_CONFIG_MODULAR = "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_NET=m\nCONFIG_FW_CFG_SYSFS=m\n"


def fake_bzimage(path: Path, kver: str = FAKE_KVER) -> Path:
    """The bytes kernel_version() reads: the 'HdrS' header and the version string."""
    head = bytearray(0x8000)
    head[0x202:0x206] = b"HdrS"
    head[0x206:0x208] = (0x020F).to_bytes(2, "little")
    head[0x20E:0x210] = (0x1000 - 0x200).to_bytes(2, "little")
    text = f"{kver} (fake@memhp) #1 SMP".encode() + b"\0"
    head[0x1000:0x1000 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(head))
    return path


def fake_modules(mdir: Path) -> Path:
    (mdir / "kernel/drivers/net").mkdir(parents=True)
    (mdir / "kernel/drivers/net/virtio_net.ko").write_bytes(b"")
    (mdir / "modules.order").write_text("kernel/drivers/net/virtio_net.ko\n")
    return mdir


def test_debian_usr_lib_modules_layout(tmp_path: Path) -> None:
    """sid 7.2, trixie-backports 7.3: usr/lib/modules/VER/{vmlinuz,config,kernel/}."""
    mdir = fake_modules(tmp_path / "usr/lib/modules" / FAKE_KVER)
    (mdir / "config").write_text(FAKE_CONFIG_MODULAR)
    found = user_kernel(fake_bzimage(mdir / "vmlinuz"), None, None, tmp_path / "debs")
    assert found.modules == mdir and found.modules_from == "beside the kernel"
    assert found.config == FAKE_CONFIG_MODULAR and found.config_from == str(mdir / "config")
    check_needed_drivers(found)  # modules found: nothing to refuse


@pytest.mark.parametrize("moddir", ["lib/modules", "usr/lib/modules"])
def test_boot_vmlinuz_with_modules_in_lib_or_usr_lib(tmp_path: Path, moddir: str) -> None:
    mdir = fake_modules(tmp_path / moddir / FAKE_KVER)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"config-{FAKE_KVER}").write_text(FAKE_CONFIG_MODULAR)
    kernel = fake_bzimage(tmp_path / "boot" / f"vmlinuz-{FAKE_KVER}")
    found = user_kernel(kernel, None, None, tmp_path / "debs")
    assert found.modules == mdir
    assert found.config_from == str(tmp_path / "boot" / f"config-{FAKE_KVER}")


def test_no_modules_and_modular_nic_is_refused_naming_where_memhp_looked(
        tmp_path: Path) -> None:
    mdir = tmp_path / "usr/lib/modules" / FAKE_KVER
    mdir.mkdir(parents=True)
    (mdir / "config").write_text(FAKE_CONFIG_MODULAR)
    found = user_kernel(fake_bzimage(mdir / "vmlinuz"), None, None, tmp_path / "debs")
    assert found.modules is None and found.kdeb is None
    looked = modules_candidates(mdir / "vmlinuz", FAKE_KVER)
    assert looked[0] == mdir
    with pytest.raises(UsageError) as err:
        check_needed_drivers(found)
    text = str(err.value)
    assert "virtio_net (CONFIG_VIRTIO_NET=m)" in text and "--modules" in text
    for where in looked:
        assert str(where) in text
    # Built in: nothing to load, nothing to refuse.
    built_in = FAKE_CONFIG_MODULAR.replace("=m", "=y")
    (mdir / "config").write_text(built_in)
    check_needed_drivers(user_kernel(mdir / "vmlinuz", None, None, tmp_path / "debs"))
