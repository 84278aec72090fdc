"""Debian's 6.12 generic kernel (bookworm-backports) in memhp, for real.

Fetched by memhp's own apt into the cache (106 MB, once), never installed;
each VM test is one TCG boot of about 15 s here.  Issue 14's bugs 5, 6, 7
and 9 are each provoked with the real package.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UsageError
from harness.image.build import build_image
from harness.image.user_kernel import find_config, user_kernel
from kernels._cli import DEBIAN_612, QEMU_FOR_612, memhp_cli, run_json

ELF_MAGIC_LINE = "Invalid ELF header magic"


def _kver(root: Path) -> str:
    return next((root / "boot").glob("vmlinuz-*")).name.removeprefix("vmlinuz-")


def _tree_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")}


def test_image_records_the_packages_config(image_612: Any) -> None:
    assert image_612.kernel_version.startswith("6.12."), image_612.kernel_version
    assert image_612.config is not None and image_612.config.is_file()
    text = image_612.config.read_text()
    # What the 6.12 package really ships (its boot/config-VER): auto-online on.
    assert "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y" in text
    assert image_612.config_source.startswith("boot/config-6.12.")
    # Compressed in the package (.ko.xz), plain in the initramfs (bug 9).
    assert image_612.modules and all(m.endswith(".ko") for m in image_612.modules)
    assert "virtio_net.ko" in image_612.modules


@pytest.mark.vm
def test_seed_session_on_debian_612_predicts_auto_online(
        unpacked_612: Path, tmp_path: Path) -> None:
    """`memhp run --kernel-package linux-image-amd64/bookworm-backports`: the
    config recorded in the image says auto-online, so the model expects the
    blocks online with no online step, and the guest agrees.  The script then
    shows where the six "Invalid ELF header magic" lines came from (bug 9):
    none at boot now, one as soon as busybox insmod gets a .ko.xz."""
    dummy = next(unpacked_612.glob("lib/modules/*/kernel/drivers/net/dummy.ko.xz"))
    script = tmp_path / "elf.sh"
    script.write_text(
        f"echo boot=$(dmesg | grep -c '{ELF_MAGIC_LINE}')\n"
        "base64 -d > /tmp/dummy.ko.xz <<'EOF'\n"
        + base64.encodebytes(dummy.read_bytes()).decode()
        + "EOF\ninsmod /tmp/dummy.ko.xz; echo insmod=$?\n"
        f"echo after=$(dmesg | grep -c '{ELF_MAGIC_LINE}')\n")
    keep = tmp_path / "keep"
    proc, doc = run_json("--kernel-package", DEBIAN_612, "--keep", str(keep),
                         "--script", str(script), *QEMU_FOR_612)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert doc["kernel"].startswith("6.12."), doc["kernel"]
    assert "onlines new memory by itself" in proc.stderr
    [step] = doc["steps"]  # the add; no online step was planned
    assert step["action"].startswith("add")
    assert {b["state"] for b in step["expected"]["blocks"]} == {"online"}
    assert {b["state"] for b in step["observed"]["blocks"]} >= {"online"}
    out = dict(line.split("=", 1) for line in doc["exec"]["output"].split()
               if "=" in line)
    assert out["boot"] == "0", doc["exec"]["output"]
    assert int(out["after"]) >= 1, doc["exec"]["output"]  # the cause, provoked


@pytest.mark.vm
def test_nothing_but_the_kernel_file(unpacked_612: Path) -> None:
    """Bug 6: `memhp run --kernel <root>/boot/vmlinuz-VER` finds the modules
    at <root>/lib/modules/VER and the config at <root>/boot/config-VER;
    bug 7: nothing is written into that tree (no depmod there)."""
    kver = _kver(unpacked_612)
    mdir = unpacked_612 / "lib/modules" / kver
    before = _tree_state(unpacked_612)
    assert not (mdir / "modules.dep").exists()  # as in the package: depmod runs in postinst
    proc, doc = run_json("--kernel", str(unpacked_612 / "boot" / f"vmlinuz-{kver}"),
                         *QEMU_FOR_612)
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-3000:])
    assert "onlines new memory by itself" in proc.stderr
    assert _tree_state(unpacked_612) == before


def test_modules_tree_is_never_written(unpacked_612: Path) -> None:
    """Bug 7 with --modules given: the image is built (forced, not a cache
    hit) and the user's tree is byte-for-byte and mtime-for-mtime unchanged."""
    kver = _kver(unpacked_612)
    before = _tree_state(unpacked_612)
    image = build_image(kernel=unpacked_612 / "boot" / f"vmlinuz-{kver}",
                        modules=unpacked_612, force=True)
    assert "virtio_net.ko" in image.modules
    assert _tree_state(unpacked_612) == before


