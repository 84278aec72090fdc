"""Run a scenario on a real VM and check every step against the model.

The flow of ``memhp run``: the plan was predicted when the scenario was
built (refusals end the run before any VM starts); boot; take the guest's
baseline; then for each step: act (the step's own class,
:mod:`harness.run.steps`, with a narrow context), record it, observe all
three views once and compare them (:mod:`harness.run.observe`).  The
runner is that loop and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from harness.errors import HarnessError, VMError
from harness.guest.splats import LogMark, Splat, find_splats, mark_of, newer_than
from harness.model.kernel import KernelMemory, KernelPolicy
from harness.model.predict import Prediction
from harness.qemu.vm import VM
from harness.run.context import StepContext
from harness.run.observe import adopt_guest_blocks, expected_json, observe
from harness.run.results import StepResult
from harness.run.state import RunState
from harness.run.steps import Step
from harness.run.steps.lifecycle import boot_memory
from harness.run.steps.workload import check_workloads, stop_workloads
from harness.scenario import Scenario
from harness.verify import Mismatch

log = logging.getLogger("harness.run")


class Runner:
    """Executes a :class:`Scenario` on a started :class:`VM`.

    Two models predict every step: the QEMU side (the plan's prediction:
    addresses, slots, blocks) and the kernel side
    (:class:`harness.model.kernel.KernelMemory`: block states, zones, what
    each ``state`` write answers, the bytes MemTotal gains), fed with the
    policy the guest reports at baseline.  Both live in a
    :class:`RunState`; the acts change it through a :class:`StepContext`.
    """

    def __init__(self, scenario: Scenario, vm: VM, *,
                 on_step: Callable[[StepResult], None] | None = None) -> None:
        self.scenario = scenario
        self.vm = vm
        self.on_step = on_step
        self.state = RunState.of_plan(scenario.machine, scenario.model_ops(),
                                      scenario.prediction, scenario.timing.after,
                                      scenario.timing.never)
        self.steps: list[StepResult] = []
        self.log_mark = LogMark()  # where the last scan of the kernel log stopped
        self.boot_splats: list[Splat] = []

    @property
    def prediction(self) -> Prediction:
        return self.state.prediction

    @property
    def policy(self) -> KernelPolicy | None:
        return self.state.policy

    @property
    def kernel(self) -> KernelMemory | None:
        return self.state.kernel

    # -- baseline -----------------------------------------------------------
    def take_baseline(self) -> None:
        """Record the boot state and the kernel's hotplug policy; adopt the
        guest's block size if it differs from the model's default."""
        state, guest = self.state, self.vm.guest
        view = guest.snapshot()
        if not view.sysfs.blocks or not view.nodes:
            raise VMError(
                "the guest's baseline is empty (no memory blocks or no node meminfo): "
                "the guest cannot report its memory; see its dmesg", phase="observe")
        if view.sysfs.block_size != state.block_size:
            log.warning("guest block size %d differs from the model's default %d; "
                        "re-predicting with the observed value", view.sysfs.block_size,
                        state.block_size)
            state.block_size = view.sysfs.block_size
            state.repredict()
        state.policy = guest.kernel_policy()
        state.kernel = KernelMemory(state.policy, state.block_size)
        # Cold-plugged devices are the model's, not boot RAM: the ACPI driver
        # added the DIMMs at boot as it adds a hot-added one (KernelMemory.reboot).
        cold = boot_memory(state)
        state.kernel.reboot(cold)
        cold_blocks = {n for _, _, blocks, _ in cold for n in blocks}
        state.boot_blocks = {b.number for b in view.sysfs.blocks} - cold_blocks
        state.set_baseline_totals({n: i.values["MemTotal"] for n, i in view.nodes.items()},
                                  view.meminfo["MemTotal"])
        records = guest.kernel_log()
        self.log_mark = mark_of(records)
        self.boot_splats = find_splats(records, self.scenario.expect_splats)

    def scan_log(self, expected: tuple[str, ...] = ()) -> list[Splat]:
        """Kernel splats logged since the last scan (see harness.guest.splats)."""
        records = self.vm.guest.kernel_log()
        new, self.log_mark = newer_than(records, self.log_mark), mark_of(records)
        return find_splats(new, (*self.scenario.expect_splats, *expected))

    def reconcile(self) -> tuple[list[str], list[Mismatch]]:
        """After ``--exec``: adopt what it did to the blocks, then compare
        everything again (a block that appeared or went is a mismatch there)."""
        changes, mism = adopt_guest_blocks(self.vm, self.state)
        _, observed_mism = observe(self.vm, self.state)
        return changes, mism + observed_mism

    # -- the loop -------------------------------------------------------------
    def run_step(self, index: int, step: Step) -> StepResult:
        t0 = time.monotonic()
        ctx = StepContext(self.vm, self.state, step, index, self.scenario.smp,
                          self.scenario.refusals.get(index))
        error: str | None = None
        mism: list[Mismatch] = []
        observed: dict[str, Any] = {}
        splats: list[Splat] = []
        try:
            act_mism = step.act(ctx)
            ctx.took_effect()
            observed, mism = observe(self.vm, self.state)
            observed.update(ctx.notes)
            mism = act_mism + mism
            if self.state.workloads and "guest" not in observed:
                observed["workloads"], wl_mism = check_workloads(self.vm, self.state)
                mism += wl_mism
        except HarnessError as exc:
            if isinstance(exc, VMError) and exc.phase in ("qemu", "guest", "launch"):
                raise
            error = f"{exc.phase} error: {exc}"
            try:
                observed, mism = observe(self.vm, self.state)
            except HarnessError:
                observed, mism = {}, []
        try:
            if not self.vm.paused:  # the kernel log is read at the next step otherwise
                splats = self.scan_log((*step.expect_splat, *ctx.expects))
        except HarnessError as exc:
            error = error or f"{exc.phase} error: cannot read the kernel log: {exc}"
        result = StepResult(index, step.describe(), expected_json(self.state), observed, mism,
                            time.monotonic() - t0, ctx.lat, error, splats)
        self.steps.append(result)
        if self.on_step:
            self.on_step(result)
        return result

    def run(self) -> list[StepResult]:
        self.take_baseline()
        try:
            for i, step in enumerate(self.scenario.steps):
                self.run_step(i, step)
        finally:
            if self.state.workloads:
                with contextlib.suppress(HarnessError):
                    stop_workloads(self.vm, self.state)
        return self.steps
