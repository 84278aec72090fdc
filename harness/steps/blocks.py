"""Memory-block steps: online (with a policy) and offline, over sysfs.

The kernel model predicts each ``state`` write's answer first; the guest's
answers are compared with it block by block.  Where the model allows the
kernel either answer (EBUSY offlining kernel memory), the model follows.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from harness.model.kernel import Outcome
from harness.steps.dimm import UNMOVABLE_PAGE_DUMP
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner


def act_online(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.policy is not None
    d = runner.dimm(step.dimm)
    blocks = list(d.blocks)
    predicted = runner.km().online(blocks, step.policy)
    t1 = time.monotonic()
    mism = write_states(runner, blocks, step.policy, predicted)
    lat["online_s"] = time.monotonic() - t1
    runner.steps_done.append(step)
    return mism


def act_offline(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    d = runner.dimm(step.dimm)
    blocks = list(d.blocks)
    predicted = runner.km().offline(blocks)
    t1 = time.monotonic()
    mism = write_states(runner, blocks, "offline", predicted)
    lat["offline_s"] = time.monotonic() - t1
    runner.steps_done.append(step)
    return mism


def write_states(runner: Runner, blocks: list[int], want: str,
                 predicted: list[Outcome]) -> list[Mismatch]:
    """Write ``want`` to each block; compare every answer with the model's."""
    if want == "offline":
        changes = runner.vm.guest.offline_blocks(blocks)
    else:
        changes = runner.vm.guest.online_blocks(blocks, want)  # type: ignore[arg-type]
    got = {c.number: c for c in changes}
    out: list[Mismatch] = []
    for p in predicted:
        c = got.get(p.number)
        observed = "no answer" if c is None else ("ok" if c.ok else
                                                  (c.errno_name or c.error or "error"))
        expected = "ok" if p.ok else (p.errno or "error")
        if observed == expected:
            continue
        if p.may_fail is not None and observed == p.may_fail:
            # The kernel may answer this (e.g. EBUSY offlining kernel
            # memory): the block stays as it was, and the model follows;
            # the page the kernel dumps to say why is part of that answer.
            runner.km().sync(p.number, "online", p.zone)
            runner.step_expects.append(UNMOVABLE_PAGE_DUMP)
            continue
        out.append(Mismatch(f"write {want}", f"memory{p.number}", expected,
                            observed if c is None or c.ok else f"{observed} ({c.error})",
                            "guest"))
    return out
