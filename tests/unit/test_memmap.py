"""The memory-map SVG, from result documents built by the model (no VM).

The "observed" half of each document is a fake (named so): the model's
prediction copied, optionally with one block changed, which is all the
renderer needs to be checked against.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from fakes import fake_result_doc

from harness.memmap import render_svg, segments
from harness.model.spec import parse_numa_option

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture()
def seed_doc() -> dict[str, Any]:
    return fake_result_doc("pc", "6G,slots=32,maxmem=32G", "3G,3G", ("dimm0:1G@1", "d1:512M@0"))


def _rects(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}rect"))


def test_svg_is_well_formed_and_draws_every_predicted_block(seed_doc) -> None:
    svg = render_svg(seed_doc)
    root = ET.fromstring(svg)
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    predicted = [b["number"] for b in seed_doc["steps"][-1]["expected"]["blocks"]]
    assert len(titles) == len(predicted)
    for n in predicted:
        assert any(t.startswith(f"memory{n}:") for t in titles)
    assert not any('stroke="#d62728" stroke-width="2.5"' in ET.tostring(r, encoding="unicode")
                   for r in _rects(svg))


def test_a_block_the_guest_disagrees_on_is_outlined(seed_doc) -> None:
    """The outline follows the run's verdict: here harness.verify's own
    comparison of the (faked) guest blocks with the prediction."""
    from types import SimpleNamespace

    from harness.verify import ExpectedBlock, compare_blocks

    doc = copy.deepcopy(seed_doc)
    step = doc["steps"][-1]
    step["observed"]["blocks"][0]["zone"] = "Normal"
    step["mismatches"] = [m.to_json() for m in compare_blocks(
        [ExpectedBlock(**b) for b in step["expected"]["blocks"]], [],
        [SimpleNamespace(**b) for b in step["observed"]["blocks"]])]
    svg = render_svg(doc)
    assert svg.count('stroke="#d62728" stroke-width="2.5"') == 1


def test_segments_follow_the_address_space_in_order(seed_doc) -> None:
    layout = seed_doc["layout"]
    dimms = seed_doc["steps"][-1]["expected"]["dimms"]
    segs = segments(layout, dimms)
    assert [s.start for s in segs] == sorted(s.start for s in segs)
    for a, b in zip(segs, segs[1:], strict=False):
        assert a.end <= b.start
    ram = [s for s in segs if s.kind == "ram"]
    assert sum(s.end - s.start for s in ram) == sum(parse_numa_option("3G,3G"))
    assert {s.node for s in ram} == {0, 1}
    placed = {s.label: s.start for s in segs if s.kind == "dimm"}
    assert placed == {d["id"]: d["addr"] for d in dimms}
    dev = [s for s in segs if s.kind in ("dimm", "free")]
    assert dev[0].start == layout["device_base"]
    assert dev[-1].end == layout["device_base"] + layout["device_size"]


def test_a_node_split_by_the_pci_hole_is_drawn_on_both_sides() -> None:
    """q35 with 3 GiB on one node: 2 GiB below 4 GiB, 1 GiB above (model)."""
    doc = fake_result_doc("q35", "3G,slots=2,maxmem=6G", "3G", ("a:128M@0",))
    segs = segments(doc["layout"], doc["steps"][-1]["expected"]["dimms"])
    node0 = [s for s in segs if s.kind == "ram"]
    assert len(node0) == 2
    assert node0[0].end == doc["layout"]["below_4g"]
    assert node0[1].start == 1 << 32


def test_a_document_without_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="no layout"):
        render_svg({"steps": []})


def test_virtio_mem_region_with_plugged_and_unplugged_blocks() -> None:
    from harness.memmap import render_svg

    doc = {
        "scenario": "vmem", "kernel": "6.1", "qemu_version": "10.0.2", "result": "pass",
        "layout": {"machine": "pc", "below_4g": 3 << 30, "above_4g": 3 << 30,
                   "node_ram": [3 << 30, 3 << 30], "device_base": 7 << 30,
                   "device_size": 26 << 30, "block_size": 128 << 20},
        "steps": [{"action": "resize vmem0", "mismatches": [],
                   "expected": {"dimms": [], "virtio_mem": [
                       {"id": "vmem0", "addr": 7 << 30, "max_size": 1 << 30, "node": 1,
                        "block_size": 2 << 20, "requested_size": 256 << 20,
                        "size": 256 << 20}], "blocks": []},
                   "observed": {"blocks": [
                       {"number": 56, "state": "online", "zone": "Movable", "node": 1},
                       {"number": 57, "state": "online", "zone": "Movable", "node": 1}]}}],
    }
    svg = render_svg(doc)
    assert "vmem0 (virtio-mem, 256 MiB plugged)" in svg
    assert svg.count('fill="#59a14f"') >= 2  # plugged blocks: Movable
    assert ">63</text>" in svg  # the region's last block, drawn unplugged
