"""Checks on a user's kernel file: is it an x86 bzImage (or an arm64
Image), and which version?

The x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header
holds the magic ``HdrS`` at offset 0x202, the protocol version at 0x206,
and at 0x20E a pointer (minus 0x200) to a NUL-terminated version string
such as ``6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...``.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from harness.errors import UsageError
from harness.files import check_readable_file

_FIX = "give an x86 bzImage such as arch/x86/boot/bzImage or /boot/vmlinuz-*"


def kernel_version(path: Path) -> str:
    """The kernel release of the bzImage at ``path``; UsageError if it is not one."""
    check_readable_file(path, "kernel", _FIX)
    with path.open("rb") as f:
        head = f.read(0x8000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise UsageError(f"kernel {str(path)!r} is not an x86 bzImage (no 'HdrS' boot "
                         "header at 0x202; a vmlinux ELF or a compressed image will not boot "
                         "with -kernel)", value=path, fix=_FIX)
    protocol = int.from_bytes(head[0x206:0x208], "little")
    if protocol < 0x0200:
        raise UsageError(f"kernel {str(path)!r} uses boot protocol {protocol:#x}, too old",
                         value=path, fix=_FIX)
    ptr = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    if ptr >= len(head):
        return "unknown"
    raw = head[ptr:].split(b"\0", 1)[0].decode("ascii", "replace")
    return raw.split(" ", 1)[0] or "unknown"


# Documentation/arch/arm64/booting.rst: the 64-byte Image header, "ARM\x64"
# at offset 0x38; QEMU's -kernel also takes it gzip-compressed (Image.gz:
# load_aarch64_image(), and load_image_to_fw_cfg() for a UEFI boot)
ARM64_MAGIC = b"ARM\x64"
_ARM64_FIX = "give an arm64 Image (arch/arm64/boot/Image or Image.gz, /boot/vmlinuz-*)"
#: An Image this large is not a kernel (Debian's arm64 Image: ~35 MiB)
MAX_ARM64_IMAGE = 256 << 20
_BANNER = re.compile(rb"Linux version (\S+) \(")


def arm64_image(path: Path) -> bytes:
    """The (uncompressed) arm64 Image at ``path``; UsageError if it is not one."""
    check_readable_file(path, "kernel", _ARM64_FIX)
    with path.open("rb") as f:
        data = f.read(MAX_ARM64_IMAGE + 1)
    if data[:2] == b"\x1f\x8b":
        unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = unzip.decompress(data, MAX_ARM64_IMAGE + 1)
            problem = "" if unzip.eof or len(data) > MAX_ARM64_IMAGE else "it is truncated"
        except zlib.error as exc:
            problem = str(exc)
        if problem:
            raise UsageError(f"kernel {str(path)!r} is gzip data that does not unpack: "
                             f"{problem}", value=path, fix=_ARM64_FIX)
    if len(data) > MAX_ARM64_IMAGE or data[0x38:0x3C] != ARM64_MAGIC:
        what = ("an x86 bzImage" if data[0x202:0x206] == b"HdrS" else
                "an EFI zboot image (CONFIG_EFI_ZBOOT)" if data[4:8] == b"zimg" else
                "no arm64 Image (no 'ARM\\x64' magic at 0x38)")
        raise UsageError(f"kernel {str(path)!r} is {what}, not an arm64 Image", value=path,
                         fix=_ARM64_FIX)
    return data


def arm64_kernel_version(path: Path) -> str:
    """The release in an arm64 Image's banner ("Linux version 6.1.0-57-cloud-arm64 (...")."""
    m = _BANNER.search(arm64_image(path))
    return m.group(1).decode("ascii", "replace") if m else "unknown"
