"""A picture of the guest-physical address space, as SVG (pure: text in, text out).

From a result document (``memhp run --json``, schema 1) it draws, left to
right: boot RAM below 4 GiB, the PCI hole, boot RAM above 4 GiB, and the
device-memory (hotplug) region with each DIMM at its address; under each
range the NUMA node it belongs to.  Below, each DIMM's memory blocks are
drawn one square per ``memoryN``, coloured by what the guest reported
(zone when online, offline, absent), with a red outline where the guest
disagrees with the model.

A virtio-mem device is drawn like a DIMM over its whole region (its
max-size), labelled with what the guest plugged; its row of blocks has one
square per Linux memory block the region holds: the plugged ones in their
zone's colour, the unplugged ones (no ``memoryN`` in the guest) white.

Sizes span five orders of magnitude (a 128 MiB DIMM in a 58 GiB region),
so widths are proportional within a range and ranges are compressed:
free device memory between DIMMs is drawn as a fixed-width break.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

GiB = 1 << 30
PX_PER_GIB = 48.0
MAX_SEGMENT_W = 4000.0  # a range wider than ~83 GiB is drawn compressed
# Bounds on what is drawn: a result document may be crafted (merged shards
# from other jobs).  16384 blocks of 128 MiB are 2 TiB of hot-added memory.
MAX_BLOCKS = 16384
MAX_DIMMS = 1024
MIN_W = 26.0
GAP_W = 44.0
# Node bands avoid the zone colours below (green Movable, blue Normal).
NODE_COLOURS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                "#7f7f7f", "#d4a017")
STATE_COLOURS = {
    "Movable": "#59a14f", "Normal": "#4e79a7", "DMA32": "#76b7b2", "online": "#8cd17d",
    "offline": "#bab0ac", "absent": "#ffffff",
}


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    kind: str  # ram | hole | dimm | free
    label: str
    node: int | None = None
    blocks: tuple[int, ...] = ()  # a DIMM's memoryN numbers


def virtio_mem_rows(vmems: list[dict[str, Any]], block_size: int) -> list[dict[str, Any]]:
    """Each virtio-mem as a DIMM-like row: its region, and every whole Linux
    memory block in it (the driver uses no other, see
    harness.devices.virtio_mem.driver)."""
    rows = []
    for v in vmems:
        addr, size = int(v["addr"]), int(v["max_size"])
        blocks = (tuple(range(-(-addr // block_size), (addr + size) // block_size))
                  if block_size > 0 else ())
        plugged = f"{_size(int(v['size'])) if int(v['size']) else '0'} plugged"
        rows.append({"id": f"{v['id']} (virtio-mem, {plugged})", "addr": addr, "size": size,
                     "node": v.get("node"), "blocks": list(blocks), "guest_accepts": True,
                     "row_label": f"{v['id']} · {plugged} · node{v.get('node')}"})
    return rows


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n >> 20} MiB"


def _node_ranges(layout: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(start, end, node) of boot RAM: QEMU lays nodes out in order in RAM
    offset space, and the part past ``below_4g`` is mapped above 4 GiB."""
    out = []
    offset = 0
    below = int(layout["below_4g"])
    for node, size in enumerate(layout.get("node_ram") or [below + int(layout["above_4g"])]):
        lo, hi = offset, offset + int(size)
        offset = hi
        for a, b, shift in ((lo, min(hi, below), 0), (max(lo, below), hi, 4 * GiB - below)):
            if b > a:
                out.append((a + shift, b + shift, node))
    return out


def segments(layout: dict[str, Any], dimms: list[dict[str, Any]]) -> list[Segment]:
    """The address space as drawable ranges, in address order."""
    segs = [Segment(a, b, "ram", f"node{n}", n) for a, b, n in _node_ranges(layout)]
    below = int(layout["below_4g"])
    if int(layout["above_4g"]) or dimms:
        segs.append(Segment(below, 4 * GiB, "hole", "hole"))
    base, size = int(layout.get("device_base") or 0), int(layout.get("device_size") or 0)
    cursor = base
    for d in sorted(dimms, key=lambda d: int(d["addr"])):
        addr = int(d["addr"])
        if addr > cursor:
            segs.append(Segment(cursor, addr, "free", "free"))
        node = d.get("node")
        segs.append(Segment(addr, addr + int(d["size"]), "dimm", str(d["id"]),
                            int(node) if node is not None else None,
                            tuple(int(b) for b in d.get("blocks") or ())))
        cursor = addr + int(d["size"])
    if size and base + size > cursor:
        segs.append(Segment(cursor, base + size, "free", "free"))
    return sorted(segs, key=lambda s: s.start)


