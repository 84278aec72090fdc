"""The splat detector (harness.guest.splats), on a kernel log captured from
a real 6.1 guest (an unmovable page dumped while offlining, and a user
process writing "WARNING:" to /dev/kmsg), and on hand-written records in
the kernel's formats (named as such) for the kinds a healthy guest does not
print.  tests/scenarios/test_splats.py checks the detector on real guests."""

from __future__ import annotations

from pathlib import Path

from harness.guest.splats import LogMark, find_splats, mark_of, newer_than, parse_raw_log

DATA = Path(__file__).parent.parent / "data" / "guest"


def real_log():
    return parse_raw_log((DATA / "dmesg-raw-unmovable-page.txt").read_text())


def test_real_page_dump_is_found_whole() -> None:
    [splat] = find_splats(real_log())
    assert splat.kind == "page-dump"
    assert splat.title.startswith("page:")  # the dump comes before its reason
    assert splat.lines[-1] == "page dumped because: unmovable page"
    # zone=2 in its flags line: ZONE_NORMAL, where offline may answer EBUSY
    assert splat.expected and "ZONE_NORMAL" in splat.why and "EBUSY" in splat.why


def test_user_writes_to_kmsg_are_not_kernel_splats() -> None:
    records = real_log()
    user = [r for r in records if "not_a_kernel_splat" in r.text]
    assert user and all(r.facility == 1 for r in user)
    assert all("not_a_kernel_splat" not in "\n".join(s.lines) for s in find_splats(records))


def test_expected_patterns_mark_splats() -> None:
    [splat] = find_splats(real_log(), [r"page dumped because: unmovable page"])
    assert splat.expected


def test_only_newer_records_are_scanned() -> None:
    records = real_log()
    assert find_splats(newer_than(records, mark_of(records))) == []
    before = next(i for i, r in enumerate(records) if r.text.startswith("page:"))
    assert find_splats(newer_than(records, mark_of(records[:before])))
    assert newer_than(records, LogMark()) == records


def test_marks_without_timestamps_and_after_a_wrap() -> None:
    """No CONFIG_PRINTK_TIME: records carry no time; a full buffer drops
    its oldest records, and the scan still starts after the marked one."""
    untimed = parse_raw_log("<6>one\n<6>two\n<4>BUG: three\n<6>four\n")
    mark = mark_of(untimed[:2])
    assert [r.text for r in newer_than(untimed, mark)] == ["BUG: three", "four"]
    wrapped = untimed[1:]  # "one" fell out of the buffer
    assert [r.text for r in newer_than(wrapped, mark)] == ["BUG: three", "four"]
    timed = real_log()
    assert newer_than(timed[5:], mark_of(timed[:10])) == timed[10:]


# Hand-written in the kernel's formats (kernel/panic.c __warn, lib/ubsan.c,
# kernel/hung_task.c, kernel/rcu/tree_stall.h): fakes for the parser only.
WARN = """<4>[   20.100000] ------------[ cut here ]------------
<4>[   20.100001] WARNING: CPU: 1 PID: 212 at drivers/misc/lkdtm/bugs.c:97 lkdtm_WARNING+0x10/0x20
<4>[   20.100002] Modules linked in: virtio_net
<4>[   20.100003] Call Trace:
<4>[   20.100004]  <TASK>
<4>[   20.100005]  direct_entry+0x9c/0xb0
<4>[   20.100006]  </TASK>
<4>[   20.100007] ---[ end trace 0000000000000000 ]---
<6>[   20.200000] eth0: link up
<3>[   21.000000] INFO: task kworker/0:1:12 blocked for more than 1 seconds.
<3>[   22.000000] UBSAN: shift-out-of-bounds in mm/foo.c:1:2
<3>[   23.000000] rcu: INFO: rcu_preempt self-detected stall on CPU
<6>[   24.000000] sysrq: Show backtrace of all active CPUs
<4>[   24.000001] Call Trace:
<4>[   24.000002]  show_stack+0x1/0x2
"""


def test_kinds_and_extent() -> None:
    splats = find_splats(parse_raw_log(WARN))
    assert [s.kind for s in splats] == ["warning", "hung-task", "ubsan", "rcu-stall"]
    warning = splats[0]
    assert warning.title.startswith("WARNING: CPU: 1 PID: 212")
    assert warning.lines[-1].startswith("---[ end trace")
    assert "Call Trace:" in warning.lines  # its own trace, not a second splat


def test_a_bare_call_trace_counts_unless_requested() -> None:
    bare = "<4>[ 1.0] Call Trace:\n<4>[ 1.1]  foo+0x1/0x2\n"
    assert [s.kind for s in find_splats(parse_raw_log(bare))] == ["call-trace"]
    requested = "<6>[ 1.0] sysrq: Show Blocked State\n" + bare
    assert find_splats(parse_raw_log(requested)) == []


# -- a page dump is judged by the kernel's facts (issue 26); hand-written
# records in the format of mm/debug.c __dump_page() and mm/memory_hotplug.c

def _dump(reason: str, zone: int, pfn: str = "0x1c0000", before: str = "") -> str:
    return (before
            + f"<4>[ 9.30] page:0000000011a5458b refcount:1 mapcount:0 mapping:0 index:0x0 "
              f"pfn:{pfn}\n"
              f"<4>[ 9.30] flags: 0x57ffffc0000000(node=1|zone={zone}|lastcpupid=0x1fffff)\n"
              f"<4>[ 9.30] raw: 0057ffffc0000000 0000000000000000 dead000000000122\n"
              f"<4>[ 9.30] page dumped because: {reason}\n")


def test_unmovable_page_in_movable_zone_stays_a_splat() -> None:
    [kernel_zone] = find_splats(parse_raw_log(_dump("unmovable page", 1)))
    assert kernel_zone.expected and "ZONE_DMA32" in kernel_zone.why
    [movable] = find_splats(parse_raw_log(_dump("unmovable page", 3)))
    assert not movable.expected and movable.why == ""


def test_migration_failure_needs_the_kernels_own_line() -> None:
    said = "<4>[ 9.29] migrating pfn 1c0000 failed ret:-11\n"
    [retried] = find_splats(parse_raw_log(_dump("migration failure", 3, before=said)))
    assert retried.expected and "retries" in retried.why
    other = "<4>[ 9.29] migrating pfn 1c0001 failed ret:-11\n"
    [alone] = find_splats(parse_raw_log(_dump("migration failure", 3, before=other)))
    assert not alone.expected


def test_other_dump_reasons_stay_splats() -> None:
    [bad] = find_splats(parse_raw_log(_dump("VM_BUG_ON_PAGE(PageTail(page))", 2)))
    assert not bad.expected
