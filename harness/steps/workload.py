"""The workload step: start one; every later step checks them all."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError
from harness.guest.workload import CHECK_SCRIPT, START_SCRIPT, STOP_SCRIPT, parse_check
from harness.verify import Mismatch

if TYPE_CHECKING:
    from harness.scenario import Step
    from harness.session import Runner


def act_workload(runner: Runner, step: Step, lat: dict[str, float]) -> list[Mismatch]:
    assert step.workload is not None
    w = step.workload
    if w.id in runner.workloads:
        raise UsageError(f"workload {w.id!r} is already running", value=w.id,
                         fix="give every workload its own id")
    t0 = time.monotonic()
    runner.vm.shell.run_script(START_SCRIPT, args=[w.id, str(w.node), str(w.size >> 20)],
                              timeout=runner.vm.timeouts.s("command") * 10)
    lat["workload_start_s"] = time.monotonic() - t0
    runner.workloads[w.id] = w
    runner.steps_done.append(step)
    return []


def check_workloads(runner: Runner) -> tuple[list[dict[str, Any]], list[Mismatch]]:
    """Every running workload must be alive with its content intact."""
    states, mism = [], []
    for wid in runner.workloads:
        res = runner.vm.shell.run_script(CHECK_SCRIPT, args=[wid], check=False,
                                         timeout=runner.vm.timeouts.s("command") * 10)
        st = parse_check(wid, res.stdout)
        states.append(st.to_json())
        if not st.alive:
            mism.append(Mismatch("workload alive", wid, True, False, "guest"))
        if not st.intact:
            mism.append(Mismatch("workload md5", wid, st.want or "?", st.have or "?",
                                 "guest"))
    return states, mism


def stop_workloads(runner: Runner) -> None:
    for wid in list(runner.workloads):
        runner.vm.shell.run_script(STOP_SCRIPT, args=[wid], check=False)
        del runner.workloads[wid]
