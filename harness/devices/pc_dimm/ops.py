"""The pc-dimm's operations and their ``ID:SIZE@NODE[:ADDR]`` syntax."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from harness.errors import UsageError
from harness.model.backend import RAM, BackendSpec
from harness.model.ids import check_id
from harness.units import is_count, parse_size

_DIMM = re.compile(r"(?P<id>[^:@]*):(?P<size>[^:@]+)(?:@(?P<node>[^:]*))?(?::(?P<addr>.+))?",
                   re.DOTALL)


@dataclass(frozen=True)
class AddDimm:
    """Hot-add a pc-dimm of ``size`` bytes on ``node`` (at ``addr`` if given)
    over ``backend`` (anonymous RAM unless said otherwise)."""

    kind: ClassVar[str] = "pc-dimm"
    label: ClassVar[str] = "DIMM"
    id: str
    size: int
    node: int = 0
    addr: int | None = None
    backend: BackendSpec = RAM

    def __post_init__(self) -> None:
        check_id(self.id)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise UsageError(f"DIMM {self.id}: size {self.size!r} must be a positive byte count",
                             value=self.size, fix="e.g. 1G")
        if isinstance(self.node, bool) or not isinstance(self.node, int) or self.node < 0:
            raise UsageError(f"DIMM {self.id}: node {self.node!r} must be a non-negative integer",
                             value=self.node, fix="e.g. @1 for node 1")
        if self.addr is not None and (not isinstance(self.addr, int) or self.addr < 0):
            raise UsageError(f"DIMM {self.id}: address {self.addr!r} is not a valid address",
                             value=self.addr, fix="e.g. :0x1c0000000")
        if not isinstance(self.backend, BackendSpec):
            raise UsageError(f"DIMM {self.id}: backend {self.backend!r} is not a BackendSpec",
                             value=self.backend, fix="use harness.model.backend.BackendSpec")


def parse_dimm_option(text: str) -> AddDimm:
    """``ID:SIZE[@NODE][:ADDR]`` -> AddDimm, e.g. ``dimm0:1G@1`` or
    ``dimm1:512M@0:0x240000000`` (ADDR in hex with 0x, or decimal bytes)."""
    fix = "write ID:SIZE@NODE[:ADDR], e.g. dimm0:1G@1"
    if not isinstance(text, str):
        raise UsageError(f"DIMM {text!r} is not text", value=text, fix=fix)
    m = _DIMM.fullmatch(text.strip(" "))
    if m is None:
        raise UsageError(f"DIMM {text!r} is not ID:SIZE@NODE", value=text, fix=fix)
    dimm_id = check_id(m.group("id"))
    size = parse_size(m.group("size"), what=f"DIMM {dimm_id} size")
    node_text = m.group("node")
    if node_text is None:
        node = 0
    elif is_count(node_text):
        node = int(node_text)
    else:
        raise UsageError(f"DIMM {dimm_id}: node {node_text!r} is not a non-negative integer",
                         value=text, fix=fix)
    addr = None
    if m.group("addr") is not None:
        raw = m.group("addr").strip(" ")
        # ASCII only: int() also reads '١٢' (Arabic-Indic digits) as 12.
        if not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}", raw, re.ASCII):
            raise UsageError(f"DIMM {dimm_id}: address {raw!r} is not a number", value=text,
                             fix="give it in hex, e.g. 0x1c0000000")
        addr = int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
        if addr < 0 or addr >= 1 << 64:
            raise UsageError(f"DIMM {dimm_id}: address {raw!r} is out of range", value=text)
    return AddDimm(dimm_id, size, node, addr)
