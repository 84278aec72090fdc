"""QEMU's ``key=value,...`` option-string syntax, shared by the command line
(:mod:`harness.qemu.argv`) and the device records (:mod:`harness.qemu.devices`).

A leaf: it imports nothing of memhp, so both can use it without a circle.
"""

from __future__ import annotations


def opt_value(value: object) -> str:
    """A value inside a QEMU ``key=value,...`` option string: QEMU's option
    parser reads ``,,`` as a literal comma (a path ``/x/my,disk.img`` must not
    end the value at the comma and become an option of its own)."""
    return str(value).replace(",", ",,")
