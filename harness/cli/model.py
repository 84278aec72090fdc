"""``memhp model``: what the reference model predicts for a plan, no VM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from harness.cli.options import MACHINE_OPTIONS, QEMU_OPTIONS, apply
from harness.errors import HarnessError, PlanRefused, UsageError


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
    """(major, minor) of ``binary --version``; 7.2 (Debian 12's) when there is none."""
    from harness.qemu.version import qemu_version

    found = qemu_version(binary)
    parts = found.split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return (int(parts[0]), int(parts[1])), f"{found}, from {binary}"
    return (7, 2), f"{binary} not found; assuming 7.2"


@click.command("model")
@apply(MACHINE_OPTIONS)
@click.option("--add", "adds", multiple=True, metavar="ID:SIZE@NODE[:ADDR]",
              help="Hot-add a DIMM (repeatable; applied in order with --remove).")
@click.option("--remove", "removes", multiple=True, metavar="ID",
              help="Hot-remove a DIMM (repeatable).")
@click.option("--coldplug", "coldplug", multiple=True, metavar="ID:SIZE@NODE[:ADDR]",
              help="A DIMM on QEMU's command line (repeatable, in order); placed "
                   "before any --add.")
@click.option("--block-size", help="Guest memory block size (default: the kernel's x86 rule).")
@click.option("--cpu", default="max", show_default=True,
              help="As -cpu: MODEL[,phys-bits=N][,vendor=ID], or amd|intel[,phys-bits=N]. "
                   "Default: memhp's TCG CPU (AMD, 40 phys-bits).")
@apply(QEMU_OPTIONS)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def model_cmd(ctx: click.Context, machine: str, memory: str, numa: str, adds: tuple[str, ...],
              removes: tuple[str, ...], coldplug: tuple[str, ...], block_size: str | None,
              cpu: str, qemu_binary: str | None, qemu_version: str | None,
              scenario_file: Path | None, as_json: bool) -> int:
    """Predict where each DIMM lands, its memory blocks and the node totals."""
    from harness.devices.pc_dimm.ops import parse_dimm_option
    from harness.model.predict import predict
    from harness.model.qemu_rules import (
        parse_cpu_option,
        parse_machine_type,
        parse_qemu_version,
    )
    from harness.model.spec import MachineSpec, RemoveDevice, parse_memory_option, parse_numa_option
    from harness.units import parse_size

    extrapolated: dict[str, Any] = {}
    try:
        if qemu_version is None:
            from harness.machines import machine as board
            from harness.qemu.fetch import resolve_qemu

            own = board(parse_machine_type(machine).family)
            version, version_note = detected_qemu_version(
                resolve_qemu(qemu_binary or own.qemu_binary, arch=own.arch))
        else:
            version, version_note = parse_qemu_version(qemu_version), "given"
        extrapolated = _extrapolation(version, as_json)
        mtype = parse_machine_type(machine)
        ram, slots, maxmem = parse_memory_option(memory)
        spec = MachineSpec(
            machine=mtype.family, machine_version=mtype.version,
            ram_size=ram, slots=slots, maxmem=maxmem,
            numa=parse_numa_option(numa) if numa else (), qemu_version=version,
            block_size=parse_size(block_size, what="block size") if block_size else None,
            cpu=parse_cpu_option(cpu),
            coldplug=tuple(parse_dimm_option(c) for c in coldplug),
        )
        ops = _ordered_ops(ctx, adds, removes, parse_dimm_option, RemoveDevice)
        if scenario_file is not None:
            from dataclasses import replace

            from harness.cli.run import read_host_memory
            from harness.scenario import load_scenario

            if adds or removes or coldplug:
                raise UsageError("--scenario cannot be combined with --add/--remove/--coldplug",
                                 fix="put the steps (and [machine] coldplug) in the file")
            # the plan is checked (start-up, phys-bits) with --cpu's vCPU
            loaded = load_scenario(scenario_file, qemu_version=version,
                                   host=read_host_memory(), cpu=spec.cpu)
            spec = replace(loaded.machine, block_size=spec.block_size)
            ops = loaded.model_ops()
        prediction = predict(spec, ops)
    except PlanRefused as exc:
        if as_json:
            click.echo(json.dumps({"error": {
                "kind": exc.kind, "message": str(exc),
                "qemu_message": getattr(exc, "qemu_message", ""),
                "step": getattr(exc, "step", None)}, **extrapolated}))
        qemu_words = getattr(exc, "qemu_message", "")
        click.echo(f"memhp: plan refused ({exc.kind}): {exc}", err=True)
        if qemu_words:
            click.echo(f"memhp: QEMU {'.'.join(map(str, spec.qemu_version))} would say: "
                       f"{qemu_words}", err=True)
        return 2
    except HarnessError as exc:
        if as_json:
            click.echo(json.dumps({"error": {"kind": "usage", "message": str(exc)}}))
        click.echo(f"memhp: {exc}", err=True)
        return exc.exit_code
    if as_json:
        doc = prediction.to_json()
        doc["qemu_version_source"] = version_note
        doc.update(extrapolated)
        click.echo(json.dumps(doc, indent=2))
        return 0
    _print_table(prediction, version_note)
    return 0


def _extrapolation(version: tuple[int, int], as_json: bool) -> dict[str, Any]:
    """For a QEMU newer than the newest read: say so on stderr (human mode)
    and return the JSON key ``extrapolated_from``; else {}."""
    from harness.model.versions import qemu_extrapolation

    ext = qemu_extrapolation(version)
    if ext is None:
        return {}
    if not as_json:
        click.echo(f"memhp: {ext.message()}", err=True)
    return {"extrapolated_from": {"qemu": ext.to_json()["rules_of"]}}


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
    from rich.table import Table

    from harness.report import esc, make_console
    from harness.units import human

    console = make_console()
    lay = prediction.layout
    spec = prediction.spec
    rules = spec.rules
    console.print(f"[bold]{spec.machine_name}[/] (machine type "
                  f"{'.'.join(map(str, rules.machine_version))}), QEMU "
                  f"{'.'.join(map(str, spec.qemu_version))} ({esc(version_note)}), CPU "
                  f"{esc(spec.cpu.model)} ({esc(spec.cpu.vendor)}, {lay.phys_bits} "
                  "phys-bits): "
                  f"RAM {human(lay.below_4g)} below 4G + "
                  f"{human(lay.above_4g)} above; device memory "
                  f"{lay.device_base:#x}-{lay.device_end:#x}; block size {human(lay.block_size)}")
    console.print(f"why: {esc(lay.why)}")
    console.print("rules: " + esc("; ".join(rules.sources)), soft_wrap=True)
    table = Table(title="DIMMs after the last step", title_justify="left")
    from harness.model.backend import RAM

    for col in ("DIMM", "address", "size", "node", "slot", "blocks", "guest"):
        table.add_column(col)
    for d in prediction.final.of("pc-dimm"):
        table.add_row(esc(d.id), f"{d.addr:#x}", human(d.size), str(d.node), str(d.slot),
                      _ranges(d.blocks),
                      "accepts" if d.guest_accepts else f"rejects: {esc(d.reason)}")
    console.print(table)
    for d in prediction.final.of("pc-dimm"):
        if d.backend != RAM:
            pages = f", {d.hugepages} hugepages" if d.hugepages else ""
            console.print(f"{esc(d.id)}: {esc(d.backend.describe())}, aligned to "
                          f"{human(d.align)}{pages}", soft_wrap=True)
    nodes = Table(title="per node (all accepted DIMMs online)", title_justify="left")
    for col in ("node", "boot", "hot-added", "after"):
        nodes.add_column(col)
    for n in prediction.final.nodes:
        nodes.add_row(str(n.node), human(n.boot_bytes), human(n.hotplug_bytes),
                      human(n.bytes_after))
    console.print(nodes)


COMMANDS: list[click.Command] = [model_cmd]
