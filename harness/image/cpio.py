"""A minimal writer of ``newc`` cpio archives (what the kernel unpacks as
initramfs; see Documentation/driver-api/early-userspace/buffer-format.rst)."""

from __future__ import annotations

import stat
from typing import BinaryIO


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.written = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        self.ino += 1
        buf = header + encoded
        buf += b"\0" * (-len(buf) % 4)
        buf += data
        buf += b"\0" * (-len(buf) % 4)
        self.out.write(buf)
        self.written += len(buf)

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, char: bool, major: int, minor: int, mode: int = 0o600) -> None:
        kind = stat.S_IFCHR if char else stat.S_IFBLK
        encoded = name.encode() + b"\0"
        fields = [self.ino, kind | mode, 0, 0, 1, 0, 0, 0, 0, major, minor, len(encoded), 0]
        header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        self.ino += 1
        buf = header + encoded
        buf += b"\0" * (-len(buf) % 4)
        self.out.write(buf)
        self.written += len(buf)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
