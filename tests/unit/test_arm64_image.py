"""A user's arm64 kernel (``--kernel`` with ``--machine virt``): the Image
header (Documentation/arch/arm64/booting.rst: "ARM\\x64" at 0x38), gzip'd
or not, its release from the banner; what is not one is refused by name.
The files are fakes built here (pure parsing); tests/scenarios/test_arm64.py
boots the real one."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.image.bzimage import arm64_kernel_version, kernel_version
from harness.image.user_kernel import user_kernel

BANNER = b"Linux version 6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org) #1 SMP\n"


def fake_image(path: Path, *, gz: bool = False, banner: bytes = BANNER) -> Path:
    """A file with an arm64 Image header and a banner in its body."""
    head = bytearray(64)
    head[0x38:0x3C] = b"ARM\x64"
    data = bytes(head) + b"\0" * 4096 + banner + b"\0" * 64
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_an_image_and_an_image_gz_give_their_release(tmp_path: Path) -> None:
    assert arm64_kernel_version(fake_image(tmp_path / "Image")) == "6.1.0-57-cloud-arm64"
    assert arm64_kernel_version(fake_image(tmp_path / "Image.gz", gz=True)) == \
        "6.1.0-57-cloud-arm64"
    assert arm64_kernel_version(fake_image(tmp_path / "nobanner", banner=b"")) == "unknown"


@pytest.mark.parametrize(("data", "words"), [
    (b"\0" * 0x202 + b"HdrS" + b"\0" * 64, "is an x86 bzImage, not an arm64 Image"),
    (b"MZ\0\0zimg" + b"\0" * 128, "EFI zboot image"),
    (b"\x7fELF" + b"\0" * 128, "no arm64 Image"),
    (b"\x1f\x8b\x08\0garbage", "gzip data that does not unpack"),
    (b"", "no arm64 Image"),
])
def test_what_is_not_an_arm64_image_is_refused_by_name(tmp_path: Path, data: bytes,
                                                       words: str) -> None:
    bad = tmp_path / "k"
    bad.write_bytes(data)
    with pytest.raises(UsageError, match=words) as info:
        arm64_kernel_version(bad)
    assert str(bad) in str(info.value)


def test_an_arm64_image_is_not_a_bzimage(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an x86 bzImage"):
        kernel_version(fake_image(tmp_path / "Image"))


def test_modules_beside_an_unpacked_arm64_package_are_found(tmp_path: Path) -> None:
    kver = "6.1.0-57-cloud-arm64"
    boot = tmp_path / "root/boot"
    boot.mkdir(parents=True)
    (tmp_path / f"root/lib/modules/{kver}/kernel").mkdir(parents=True)
    found = user_kernel(fake_image(boot / f"vmlinuz-{kver}"), None, None, tmp_path / "debs",
                        "arm64")
    assert found.kver == kver and found.modules == tmp_path / f"root/lib/modules/{kver}"


def test_kvm_for_an_arm64_guest_on_this_host_is_refused_before_the_plan(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.qemu.accel
    from harness.cli import main

    monkeypatch.setattr(harness.qemu.accel, "host_arch", lambda: "x86_64")
    assert main(["run", "--machine", "virt", "--accel", "kvm", "--qemu", "/bin/true"]) == 2
    err = capsys.readouterr().err
    assert "KVM runs only guests of the host's architecture" in err and "aarch64" in err
