"""Warm starts (harness.warm) against real QEMU 7.2 and the default guest.

One test, four VMs of the same inputs, in a private state cache:

1. the first boots and saves its state;
2. the second starts from it while the first still runs (own port, own
   work dir, the pinned keys of the state), and its baseline (blocks,
   states, zones, per-node MemTotal, kernel policy) equals that of
3. an independent cold boot of the same inputs (``cold_boot=True``);
   the warm guest then runs the seed steps checked against the model;
4. after the state file is damaged, the next start falls back to a cold
   boot, says why, and saves a fresh state.

The guest boots with ``nokaslr``: with KASLR the kernel image lands in
either NUMA node at each boot (``arch/x86/boot/compressed/kaslr.c``
picks the physical address), so two cold boots of the same inputs differ
in per-node MemTotal by the image's size (measured: 32 MiB moving between
node 0 and 1, and 8 KiB in the total).  Without it cold boots agree
exactly, so the warm start must agree exactly too.  (With KASLR a warm
start is the saved boot's sample of that spread; the Runner reads the
baseline from the guest either way.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import ExitStack
from typing import Any

import pytest

from harness.launch import launch_vm
from harness.run.runner import Runner
from harness.scenario import add, build_scenario, online
from harness.testing import assert_passed, run_steps, start_cli
from harness.warm import WarmStarts

pytestmark = pytest.mark.vm


def _baseline(vm: Any) -> dict[str, Any]:
    runner = Runner(vm.scenario, vm)
    runner.take_baseline()
    view = vm.guest.snapshot()
    assert runner.policy is not None
    return {
        "blocks": [(b.number, b.state, b.node, b.valid_zones) for b in view.sysfs.blocks],
        "block_size": view.sysfs.block_size,
        "auto_online": view.sysfs.auto_online,
        "node_memtotal": {n: info.values["MemTotal"] for n, info in view.nodes.items()},
        "memtotal": view.meminfo["MemTotal"],
        "policy": runner.policy.to_json(),
    }


@pytest.mark.long_running
def test_warm_start_matches_cold_boot(tmp_path, memhp_resolved_guest, memhp_settings,
                                      request) -> None:
    if memhp_resolved_guest.image is None:
        pytest.skip("warm starts need a memhp image (the guest is a user disk)")
    cache = WarmStarts(tmp_path)
    scenario = build_scenario(name="warm", machine="pc", memory="4G,slots=8,maxmem=16G",
                              numa="2G,2G", steps=[], smp=2,
                              append=("nokaslr",), qemu_version=memhp_settings.qemu_version)

    def start(stack: ExitStack, warm: Any) -> Any:
        vm, _ = stack.enter_context(launch_vm(
            scenario, memhp_resolved_guest, accel="tcg", qemu_binary=memhp_settings.qemu,
            artifacts_on_failure=memhp_settings.artifacts,
            timeout_scale=memhp_settings.timeout_scale, name="warm", warm=warm))
        vm.scenario = scenario
        return vm

    with ExitStack() as stack:
        first = start(stack, cache)
        assert first.start_info["warm"] is False
        key = first.start_info["state"]
        assert key, first.start_info
        entry = cache.lookup(key)
        assert entry is not None and entry.size <= 256 << 20, entry
        assert os.stat(entry.directory).st_mode & 0o777 == 0o700
        assert os.stat(entry.directory / "keys" / "client_key").st_mode & 0o777 == 0o600
        saved = _baseline(first)

        second = start(stack, cache)  # while the first still runs
        assert second.start_info["warm"] is True, second.start_info
        assert second.start_info["state"] == key
        assert second.config.ssh_port != first.config.ssh_port
        assert second.workdir != first.workdir
        assert second.timings["restore_s"] < second.timings["boot_to_ssh_s"]
        console = second.serial_text()  # the saved boot's console, then the restore's note
        assert second.ready_marker in console
        assert f"restored from saved state {key}" in console.split(second.ready_marker)[-1]
        guest_now = int(second.ssh(["date", "+%s"]).stdout)
        assert abs(guest_now - time.time()) < 30, "the restored guest's clock was not set"
        warm = _baseline(second)

        cold = _baseline(start(stack, False))
        assert warm == saved, "the restored guest's baseline differs from the saved boot's"
        assert warm == cold, "a warm-started guest's baseline differs from a cold boot's"
        assert_passed(run_steps(second, [add("dimm0:1G@1"), online("dimm0", "online_movable")],
                                request))

    # A damaged state: QEMU refuses the stream, the start falls back to a boot
    with entry.state_file.open("r+b") as f:
        f.truncate(entry.state_file.stat().st_size // 2)
    with ExitStack() as stack:
        third = start(stack, cache)
        info = third.start_info
        assert info["warm"] is False and "restore from state" in info["reason"], info
        fresh = cache.lookup(key)
        assert fresh is not None and fresh.id != entry.id, "the bad state was not replaced"
        assert _baseline(third) == cold


def test_concurrent_runs_share_one_state(tmp_path, memhp_resolved_guest) -> None:
    """Two ``memhp run`` started together on an empty state cache (as two
    xdist workers would): one boots and saves under the lock, the other
    waits and starts from that state; both pass, each on its own port."""
    if memhp_resolved_guest.image is None:
        pytest.skip("warm starts need a memhp image (the guest is a user disk)")
    env = dict(os.environ, MEMHP_STATE_DIR=str(tmp_path / "states"))
    args = ["run", "--accel", "tcg", "--json",
            "--memory", "2G,slots=4,maxmem=4G", "--numa", "1G,1G", "--add", "d0:256M@1"]
    procs = [start_cli(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    starts = sorted((json.loads(out)["start"] for out, _ in outs), key=lambda s: s["warm"])
    cold, warm = starts
    assert cold["warm"] is False and "saved state" in cold["reason"], starts
    assert warm["warm"] is True and warm["state"] == cold["state"], starts
    assert [p.name for p in (tmp_path / "states").iterdir() if p.is_dir()] == [cold["state"]]
