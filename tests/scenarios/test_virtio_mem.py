"""virtio-mem end to end on the default guest (Debian 6.1): two VM boots.

Every step is checked by the Runner against the model: QEMU's view of each
virtio-mem (memaddr, max-size, block-size, node, requested-size and the
plugged size), the guest's ``memoryN`` blocks (node, state, zone) and the
node/system MemTotal deltas (a partially plugged block counts its plugged
bytes only).  No block number or size is written here: the model predicts
them.  QEMU 7.2 cannot unplug a virtio-mem at all, so the removal is tested
on QEMU 10.0 (``--qemu debian:10.0``), through the CLI with the TOML of
issue 18.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.scenario import add, add_virtio_mem, remove, reset, resize
from harness.testing import assert_passed, run_steps

pytestmark = [pytest.mark.vm, pytest.mark.needs_config("VIRTIO_MEM")]


@pytest.mark.memhp_machine(append=("memhp_default_state=online_movable",))
def test_virtio_mem_on_qemu_7_2(memhp_vm: Any, request: pytest.FixtureRequest) -> None:
    """Alongside pc-dimms, two devices on two nodes, grow and shrink block by
    block (movable onlining: the driver can always unplug), QEMU's refusals
    in its words (requested-size above the maximum; device_del, which 7.2
    never allows), and a reset with memory plugged (QEMU unplugs all, the
    rebooted guest's driver plugs the request again)."""
    results = run_steps(memhp_vm, [
        add("dimm0:512M@0"),
        add_virtio_mem("vmem0:4G@1", "1G"),
        add_virtio_mem("vmem1:2G@0", "256M"),
        add("dimm1:256M@1"),  # first fit skips both virtio-mem regions
        resize("vmem0", "3074M"),  # 3G + one 2M sub-block: a partial block
        resize("vmem0", "1026M"),  # whole blocks go, then sub-blocks
        resize("vmem0", "5G", expect_refusal="cannot exceed the memory backend size"),
        remove("vmem0", expect_refusal="cannot be unplugged"),
        reset(),
        resize("vmem1", "0"),
        resize("vmem0", "0"),
    ], request)
    assert_passed(results)
    plugged = results[3].observed  # two DIMMs and two virtio-mem regions, per QEMU
    ranges = sorted([(d["addr"], d["addr"] + d["size"]) for d in plugged["dimms"]]
                    + [(v["addr"], v["addr"] + v["max_size"]) for v in plugged["virtio_mem"]])
    assert len(ranges) == 4
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    final = results[-1].observed
    assert {v["id"]: v["size"] for v in final["virtio_mem"]} == {"vmem0": 0, "vmem1": 0}
    grown = results[4]
    assert any(b["managed_bytes"] not in (None, grown.expected["block_size"])
               for b in grown.expected["blocks"])  # the partial block is modelled
    grows = [s for s in results[4:6]]
    assert all("blocks_visible_s" in s.latencies for s in grows), [s.latencies for s in grows]


HERE = Path(__file__).parent


@pytest.mark.parametrize("toml", ["virtio_mem_issue18.toml", "virtio_mem_qemu10.toml"])
def test_virtio_mem_on_qemu_10(memhp_guest_image: Any, tmp_path: Path, toml: str) -> None:
    """On QEMU 10.0 and the default guest (memory stays offline, so the
    driver stops at its offline threshold): the TOML of issue 18 exactly as
    written, then one with the removal refused while memory is plugged and
    accepted at size 0, and a second device with 4M blocks and
    dynamic-memslots (QEMU 8.2+)."""
    from harness.qemu.fetch import resolve_qemu

    try:
        resolve_qemu("debian:10.0")
    except HarnessError as exc:
        pytest.skip(f"Debian's QEMU 10.0 could not be fetched: {exc}")
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--qemu", "debian:10.0",
                           "--accel", "tcg", "--json", "--scenario", str(HERE / toml),
                           "--keep", str(tmp_path / "art")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(proc.stdout)
    assert result["result"] == "pass" and result["qemu_version"].startswith("10.0.")
    steps = result["steps"]
    assert [s["passed"] for s in steps] == [True] * len(steps)
    seen = [{v["id"]: v for v in s["observed"]["virtio_mem"]} for s in steps]
    first = next(i for i, s in enumerate(seen) if "vmem0" in s)
    want = {v["id"]: v for v in steps[first]["expected"]["virtio_mem"]}
    assert seen[first]["vmem0"]["size"] == want["vmem0"]["size"] > 0
    assert seen[-1] == {}  # every device removed
