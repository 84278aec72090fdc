"""Kernel splats in the guest's log: warnings, BUGs, oopses, lockups, stalls.

Pure: text of ``dmesg -r`` in, :class:`Splat` records out.  ``-r`` keeps
each record's ``<N>`` prefix, N = facility * 8 + level
(include/linux/kern_levels.h; /dev/kmsg in Documentation/ABI/testing/dev-kmsg),
so only records of the kernel facility (0) count: a user process writing
"BUG:" to /dev/kmsg (facility 1, ``<12>``) is not a kernel splat.

What counts, with the kernel function that prints it:

* ``WARNING:`` (``__warn()``, after a "cut here" line), ``BUG:``
  (``BUG()``, ``__schedule_bug``, KASAN/KFENCE headers "BUG: KASAN:",
  "BUG: KFENCE:", "watchdog: BUG: soft lockup"), ``Oops`` (``__die()``),
  ``general protection fault`` (``die_addr()``), ``kernel BUG at``;
* ``UBSAN:`` (lib/ubsan.c), lockdep's "possible circular locking
  dependency" / "possible recursive locking" / "inconsistent lock state"
  (kernel/locking/lockdep.c), ``Watchdog detected hard LOCKUP``,
  ``INFO: task ... blocked for more than`` (kernel/hung_task.c),
  ``rcu: INFO: ... detected stall`` / ``self-detected stall``
  (kernel/rcu/tree_stall.h), ``page dumped because:`` (mm/debug.c
  ``dump_page()``);
* a ``Call Trace:`` that belongs to none of the above and follows no
  requested backtrace (sysrq, ``NMI backtrace``).

A splat is its first line and the lines after it up to the kernel's
``---[ end trace`` marker (or a bounded number of lines).

A page dump is judged by the kernel's own facts, not its text alone
(:func:`offline_explained`): ``offline_pages()`` (mm/memory_hotplug.c) is
the only caller that asks for the dumps "unmovable page"
(``start_isolate_page_range(..., MEMORY_OFFLINE | REPORT_FAILURE)``, in
mm/page_isolation.c ``set_migratetype_isolate()``) and "migration failure"
(``do_migrate_range()``, after "migrating pfn %lx failed ret:%d").  Such a
dump is expected when the kernel says in the same records that it belongs
to an offline the kernel may refuse or retry: an "unmovable page" dump
whose pfn lies in a range the kernel then reports as "memory offlining
[mem A-B] failed due to ..." (the write got -EBUSY), or a "migration
failure" dump right after "migrating pfn N failed" for the same pfn
(offline_pages() retries; its outcome is checked by the step).  Whoever
wrote to the state file -- a step, ``--exec``, ``--script``, the
selftest -- the kernel behaved as documented
(Documentation/admin-guide/mm/memory-hotplug.rst, "Offlining may fail").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_RECORD = re.compile(r"^<(\d+)>(?:\[\s*(\d+\.\d+)\]\s?)?(.*)$")
_HEADS = (
    ("warning", re.compile(r"(^|\s)WARNING: ")),
    ("bug", re.compile(r"(^|\s)BUG: |kernel BUG at ")),
    ("oops", re.compile(r"(^|\s)Oops: |(^|\s)Oops\b")),
    ("gpf", re.compile(r"general protection fault")),
    ("ubsan", re.compile(r"(^|\s)UBSAN: ")),
    ("lockdep", re.compile(r"possible circular locking dependency|possible recursive locking"
                           r"|inconsistent lock state|suspicious RCU usage")),
    ("hard-lockup", re.compile(r"Watchdog detected hard LOCKUP")),
    ("hung-task", re.compile(r"INFO: task .* blocked for more than")),
    ("rcu-stall", re.compile(r"rcu: INFO: .*detected stall|self-detected stall")),
    ("page-dump", re.compile(r"page dumped because: ")),
)
_CALL_TRACE = re.compile(r"^\s*Call Trace:")
_REQUESTED = re.compile(r"sysrq: |NMI backtrace for cpu|Sending NMI from CPU")
_END = re.compile(r"---\[ end trace")
MAX_LINES = 60
# mm/debug.c __dump_page(): the lines it prints about the page.
_PAGE_DUMP_LINES = ("page:", "head:", "flags:", "raw:", "memcg:", "page_type:", "page_owner",
                    "anon ", "aops:", "ksm ", "pfn:")

# mm/page_isolation.c: a failed isolation for offlining dumps the culprit
# (dump_page(page, "unmovable page")); it is how the kernel explains EBUSY.
UNMOVABLE_PAGE_DUMP = r"page dumped because: unmovable page"


@dataclass(frozen=True)
class LogRecord:
    facility: int
    level: int
    time: float | None
    text: str


@dataclass(frozen=True)
class Splat:
    """One kernel-reported problem: its kind, first line and following lines."""

    kind: str
    time: float | None
    lines: tuple[str, ...]
    expected: bool = False
    why: str = ""  # why an expected splat is expected (a pattern, an explained offline)

    @property
    def title(self) -> str:
        return self.lines[0].strip()

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "time": self.time, "title": self.title,
                "lines": list(self.lines), "expected": self.expected, "why": self.why}


def parse_raw_log(text: str) -> list[LogRecord]:
    """``dmesg -r`` (busybox or util-linux) into records; lines without a
    ``<N>`` prefix continue the record before them."""
    out: list[LogRecord] = []
    for line in text.splitlines():
        m = _RECORD.match(line)
        if m is None:
            if out:
                prev = out[-1]
                out.append(LogRecord(prev.facility, prev.level, prev.time, line))
            continue
        prio = int(m.group(1))
        stamp = float(m.group(2)) if m.group(2) else None
        out.append(LogRecord(prio >> 3, prio & 7, stamp, m.group(3)))
    return out


def find_splats(records: Sequence[LogRecord], expected: Iterable[str] = ()) -> list[Splat]:
    """The kernel splats in ``records`` (kernel facility only); those matching
    one of the ``expected`` regular expressions are marked expected."""
    patterns = [re.compile(p) for p in expected]
    kernel = [r for r in records if r.facility == 0]
    splats: list[Splat] = []
    i = 0
    requested_until = -1
    while i < len(kernel):
        rec = kernel[i]
        if _REQUESTED.search(rec.text):
            requested_until = i + MAX_LINES
        kind = next((k for k, rx in _HEADS if rx.search(rec.text)), None)
        if kind is None and _CALL_TRACE.match(rec.text) and i > requested_until:
            kind = "call-trace"
        if kind is None:
            i += 1
            continue
        j = i + 1
        while j < len(kernel) and j - i < MAX_LINES:
            if _END.search(kernel[j - 1].text):
                break
            if kind == "page-dump" and not kernel[j].text.startswith(_PAGE_DUMP_LINES):
                break
            if any(rx.search(kernel[j].text) for _, rx in _HEADS):
                break  # the next splat begins
            j += 1
        start = i
        if kind == "page-dump":  # dump_page() prints the page before saying why
            while start > 0 and kernel[start - 1].text.startswith(_PAGE_DUMP_LINES):
                start -= 1
        lines = tuple(r.text for r in kernel[start:j])
        text = "\n".join(lines)
        why = next((f"matches {p.pattern!r}" for p in patterns if p.search(text)), "")
        if not why and kind == "page-dump":
            why = offline_explained(lines, kernel[max(0, start - 2):j + MAX_LINES])
        splats.append(Splat(kind, rec.time, lines, bool(why), why))
        i = j
    return splats


_DUMP_REASON = re.compile(r"page dumped because: (.*)$")
_PFN = re.compile(r"\bpfn:(0x[0-9a-fA-F]+)")
_ZONE = re.compile(r"\|zone=(\d+)")
_MIGRATE_FAILED = re.compile(r"migrating pfn ([0-9a-fA-F]+) failed ret:(-?\d+)")
#: Zone index -> name (include/linux/mmzone.h ``enum zone_type``) on x86-64
#: with CONFIG_ZONE_DMA, CONFIG_ZONE_DMA32 and CONFIG_ZONE_DEVICE, as
#: Debian builds it; the order /proc/zoneinfo lists a node's zones in.
X86_64_ZONES = ("DMA", "DMA32", "Normal", "Movable", "Device")


def offline_explained(dump: Sequence[str], around: Sequence[LogRecord],
                      zones: Sequence[str] = X86_64_ZONES) -> str:
    """Why the page dump ``dump`` belongs to an offline the kernel may
    refuse or retry, from its own lines and the records ``around`` it; ""
    when it does not.

    * "unmovable page": ``set_migratetype_isolate()`` found a page it cannot
      move while offlining, so the write to ``state`` fails with -EBUSY.
      Allowed in a kernel zone; in ZONE_MOVABLE (the ``zone=`` of the
      dump's flags line, ``%pGp``) it is not, and the dump stays a splat.
    * "migration failure": ``do_migrate_range()`` could not move the page
      (it printed "migrating pfn N failed" just before) and
      ``offline_pages()`` retries; allowed in any zone (pinned pages,
      Documentation/admin-guide/mm/memory-hotplug.rst).
    """
    reason = next((m.group(1).strip() for line in dump if (m := _DUMP_REASON.search(line))),
                  "")
    pfn_m = next((m for line in dump if (m := _PFN.search(line))), None)
    if pfn_m is None:
        return ""
    pfn = int(pfn_m.group(1), 16)
    if reason == "unmovable page":
        zone_m = next((m for line in dump if line.startswith("flags:")
                       and (m := _ZONE.search(line))), None)
        if zone_m is None or int(zone_m.group(1)) >= len(zones):
            return ""
        zone = zones[int(zone_m.group(1))]
        if zone in ("Movable", "Device"):
            return ""
        return (f"offline met an unmovable page (pfn {pfn:#x}) in ZONE_{zone.upper()}: the "
                "kernel refuses it with EBUSY, as it may")
    if reason == "migration failure":
        for rec in around:
            m = _MIGRATE_FAILED.search(rec.text)
            if m and int(m.group(1), 16) == pfn:
                return (f"offline could not migrate pfn {pfn:#x} (ret {m.group(2)}) and "
                        "retries, as it may")
    return ""


@dataclass(frozen=True)
class LogMark:
    """Where a scan of the log stopped: how many records it had seen and the
    last one (kernels without CONFIG_PRINTK_TIME print no timestamps)."""

    count: int = 0
    last: LogRecord | None = None


def mark_of(records: Sequence[LogRecord]) -> LogMark:
    return LogMark(len(records), records[-1] if records else None)


def newer_than(records: Sequence[LogRecord], mark: LogMark) -> list[LogRecord]:
    """The records after ``mark``: by position while the buffer still holds
    the marked record there; after it wrapped, by kernel time when there is
    one, else everything after the marked record's last occurrence."""
    if mark.last is None:
        return list(records)
    if len(records) >= mark.count and records[mark.count - 1] == mark.last:
        return list(records[mark.count:])
    if mark.last.time is not None:
        return [r for r in records if r.time is not None and r.time > mark.last.time]
    for i in range(len(records) - 1, -1, -1):
        if records[i] == mark.last:
            return list(records[i + 1:])
    return list(records)
