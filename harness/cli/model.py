"""``memhp model``: what the reference model predicts for a plan, no VM."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import click

from harness.errors import PlanRefused, UsageError


def _ranges(blocks: tuple[int, ...]) -> str:
    if not blocks:
        return "-"
    out, start, prev = [], blocks[0], blocks[0]
    for b in blocks[1:] + (None,):  # type: ignore[operator]
        if b is not None and b == prev + 1:
            prev = b
            continue
        out.append(f"memory{start}" if start == prev else f"memory{start}-{prev}")
        if b is not None:
            start = prev = b
    return ", ".join(out)


def detected_qemu_version(binary: str = "qemu-system-x86_64") -> tuple[tuple[int, int], str]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.split()
        major, minor = out[3].split(".")[:2]
        return (int(major), int(minor)), f"detected from {binary}"
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return (7, 2), f"{binary} not found; assuming 7.2"


@click.command("model")
@click.option("--machine", default="pc", show_default=True, type=click.Choice(["pc", "q35"]))
@click.option("--memory", default="6G,slots=32,maxmem=32G", show_default=True,
              help="As QEMU's -m: SIZE[,slots=N,maxmem=SIZE].")
@click.option("--numa", default="3G,3G", show_default=True,
              help="Boot memory per node; '' for no NUMA.")
@click.option("--add", "adds", multiple=True, metavar="ID:SIZE@NODE[:ADDR]",
              help="Hot-add a DIMM (repeatable; applied in order with --remove).")
@click.option("--remove", "removes", multiple=True, metavar="ID",
              help="Hot-remove a DIMM (repeatable).")
@click.option("--block-size", help="Guest memory block size (default: the kernel's x86 rule).")
@click.option("--qemu-version", help="Model this QEMU version (default: detected).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def model_cmd(ctx: click.Context, machine: str, memory: str, numa: str, adds: tuple[str, ...],
              removes: tuple[str, ...], block_size: str | None, qemu_version: str | None,
              as_json: bool) -> int:
    """Predict where each DIMM lands, its memory blocks and the node totals."""
    from harness.model import MachineSpec, RemoveDimm, parse_dimm_option, predict
    from harness.model.spec import parse_memory_option, parse_numa_option
    from harness.units import parse_size

    try:
        if qemu_version is None:
            version, version_note = detected_qemu_version()
        else:
            try:
                major, minor = qemu_version.split(".")[:2]
                version, version_note = (int(major), int(minor)), "given"
            except ValueError:
                raise UsageError(f"QEMU version {qemu_version!r} is not MAJOR.MINOR",
                                 value=qemu_version, fix="e.g. --qemu-version 7.2") from None
        ram, slots, maxmem = parse_memory_option(memory)
        spec = MachineSpec(
            machine=machine,  # type: ignore[arg-type]
            ram_size=ram, slots=slots, maxmem=maxmem,
            numa=parse_numa_option(numa) if numa else (), qemu_version=version,
            block_size=parse_size(block_size, what="block size") if block_size else None,
        )
        ops = _ordered_ops(ctx, adds, removes, parse_dimm_option, RemoveDimm)
        prediction = predict(spec, ops)
    except PlanRefused as exc:
        if as_json:
            click.echo(json.dumps({"error": {
                "kind": exc.kind, "message": str(exc),
                "qemu_message": getattr(exc, "qemu_message", ""),
                "step": getattr(exc, "step", None)}}))
        click.echo(f"memhp: plan refused ({exc.kind}): {exc}", err=True)
        return 2
    except UsageError as exc:
        if as_json:
            click.echo(json.dumps({"error": {"kind": "usage", "message": str(exc)}}))
        click.echo(f"memhp: {exc}", err=True)
        return 2
    if as_json:
        doc = prediction.to_json()
        doc["qemu_version_source"] = version_note
        click.echo(json.dumps(doc, indent=2))
        return 0
    _print_table(prediction, version_note)
    return 0


def _ordered_ops(ctx: click.Context, adds: tuple[str, ...], removes: tuple[str, ...],
                 parse_add: Any, make_remove: Any) -> list[Any]:
    """--add and --remove in the order they appear on the command line."""
    argv = list(ctx.obj or [])
    order: list[str] = []
    for i, word in enumerate(argv):
        if word in ("--add", "--remove") and i + 1 < len(argv):
            order.append(word)
        elif word.startswith("--add="):
            order.append("--add")
        elif word.startswith("--remove="):
            order.append("--remove")
    if len(order) != len(adds) + len(removes):
        order = ["--add"] * len(adds) + ["--remove"] * len(removes)
    a, r = iter(adds), iter(removes)
    return [parse_add(next(a)) if w == "--add" else make_remove(next(r)) for w in order]


def _print_table(prediction: Any, version_note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.units import human

    console = Console(highlight=False)
    lay = prediction.layout
    spec = prediction.spec
    console.print(f"[bold]{spec.machine}[/], QEMU {'.'.join(map(str, spec.qemu_version))} "
                  f"({version_note}): RAM {human(lay.below_4g)} below 4G + "
                  f"{human(lay.above_4g)} above; device memory "
                  f"{lay.device_base:#x}-{lay.device_end:#x}; block size {human(lay.block_size)}")
    console.print(f"why: {lay.why}")
    table = Table(title="DIMMs after the last step", title_justify="left")
    for col in ("DIMM", "address", "size", "node", "slot", "blocks", "guest"):
        table.add_column(col)
    for d in prediction.final.dimms:
        table.add_row(d.id, f"{d.addr:#x}", human(d.size), str(d.node), str(d.slot),
                      _ranges(d.blocks), "accepts" if d.guest_accepts else f"rejects: {d.reason}")
    console.print(table)
    nodes = Table(title="per node (all accepted DIMMs online)", title_justify="left")
    for col in ("node", "boot", "hot-added", "after"):
        nodes.add_column(col)
    for n in prediction.final.nodes:
        nodes.add_row(str(n.node), human(n.boot_bytes), human(n.hotplug_bytes),
                      human(n.bytes_after))
    console.print(nodes)


COMMANDS: list[click.Command] = [model_cmd]