@pytest.fixture(scope="module")
def kernel_61() -> Path:
    from harness.image import ensure_default_image

    return Path(ensure_default_image().kernel)


@pytest.mark.parametrize("layout", ["install_mod_path", "version_dir"])
def test_modules_of_another_kernel_are_refused(unpacked_612: Path, kernel_61: Path,
                                               layout: str) -> None:
    """Bug 5: a 6.1 kernel with 6.12 modules is exit 2 naming both releases,
    before any VM (no QEMU is started: it returns in seconds)."""
    kver = _kver(unpacked_612)
    modules = unpacked_612 if layout == "install_mod_path" else unpacked_612 / "lib/modules" / kver
    proc = memhp_cli("run", "--kernel", str(kernel_61), "--modules", str(modules), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert kver in proc.stderr and "6.1.0-" in proc.stderr, proc.stderr
    assert str(modules) in proc.stderr


def test_config_discovery(unpacked_612: Path, kernel_61: Path, tmp_path: Path) -> None:
    kver = _kver(unpacked_612)
    vmlinuz = unpacked_612 / "boot" / f"vmlinuz-{kver}"
    # config-VER beside the kernel (an unpacked Debian /boot).
    found = user_kernel(vmlinuz, None, None, tmp_path)
    assert found.config_from == str(unpacked_612 / "boot" / f"config-{kver}")
    assert found.modules == unpacked_612 / "lib/modules" / kver
    # The .config of the source tree a bzImage sits in.
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copy(kernel_61, tree / "arch/x86/boot/bzImage")
    (tree / ".config").write_text("CONFIG_MEMORY_HOTPLUG=y\n")
    text, where = find_config(tree / "arch/x86/boot/bzImage", "x", None)
    assert where == str(tree / ".config") and text == "CONFIG_MEMORY_HOTPLUG=y\n"
    # boot/config-VER inside the cached Debian package that supplies the modules.
    alone = tmp_path / "alone" / "vmlinuz"
    alone.parent.mkdir()
    shutil.copy(vmlinuz, alone)
    if (Path("/lib/modules") / kver).exists():
        pytest.skip(f"the host has /lib/modules/{kver}: memhp would use those")
    from harness.image import cache_root

    found = user_kernel(alone, None, None, cache_root() / "debs")
    assert found.kdeb is not None and found.config_from.endswith(found.kdeb.name)
    assert "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y" in (found.config or "")
    # --kernel-config that is not a file: exit 2 naming it.
    with pytest.raises(UsageError, match="nope.config"):
        find_config(alone, kver, tmp_path / "nope.config")


def test_kernel_config_option_reaches_the_model(unpacked_612: Path, tmp_path: Path) -> None:
    """`memhp image build --kernel K --kernel-config C`: C is what the image
    records (the model's policy input), whatever sits beside K."""
    kver = _kver(unpacked_612)
    cfg = tmp_path / "offline.config"
    cfg.write_text((unpacked_612 / "boot" / f"config-{kver}").read_text().replace(
        "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE=y",
        "# CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE is not set"))
    proc = memhp_cli("image", "build", "--kernel", str(unpacked_612 / "boot" / f"vmlinuz-{kver}"),
                     "--kernel-config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert f"(from --kernel-config {cfg})" in proc.stdout
    config_path = next(line.split()[1] for line in proc.stdout.splitlines()
                       if line.startswith("config"))
    assert "# CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE is not set" in Path(config_path).read_text()
    assert os.path.getsize(config_path) == cfg.stat().st_size
