"""Compare three views after every step: the model's prediction, QEMU's
``query-memory-devices`` and what the guest kernel reports.

Pure: takes the views as values and returns structured :class:`Mismatch`
records; only the CLI and the tests turn them into failures.

Comparison rules (and why):

* DIMM address, size, node and slot: exact (QEMU's placement is
  deterministic, see :mod:`harness.model`).
* virtio-mem memaddr, max-size, block-size, node, requested-size and the
  plugged ``size``: exact (QEMU's side from :mod:`harness.devices.virtio_mem.rules`,
  the plugged size from the guest driver's model,
  :mod:`harness.devices.virtio_mem.driver`).  Its blocks and totals are
  compared like a DIMM's: the kernel model holds them, a partially plugged
  block counting only its plugged bytes.
* Blocks: exactly the model's ``memoryN`` set must exist beyond the boot
  blocks, on the model's node; each in the state the run put it in
  (``online`` after onlining or auto-online, else ``offline``) and, when
  online, in the expected zone (``valid_zones`` of an online block names its
  zone).
* Totals: the guest's boot MemTotal is less than the boot RAM by kernel
  reservations we cannot predict, so totals are compared as *deltas from
  the boot baseline*: per node (``nodeN/meminfo`` MemTotal) and in total
  (``/proc/meminfo`` MemTotal, which ``free -b`` reports as "total"), the
  delta must equal the managed bytes of hot-added blocks that are online,
  exactly: the block size, less the pages that hold the block's own memmap
  when ``memory_hotplug.memmap_on_memory`` applies (the kernel model,
  :mod:`harness.model.kernel.rules`, says when).  ``numactl -H`` reports
  MiB, floored: it must equal MemTotal // MiB.
* Offline blocks: ``valid_zones`` must list the zones the model's
  ``zone_for_pfn_range()`` gives, default first (``valid_zones_show()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.units import MiB


@dataclass(frozen=True)
class Mismatch:
    """One disagreement: ``what`` of ``subject``, expected vs observed."""

    what: str
    subject: str
    expected: object
    observed: object
    source: str  # which view disagreed with the model: "qemu" or "guest"

    def __str__(self) -> str:
        return (f"{self.subject}: {self.what}: model expects {self.expected!r}, "
                f"{self.source} reports {self.observed!r}")

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "subject": self.subject, "expected": self.expected,
                "observed": self.observed, "source": self.source}


@dataclass(frozen=True)
class ExpectedBlock:
    number: int
    node: int
    state: str  # "online" | "offline"
    zone: str | None  # expected zone when online
    managed_bytes: int | None = None  # added to MemTotal when online (None: block size)
    valid_zones: tuple[str, ...] = ()  # expected valid_zones of an offline block


def _value(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def compare_records(expected: Iterable[Any], observed: Iterable[Any], fields: Sequence[str],
                    *, what: str = "{}", present: str = "present", hex_fields: Sequence[str]
                    = ("addr",), source: str = "qemu") -> list[Mismatch]:
    """Records keyed by ``id`` (attributes, or dict keys), field by field:
    one ``present`` mismatch per id only one side has, then one per field
    that differs (named ``what.format(field)``, ``_`` written ``-`` as QEMU
    does; ``hex_fields`` shown in hex).  Every device kind's QEMU view
    (its ``MODEL.compared`` fields), and a migration's two sides, go
    through here."""
    out: list[Mismatch] = []
    pred = {_value(r, "id"): r for r in expected}
    seen = {_value(r, "id"): r for r in observed}
    for rid in sorted(pred.keys() ^ seen.keys()):
        out.append(Mismatch(present, rid, rid in pred, rid in seen, source))
    for rid in sorted(pred.keys() & seen.keys()):
        for name in fields:
            exp, obs = _value(pred[rid], name), _value(seen[rid], name)
            if exp != obs:
                if name in hex_fields:
                    exp, obs = hex(exp), hex(obs)
                out.append(Mismatch(what.format(name.replace("_", "-")), rid, exp, obs,
                                    source))
    return out


def compare_blocks(
    expected: Sequence[ExpectedBlock],
    boot_blocks: Iterable[int],
    observed: Iterable[Any],
) -> list[Mismatch]:
    """Expected hot-added blocks vs the guest's ``memoryN`` directories."""
    out: list[Mismatch] = []
    boot = set(boot_blocks)
    seen = {b.number: b for b in observed if b.number not in boot}
    want = {b.number: b for b in expected}
    for n in sorted(want.keys() - seen.keys()):
        out.append(Mismatch("block present", f"memory{n}", True, False, "guest"))
    for n in sorted(seen.keys() - want.keys()):
        out.append(Mismatch("block present", f"memory{n}", False, True, "guest"))
    for n in sorted(want.keys() & seen.keys()):
        w, s = want[n], seen[n]
        if w.node != s.node:
            out.append(Mismatch("node", f"memory{n}", w.node, s.node, "guest"))
        if w.state != s.state:
            out.append(Mismatch("state", f"memory{n}", w.state, s.state, "guest"))
        elif w.state == "online" and w.zone is not None and s.zone != w.zone:
            out.append(Mismatch("zone", f"memory{n}", w.zone, s.zone, "guest"))
        elif (w.state == "offline" and w.valid_zones and s.valid_zones
              and tuple(s.valid_zones) != tuple(w.valid_zones)):
            out.append(Mismatch("valid_zones", f"memory{n}", " ".join(w.valid_zones),
                                " ".join(s.valid_zones), "guest"))
    return out


def compare_totals(
    *,
    block_size: int,
    expected: Sequence[ExpectedBlock],
    baseline_nodes: Mapping[int, int],
    observed_nodes: Mapping[int, int],
    baseline_total: int,
    observed_total: int,
    observed_free_total: int | None = None,
    observed_numactl_mib: Mapping[int, int] | None = None,
) -> list[Mismatch]:
    """MemTotal deltas per node and in total must equal the online hot-added bytes."""
    out: list[Mismatch] = []
    added: dict[int, int] = {}
    for b in expected:
        if b.state == "online":
            size = block_size if b.managed_bytes is None else b.managed_bytes
            added[b.node] = added.get(b.node, 0) + size
    for node in sorted(baseline_nodes.keys() | observed_nodes.keys()):
        want = baseline_nodes.get(node, 0) + added.get(node, 0)
        got = observed_nodes.get(node)
        if got != want:
            out.append(Mismatch("MemTotal", f"node{node}", want, got, "guest"))
        if observed_numactl_mib is not None and got is not None:
            mib = observed_numactl_mib.get(node)
            if mib != got // MiB:
                out.append(Mismatch("numactl size (MiB)", f"node{node}", got // MiB, mib,
                                    "guest"))
    want_total = baseline_total + sum(added.values())
    if observed_total != want_total:
        out.append(Mismatch("MemTotal", "system", want_total, observed_total, "guest"))
    if observed_free_total is not None and observed_free_total != want_total:
        out.append(Mismatch("free total", "system", want_total, observed_free_total, "guest"))
    return out
