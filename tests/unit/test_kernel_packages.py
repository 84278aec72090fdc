"""Debian kernel packages of every layout, and memhp's apt per suite, without
the network: fake packages built here with ``dpkg-deb --build`` (FAKE_*:
empty modules, a bzImage header and nothing else, one-line configs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_kernel_layout import FAKE_KVER, fake_bzimage, fake_modules

from harness.apt import SUITES, Apt
from harness.errors import UsageError
from harness.image.debs import kernel_tree, split_parts, unpack_kernel_deb
from harness.kconfig.source import read_config

FAKE_CONFIG = "CONFIG_MEMORY_HOTPLUG=y\n"
# The Depends of Debian's split linux-image-7.3.4+deb13-amd64 (trixie-backports).
SPLIT_DEPENDS = ("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
                 "linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
                 "linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
                 "linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)")


def fake_deb(tmp: Path, name: str, files: dict[str, bytes], depends: str = "") -> Path:
    root = tmp / f"pkg-{name}"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: fake\n"
               f"Description: fake\n" + (f"Depends: {depends}\n" if depends else ""))
    (root / "DEBIAN/control").write_text(control)
    out = tmp / f"{name}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Znone", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def test_split_parts_of_a_7x_image_package() -> None:
    assert split_parts(SPLIT_DEPENDS, "linux-image-7.3.4+deb13-amd64") == [
        "linux-base-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
        "linux-modules-7.3.4+deb13-amd64"]
    # bookworm's 6.1/6.12: one package, nothing else to fetch
    assert split_parts("kmod, linux-base (>= 4.3~), initramfs-tools",
                       "linux-image-6.12.57+deb12-amd64") == []


def test_both_layouts_unpack_and_are_found(tmp_path: Path) -> None:
    kernel = fake_bzimage(tmp_path / "bz").read_bytes()
    mods = fake_modules(tmp_path / "m")
    ko = (mods / "kernel/drivers/net/virtio_net.ko").read_bytes()
    old = fake_deb(tmp_path, "linux-image-old", {
        f"boot/vmlinuz-{FAKE_KVER}": kernel, f"boot/config-{FAKE_KVER}": FAKE_CONFIG.encode(),
        f"lib/modules/{FAKE_KVER}/kernel/drivers/net/virtio_net.ko": ko,
        "usr/share/doc/x/changelog": b"not taken"})
    new = [fake_deb(tmp_path, "linux-base-new", {
               f"usr/lib/modules/{FAKE_KVER}/config": FAKE_CONFIG.encode()}),
           fake_deb(tmp_path, "linux-binary-new", {f"usr/lib/modules/{FAKE_KVER}/vmlinuz": kernel}),
           fake_deb(tmp_path, "linux-modules-new", {
               f"usr/lib/modules/{FAKE_KVER}/kernel/drivers/net/virtio_net.ko": ko})]
    unpack_kernel_deb(old, tmp_path / "old")
    assert not (tmp_path / "old/usr/share").exists()
    tree = kernel_tree(tmp_path / "old", old.name)
    assert tree.kver == FAKE_KVER and tree.modules == tmp_path / "old/lib/modules" / FAKE_KVER
    assert tree.config is not None and tree.config.read_text() == FAKE_CONFIG
    for deb in new:
        unpack_kernel_deb(deb, tmp_path / "new")
    tree = kernel_tree(tmp_path / "new", "new")
    mdir = tmp_path / "new/usr/lib/modules" / FAKE_KVER
    assert (tree.vmlinuz, tree.kver, tree.config, tree.modules) == (
        mdir / "vmlinuz", FAKE_KVER, mdir / "config", mdir)
    # memhp kconfig check on each: the config inside, whichever layout.
    assert read_config(old) == (FAKE_CONFIG, "deb")
    assert read_config(new[0]) == (FAKE_CONFIG, "deb")


def test_split_image_deb_reads_config_of_its_base_beside_it(tmp_path: Path) -> None:
    from harness.errors import KconfigError

    image = fake_deb(tmp_path, "linux-image-9.9.9+fake-amd64", {"usr/share/doc/x/c": b""},
                     depends="linux-base-9.9.9+fake-amd64 (= 1.0), linux-binary-9.9.9+fake-amd64")
    with pytest.raises(KconfigError, match="linux-base-9.9.9"):
        read_config(image)
    fake_deb(tmp_path, "linux-base-9.9.9+fake-amd64",
             {f"usr/lib/modules/{FAKE_KVER}/config": FAKE_CONFIG.encode()})
    assert read_config(image) == (FAKE_CONFIG, "deb")


def test_each_other_suite_gets_its_own_apt_root(tmp_path: Path) -> None:
    default = Apt.for_suite(None, tmp_path)
    assert default.root == tmp_path / "apt" and Apt.for_suite("trixie", tmp_path).root == \
        default.root
    assert set(SUITES) <= set(default.suites)
    for suite in ("sid", "experimental", "trixie-backports", "forky"):
        apt = Apt.for_suite(suite, tmp_path)
        assert apt.root == tmp_path / f"apt-{suite}" and apt.suites == (suite,)
        text = apt._sources()
        assert f"Suites: {suite}\n" in text and "bookworm" not in text
        assert apt.debs == default.debs  # one download cache
    assert "sid" not in default._sources()
    with pytest.raises(UsageError, match="not a Debian suite"):
        Apt.for_suite("../etc", tmp_path)
    with pytest.raises(UsageError):
        default._suite_args("sid")  # the default configuration does not know sid


def test_each_architecture_gets_its_own_apt_root_and_debs(tmp_path: Path) -> None:
    """arm64 packages come from an apt root of their own (lists are per
    architecture) into the shared .deb cache, where a version's amd64 and
    arm64 builds are told apart by the arch in the file name."""
    from harness.apt import _cached_deb

    amd, arm = Apt(tmp_path), Apt(tmp_path, arch="arm64")
    assert arm.root == tmp_path / "apt-arm64" and arm.debs == amd.debs
    assert "Architectures: arm64\n" in arm._sources() and "amd64" not in arm._sources()
    assert "APT::Architecture=arm64" in arm.options()
    sid = Apt.for_suite("sid", tmp_path, arch="arm64")
    assert sid.root == tmp_path / "apt-sid-arm64"
    with pytest.raises(UsageError, match="'s390x'"):
        Apt(tmp_path, arch="s390x")
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "bash_5.2-2_amd64.deb").write_bytes(b"")
    assert _cached_deb(debs, "bash", "5.2-2", "arm64") is None
    (debs / "bash_5.2-2_arm64.deb").write_bytes(b"")
    (debs / "tzdata_1%3a2024_all.deb").write_bytes(b"")
    assert _cached_deb(debs, "bash", "5.2-2", "arm64") == debs / "bash_5.2-2_arm64.deb"
    assert _cached_deb(debs, "bash", "5.2-2") == debs / "bash_5.2-2_amd64.deb"
    assert _cached_deb(debs, "tzdata", "1:2024", "arm64") == debs / "tzdata_1%3a2024_all.deb"
