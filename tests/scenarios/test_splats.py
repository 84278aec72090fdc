"""Kernel splats on real guests, judged by the kernel's own facts.

The dump here is one a stock Debian kernel really prints: offlining
kernel memory that holds unmovable pages makes mm/page_isolation.c dump
the culprit ("page dumped because: unmovable page") and the write fails
with EBUSY, which the kernel may answer for ZONE_NORMAL memory.  Whoever
wrote to the state file (here a shell behind the model's back, as
``--exec``/``--script``/the selftest do), the dump is expected and says
why; declared with ``expect_splat``, it names the pattern instead.  A user
process writing "WARNING:" to /dev/kmsg is no kernel splat.  A real
kernel WARNING (LKDTM), which fails the run: tests/slow/test_kernel_build.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.scenario import add, online
from harness.testing import make_runner

pytestmark = [pytest.mark.vm]
FILL = "d=$(mktemp -d) && cd \"$d\" && mkdir d{1..40000}"


def _busy_offline_behind_the_model(vm, blocks: list[int]) -> None:
    vm.ssh(["numactl", "--cpunodebind=1", "--membind=1", "bash", "-c", FILL], timeout=300)
    results = vm.guest.offline_blocks(blocks)
    assert any(r.errno_name == "EBUSY" for r in results)
    vm.guest.online_blocks([r.number for r in results if r.ok], "online_kernel")


@pytest.mark.memhp_machine(numa="6G,0")
def test_ebusy_page_dump_is_expected_and_a_declared_one_names_its_pattern(memhp_vm) -> None:
    steps = [add("d0:512M@1"), online("d0", "online_kernel"), add("d1:128M@0"),
             replace(add("d2:128M@0"), expect_splat=("page dumped because: unmovable page",))]
    runner = make_runner(memhp_vm, steps)
    runner.take_baseline()
    assert runner.run_step(0, steps[0]).passed and runner.run_step(1, steps[1]).passed
    blocks = [b.number for b in runner.state.expected_blocks()]
    _busy_offline_behind_the_model(memhp_vm, blocks)
    hit = runner.run_step(2, steps[2])
    assert hit.passed and not hit.mismatches and hit.error is None
    dumps = [s for s in hit.splats if s.kind == "page-dump"]
    assert dumps and all(s.expected for s in dumps), hit.splats
    assert all("EBUSY" in s.why and "ZONE_NORMAL" in s.why for s in dumps), dumps
    assert hit.to_json()["splats"][0]["lines"][-1] == "page dumped because: unmovable page"
    _busy_offline_behind_the_model(memhp_vm, blocks)
    declared = runner.run_step(3, steps[3])
    assert declared.passed and declared.splats and declared.splats[0].expected
    assert "page dumped because" in declared.splats[0].why


def test_user_space_kmsg_is_not_a_kernel_splat(memhp_vm) -> None:
    runner = make_runner(memhp_vm, [add("d0:128M@1")])
    runner.take_baseline()
    memhp_vm.ssh(["sh", "-c", "echo 'WARNING: CPU: 0 PID: 1 at x.c:1 user' > /dev/kmsg; "
                              "echo 'BUG: user' > /dev/kmsg"])
    step = runner.run_step(0, runner.scenario.steps[0])
    assert step.passed and step.splats == []