def _width(seg: Segment) -> float:
    if seg.kind in ("free", "hole"):
        return GAP_W
    return min(MAX_SEGMENT_W, max(MIN_W, (seg.end - seg.start) / GiB * PX_PER_GIB))


def _zone_colour(block: dict[str, Any] | None) -> str:
    if block is None:
        return STATE_COLOURS["absent"]
    if block.get("state") != "online":
        return STATE_COLOURS["offline"]
    return STATE_COLOURS.get(str(block.get("zone")), STATE_COLOURS["online"])


def render_svg(doc: dict[str, Any], step: int | None = None) -> str:
    """SVG text for ``doc`` after ``step`` (default: the last step)."""
    layout = doc.get("layout") or {}
    if not layout:
        raise ValueError("result has no layout (written by an older memhp?)")
    steps = doc.get("steps") or []
    st = steps[step if step is not None else -1] if steps else {}
    expected = st.get("expected") or {}
    observed = st.get("observed") or {}
    dimms = list(expected.get("dimms") or []) + virtio_mem_rows(
        expected.get("virtio_mem") or [], int(layout.get("block_size") or 0))
    seen = {int(b["number"]): b for b in observed.get("blocks") or []}
    predicted = {int(b["number"]): b for b in expected.get("blocks") or []}
    # The run's own verdict (harness.verify), not a second comparison here.
    differs = {str(m.get("subject")) for m in st.get("mismatches") or []}
    dimm_rows = [d for d in dimms if d.get("blocks")]
    n_blocks = sum(len(d["blocks"]) for d in dimm_rows)
    if len(dimms) > MAX_DIMMS or n_blocks > MAX_BLOCKS:
        raise ValueError(f"the map would draw {len(dimms)} DIMMs and {n_blocks} memory blocks, "
                         f"over the limit of {MAX_DIMMS} DIMMs and {MAX_BLOCKS} blocks "
                         "(fix: draw another --step, or check the document: no real run "
                         "plugs that much)")
    segs = segments(layout, [d for d in dimms if d.get("guest_accepts", True)])

    x0, y_bar, bar_h = 20.0, 140.0, 46.0
    xs: list[float] = []
    x = x0
    for seg in segs:
        xs.append(x)
        x += _width(seg)
    bar_w = x - x0
    sq, sq_gap = 22.0, 4.0
    max_blocks = max((len(d["blocks"]) for d in dimm_rows), default=0)
    width = max(bar_w + 110, 260 + max_blocks * (sq + sq_gap), 780)
    y_legend = y_bar + bar_h + 50
    y_detail = y_legend + 64
    height = y_detail + len(dimm_rows) * (sq + 30) + 70
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, sans-serif" '
        f'font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{x0}" y="22" font-size="15" font-weight="bold">'
        f'{escape(str(doc.get("scenario", "")))}: guest-physical memory map '
        f'({escape(str(layout.get("machine", "")))})</text>',
        f'<text x="{x0}" y="40" fill="#555">kernel {escape(str(doc.get("kernel", "")))}</text>',
        f'<text x="{x0}" y="56" fill="#555">QEMU '
        f'{escape(str(doc.get("qemu_version", "")))} · after step '
        f'{escape(str(st.get("action", "-")))} · block size '
        f'{escape(_size(int(layout.get("block_size", 0))))} · result '
        f'{escape(str(doc.get("result", "")))}</text>',
    ]
    for seg, sx in zip(segs, xs, strict=True):
        w = _width(seg)
        fill = {"ram": "#dfe7f2", "hole": "#f4f4f4", "free": "#fafafa"}.get(seg.kind, "#fff3d6")
        dash = ' stroke-dasharray="4 3"' if seg.kind in ("free", "hole") else ""
        out.append(f'<rect x="{sx:.1f}" y="{y_bar}" width="{w:.1f}" height="{bar_h}" '
                   f'fill="{fill}" stroke="#333"{dash}/>')
        if seg.kind == "dimm":
            bw = w / max(len(seg.blocks), 1)
            for i, num in enumerate(seg.blocks):
                out.append(f'<rect x="{sx + i * bw:.1f}" y="{y_bar + 22}" width="{bw:.1f}" '
                           f'height="{bar_h - 22}" fill="{_zone_colour(seen.get(num))}" '
                           f'stroke="#666" stroke-width="0.5"/>')
        label = seg.label
        out.append(f'<text x="{sx + 3:.1f}" y="{y_bar + 14}" font-size="10">'
                   f'{escape(label)}</text>')
        if seg.kind != "dimm":
            out.append(f'<text x="{sx + 3:.1f}" y="{y_bar + bar_h - 4}" font-size="9" '
                       f'fill="#333">{escape(_size(seg.end - seg.start))}'
                       f'{" RAM" if seg.kind == "ram" else ""}</text>')
        if seg.node is not None:
            colour = NODE_COLOURS[int(seg.node) % len(NODE_COLOURS)]
            out.append(f'<rect x="{sx:.1f}" y="{y_bar + bar_h + 2}" width="{w:.1f}" height="6" '
                       f'fill="{colour}"/>')
        out.append(f'<text transform="translate({sx + 2:.1f},{y_bar - 4}) rotate(-45)" '
                   f'font-size="9" fill="#444">{seg.start:#x}</text>')
    end = segs[-1].end if segs else 0
    out.append(f'<text transform="translate({x0 + bar_w - 2:.1f},{y_bar - 4}) rotate(-45)" '
               f'font-size="9" fill="#444">{end:#x}</text>')
    dev_base, dev_size = int(layout.get("device_base") or 0), int(layout.get("device_size") or 0)
    dev_x = [sx for seg, sx in zip(segs, xs, strict=True) if seg.kind in ("dimm", "free")]
    if dev_size and dev_x:
        y = y_bar + bar_h + 14
        out.append(f'<path d="M{dev_x[0]:.1f},{y} v6 H{x0 + bar_w:.1f} v-6" fill="none" '
                   f'stroke="#333"/><text x="{dev_x[0]:.1f}" y="{y + 20}">device-memory '
                   f'(hotplug) region: {_size(dev_size)} at {dev_base:#x}</text>')
    legend: list[tuple[str, str, str]] = [
        (f"node{n}", NODE_COLOURS[n % len(NODE_COLOURS)], "none")
        for n in sorted({int(s.node) for s in segs if s.node is not None})]
    legend += [(name, STATE_COLOURS[key], "#666") for name, key in (
        ("Movable", "Movable"), ("Normal", "Normal"), ("online, other zone", "online"),
        ("offline", "offline"), ("absent in guest", "absent"))]
    legend.append(("guest differs from model", "white", "#d62728"))
    lx, ly = x0, y_legend
    for name, fill, stroke in legend:
        step_w = 30 + 6.5 * len(name)
        if lx + step_w > width - 10:
            lx, ly = x0, ly + 18
        sw = 2 if stroke == "#d62728" else 0.5
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="12" height="9" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="{sw}"/>'
                   f'<text x="{lx + 16:.1f}" y="{ly}">{escape(name)}</text>')
        lx += step_w
    out.append(f'<text x="{x0}" y="{y_detail - 14}" font-weight="bold">memory blocks per DIMM '
               f'(guest-reported; model prediction in the tooltip)</text>')
    y = y_detail
    for d in dimm_rows:
        row = (str(d["row_label"]) if "row_label" in d else
               f'{d["id"]} · node{d.get("node")} · {_size(int(d["size"]))} @ {int(d["addr"]):#x}')
        out.append(f'<text x="{x0}" y="{y + 15}">{escape(row)}</text>')
        bx = x0 + 230
        for num in (int(b) for b in d["blocks"]):
            got, want = seen.get(num), predicted.get(num)
            stroke = ('stroke="#d62728" stroke-width="2.5"' if f"memory{num}" in differs
                      else 'stroke="#555"')
            tip = (f"memory{num}: guest {_describe(got)}; model {_describe(want)}")
            out.append(f'<g><title>{escape(tip)}</title><rect x="{bx:.1f}" y="{y}" '
                       f'width="{sq}" height="{sq}" fill="{_zone_colour(got)}" {stroke}/>'
                       f'<text x="{bx + sq / 2:.1f}" y="{y + sq + 11}" font-size="8" '
                       f'text-anchor="middle">{num}</text></g>')
            bx += sq + sq_gap
        y += sq + 30
    out.append(f'<text x="{x0}" y="{height - 14}" font-size="9" fill="#777">'
               f'widths: {PX_PER_GIB:.0f} px per GiB within RAM and DIMMs; the PCI hole and '
               f'free device memory are drawn compressed</text>')
    out.append("</svg>")
    return "\n".join(s for s in out if s) + "\n"


def _describe(block: dict[str, Any] | None) -> str:
    if block is None:
        return "absent"
    parts = [str(block.get("state"))]
    if block.get("zone"):
        parts.append(str(block["zone"]))
    if block.get("node") is not None:
        parts.append(f"node{block['node']}")  # escaped by the caller, with the whole tip
    return " ".join(parts)


def svg_to_png(svg: Path) -> Path | None:
    """Render ``svg`` beside itself as PNG when ``rsvg-convert`` is installed."""
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return None
    png = svg.with_suffix(".png")
    proc = subprocess.run([tool, "-o", str(png), str(svg)], capture_output=True, timeout=60,
                          check=False)
    return png if proc.returncode == 0 else None
