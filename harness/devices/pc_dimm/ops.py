"""The pc-dimm's operations, their ``ID:SIZE@NODE[:ADDR]`` syntax and the
backend keys of its ``add`` step (TOML, and the cold-plugged DIMM tables)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from harness.errors import UsageError
from harness.model.backend import RAM, BackendSpec, parse_host_nodes, parse_hugepages
from harness.model.ids import check_id
from harness.units import is_count, parse_size, size_text

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

    def text(self) -> str:
        """``ID:SIZE@NODE[:ADDR]``, as :func:`parse_dimm_option` reads it."""
        where = f":{self.addr:#x}" if self.addr is not None else ""
        return f"{self.id}:{size_text(self.size)}@{self.node}{where}"

    def describe(self) -> str:
        where = f" at {self.addr:#x}" if self.addr is not None else ""
        be = f", {self.backend.describe()}" if self.backend != RAM else ""
        return f"add {self.id} ({self.size >> 20} MiB, node {self.node}{where}{be})"


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


# Backend keys of an ``add`` step (TOML name -> BackendSpec field); on an
# ``add`` step ``policy`` is the host NUMA policy, not an online policy.
BACKEND_KEYS: tuple[str, ...] = (
    "backend", "hugepages", "share", "prealloc", "prealloc_threads", "host_nodes", "policy",
    "mem_path", "discard_data", "reserve", "dump", "merge",
)


_BOOL_KEYS = ("share", "prealloc", "discard_data", "reserve", "dump", "merge", "seal")


def backend_spec(raw: Mapping[str, Any], where: str = "add") -> BackendSpec:
    """A :class:`BackendSpec` from an ``add`` step's backend keys (TOML or
    the keyword arguments of :func:`add`); RAM when none is given."""
    if not any(k in raw for k in (*BACKEND_KEYS, "seal")):
        return RAM
    kind = raw.get("backend", "ram")
    if not isinstance(kind, str):
        raise UsageError(f"{where}.backend must be a string, got {kind!r}", value=kind,
                         fix='backend = "ram", "file" or "memfd"')
    kwargs: dict[str, Any] = {"kind": kind}
    for key in _BOOL_KEYS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise UsageError(f"{where}.{key} must be true or false, got {raw[key]!r}",
                                 value=raw[key], fix=f"{key} = true")
            kwargs[key] = raw[key]
    if "hugepages" in raw:
        kwargs["hugepages"] = parse_hugepages(raw["hugepages"], f"{where}.hugepages")
    if "prealloc_threads" in raw:
        t = raw["prealloc_threads"]
        if isinstance(t, bool) or not isinstance(t, int):
            raise UsageError(f"{where}.prealloc_threads must be an integer, got {t!r}",
                             value=t, fix="prealloc_threads = 2")
        kwargs["prealloc_threads"] = t
    if "host_nodes" in raw:
        kwargs["host_nodes"] = parse_host_nodes(raw["host_nodes"], f"{where}.host_nodes")
    if "policy" in raw:
        if not isinstance(raw["policy"], str):
            raise UsageError(f"{where}.policy must be a string, got {raw['policy']!r}",
                             value=raw["policy"], fix='policy = "bind"')
        kwargs["policy"] = raw["policy"]
    if "mem_path" in raw:
        if not isinstance(raw["mem_path"], str):
            raise UsageError(f"{where}.mem_path must be a string", value=raw["mem_path"],
                             fix='mem_path = "/dev/hugepages"')
        kwargs["mem_path"] = raw["mem_path"]
    try:
        return BackendSpec(**kwargs)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", value=exc.value) from None


# The keys an ``add`` step of a pc-dimm takes beyond ``add`` itself.
ADD_KEYS = frozenset({"device", *BACKEND_KEYS})


def parse_add(raw: Mapping[str, Any], base: AddDimm, where: str) -> AddDimm:
    """An ``add`` step's table (``ID:SIZE@NODE[:ADDR]`` already read as ``base``)."""
    return replace(base, backend=backend_spec(raw, where))


def to_table(op: AddDimm) -> dict[str, Any]:
    """The ``add`` step's table for ``op`` (what :func:`parse_add` reads back)."""
    table: dict[str, Any] = {"add": op.text()}
    be = op.backend
    if be == RAM:
        return table
    table["backend"] = be.kind
    if be.hugepages is not None:
        table["hugepages"] = size_text(be.hugepages)
    for key in (*_BOOL_KEYS, "prealloc_threads", "mem_path"):
        if getattr(be, key, None) is not None:
            table[key] = getattr(be, key)
    if be.host_nodes:
        table["host_nodes"] = ",".join(map(str, be.host_nodes))
    if be.policy != "default":
        table["policy"] = be.policy
    return table
