"""Checks on a user's kernel file: is it an x86 bzImage, and which version?

The x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header
holds the magic ``HdrS`` at offset 0x202, the protocol version at 0x206,
and at 0x20E a pointer (minus 0x200) to a NUL-terminated version string
such as ``6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...``.
"""

from __future__ import annotations

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
