"""Sizes as QEMU spells them: ``512M``, ``1G``, ``6G``; bytes when bare.

Suffixes are binary (K = 1024), case-insensitive, optionally followed by
``B`` or ``iB`` (``1GiB``).  Fractions (``1.5G``) are refused with the
integral spelling as the fix, because a DIMM size must be exact.
"""

from __future__ import annotations

import re

from harness.errors import UsageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIX = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+)(?P<suffix>[KMGTPE]?)(?:I?B)?", re.IGNORECASE | re.ASCII)
_COUNT_RE = re.compile(r"[0-9]{1,19}", re.ASCII)
MAX_SIZE = (1 << 64) - 1


def is_count(text: object) -> bool:
    """``text`` is a non-negative integer in ASCII digits (``str.isdigit``
    also accepts ``²`` and ``١``, which ``int()`` or QEMU then refuse)."""
    return isinstance(text, str) and _COUNT_RE.fullmatch(text) is not None


def parse_count(text: str, *, what: str, fix: str) -> int:
    """A non-negative integer written in ASCII digits, or a UsageError."""
    if not is_count(text):
        raise UsageError(f"{what} {text!r} is not a whole number in ASCII digits", value=text,
                         fix=fix)
    return int(text)


def parse_size(text: str, *, what: str = "size", allow_zero: bool = False) -> int:
    """Parse ``text`` into bytes, or raise :class:`UsageError` naming it."""
    if not isinstance(text, str):  # defensive: TOML may hand us ints
        raise UsageError(f"{what} must be a string like '1G', got {text!r}", value=text)
    raw = text.strip(" ")  # spaces only: a newline or tab inside is no size
    m = _SIZE_RE.fullmatch(raw)
    if m is None:
        fix = "use an integer with an optional K, M, G or T suffix, e.g. 512M or 1G"
        if re.match(r"^-", raw):
            raise UsageError(f"{what} {text!r} is negative", value=text, fix=fix)
        frac = re.match(r"^([0-9]*)\.([0-9]+)([KMGT])", raw, re.IGNORECASE)
        if frac:
            unit = frac.group(3).upper()
            smaller = {"K": "bytes", "M": "K", "G": "M", "T": "G"}[unit]
            fix = f"fractions are not accepted; give a whole number of {smaller}"
            raise UsageError(f"{what} {text!r} is fractional", value=text, fix=fix)
        raise UsageError(f"{what} {text!r} is not a size", value=text, fix=fix)
    value = int(m.group("num")) * _SUFFIX[m.group("suffix").upper()]
    if value > MAX_SIZE:
        raise UsageError(f"{what} {text!r} is too large (over 2^64 bytes)", value=text,
                         fix="give a size below 16E, e.g. 1G")
    if value == 0 and not allow_zero:
        raise UsageError(f"{what} {text!r} is zero", value=text, fix="give a positive size")
    return value


def format_size(n: int) -> str:
    """The shortest exact QEMU spelling of ``n`` bytes (``1G``, ``1536M``)."""
    for suffix, unit in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def human(n: int) -> str:
    """Readable, possibly rounded (``1.5 GiB``); for display only."""
    for suffix, unit in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= unit:
            v = n / unit
            return f"{v:.0f} {suffix}" if v == int(v) else f"{v:.2f} {suffix}"
    return f"{n} B"


def mib_when_bare(text: str, what: str, *, allow_zero: bool = False) -> int:
    """A size where a bare number means MiB, as QEMU's ``-m 4096`` (softmmu/vl.c
    ``parse_memory_options()`` v7.2.0, system/vl.c v10.0.0: "Fix up legacy
    suffix-less format" appends ``M`` when the value ends in a digit) and
    ``-numa node,mem=2048`` (hw/core/numa.c ``set_numa_options()``,
    ``qemu_strtosz_MiB()``)."""
    raw = text.strip(" ")
    if raw and raw[-1].isascii() and raw[-1].isdigit():
        raw += "M"
    return parse_size(raw, what=what, allow_zero=allow_zero)


def size_text(n: int) -> str:
    """``n`` bytes the way a scenario writes it (``1G``, ``512M``, ``4K``, or
    bare bytes), read back to ``n`` by :func:`parse_size`."""
    for suffix, unit in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
