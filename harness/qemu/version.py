"""The version a QEMU binary reports."""

from __future__ import annotations

import subprocess


def qemu_version(binary: str) -> str:
    """``7.2.22`` from ``qemu-system-x86_64 --version`` (or ``unknown``)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    if len(words) > 3 and words[:3] == ["QEMU", "emulator", "version"]:
        return words[3]
    return "unknown"
