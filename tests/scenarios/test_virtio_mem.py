"""virtio-mem end to end on the default guest (Debian 6.1): three VM boots.

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
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.scenario import (
    add,
    add_virtio_mem,
    migrate,
    pause,
    reboot,
    remove,
    reset,
    resize,
    resume,
)
from harness.testing import assert_passed, run_cli, run_steps

pytestmark = [pytest.mark.vm, pytest.mark.needs_config("VIRTIO_MEM")]


@pytest.mark.long_running
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


@pytest.mark.long_running
@pytest.mark.memhp_machine(append=("memhp_default_state=online_movable",))
def test_virtio_mem_through_the_vm_lifecycle(memhp_vm: Any,
                                             request: pytest.FixtureRequest) -> None:
    """One VM (QEMU 7.2): a virtio-mem with 1G plugged on node 1 beside a
    pc-dimm is live-migrated (the destination pins memaddr, block-size,
    requested-size and the PCI address), grown and shrunk on the
    destination, migrated back; resized while paused (QEMU's requested-size
    at once, the plugged size only after cont); rebooted from inside the
    guest and reset while paused (QEMU unplugs all; the driver plugs the
    request again after boot); resized to 0.  The Runner compares every
    step, on whichever QEMU runs, with the model."""
    results = run_steps(memhp_vm, [
        add("dimm0:512M@0"),                    # 0
        add_virtio_mem("vmem0:4G@1", "1G"),     # 1
        migrate(),                              # 2
        resize("vmem0", "2G"),                  # 3  grow on the destination
        resize("vmem0", "512M"),                # 4  shrink on the destination
        migrate(),                              # 5  and back
        pause(),                                # 6
        resize("vmem0", "1G"),                  # 7  QEMU's at once, the guest's at cont
        resume(),                               # 8
        reboot(),                               # 9  in-guest reboot with 1G plugged
        pause(), reset(), resume(),             # 10-12 a reset while paused empties it
        resize("vmem0", "0"),                   # 13
        remove("vmem0", expect_refusal="cannot be unplugged"),  # 14 (QEMU 7.2)
    ], request)
    assert_passed(results)

    def vmem(i: int, side: str = "observed") -> dict[str, Any]:
        [v] = [v for v in getattr(results[i], side)["virtio_mem"] if v["id"] == "vmem0"]
        return v  # type: ignore[no-any-return]

    plugged = vmem(1)
    assert plugged["size"] == vmem(1, "expected")["size"] > 0
    for i in (2, 5):  # the same device on the destination, its memory still plugged
        m = results[i].observed["migration"]
        assert m["transferred_bytes"] > 0 and m["source_pid"] != m["destination_pid"], m
        assert vmem(i) == vmem(i - 1)
        assert results[i].observed["blocks"] == results[i - 1].observed["blocks"]
        print(f"migration {i} with virtio-mem plugged ({vmem(i)['size'] >> 20} MiB):", m)
    assert vmem(3)["size"] > vmem(2)["size"] > vmem(4)["size"] > 0
    # paused: the request is QEMU's, the plugged size the old one
    assert results[7].observed["guest"].startswith("not observed")
    assert vmem(7)["requested_size"] == vmem(8)["size"] > vmem(7)["size"] == vmem(6)["size"]
    assert "vmem0_after_cont_s" in results[8].latencies, results[8].latencies
    # the in-guest reboot: QEMU emptied the device, the new driver plugged it again
    assert results[9].observed["reset_event"]["guest"] is True
    assert vmem(9)["size"] == vmem(8)["size"]
    assert results[9].observed["blocks"] == results[8].observed["blocks"]
    assert vmem(11)["size"] == 0 and vmem(11)["requested_size"] == vmem(8)["size"]
    assert vmem(12)["size"] == vmem(8)["size"]
    assert vmem(13)["size"] == 0


HERE = Path(__file__).parent


@pytest.mark.long_running
@pytest.mark.parametrize("toml", ["virtio_mem_issue18.toml", "virtio_mem_qemu10.toml"])
def test_virtio_mem_on_qemu_10(memhp_guest_image: Any, tmp_path: Path, toml: str) -> None:
    """On QEMU 10.0 and the default guest (memory stays offline, so the
    driver stops at its offline threshold): the TOML of issue 18 exactly as
    written, then one with the removal refused while memory is plugged and
    accepted at size 0, and a second device with 4M blocks and
    dynamic-memslots (QEMU 8.2+); that one migrates there and back with
    both devices plugged (and vmem1 resized while paused), and once more
    after vmem0's removal left a hole below vmem1 (in memory and PCI slots:
    only the destination's pinned memaddr and PCI addr let QEMU accept it)."""
    from harness.qemu.fetch import resolve_qemu

    try:
        resolve_qemu("debian:10.0")
    except HarnessError as exc:
        pytest.skip(f"Debian's QEMU 10.0 could not be fetched: {exc}")
    proc = run_cli("run", "--qemu", "debian:10.0",
                   "--accel", "tcg", "--json", "--scenario", str(HERE / toml),
                   "--keep", str(tmp_path / "art"), timeout=600)
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
    moved = [s for s in steps if "migration" in s["observed"]]
    assert len(moved) == (3 if toml == "virtio_mem_qemu10.toml" else 0)
    for s in moved:  # the virtio-mem devices went along, still plugged
        assert s["observed"]["migration"]["transferred_bytes"] > 0
        assert any(v["size"] > 0 for v in s["observed"]["virtio_mem"]), s["observed"]
