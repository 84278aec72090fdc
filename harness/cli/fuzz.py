"""``memhp fuzz``: random hotplug sequences on real VMs, every step checked
against the model; a failure is shrunk and written as a scenario.

Exit codes: 0 no failure (and, with --compare, no difference), 1 a
failure or a difference, 2 bad input, 3 environment, 130 interrupted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from harness.cli.options import QEMU_OPTIONS, apply
from harness.cli.run import kernel_options
from harness.errors import UsageError
from harness.fuzz.generate import FAST_KINDS, KINDS, POLICIES
from harness.machines import machine


def _seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``90``, ``90s``, ``30m`` or ``1h`` -> seconds."""
    if value is None:
        return None
    m = re.fullmatch(r"([0-9]{1,6})([smh]?)", value.strip(), re.ASCII)
    if m is None or int(m.group(1)) == 0:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 90s, 30m, 1h)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _target(opts: dict[str, Any], spec: str | None) -> Any:
    """The guest and QEMU to run on: the options', or one side of --compare
    (``kernel:PATH``, ``package:NAME[/SUITE]``, else a QEMU: a binary or
    ``debian:X.Y``)."""
    from harness.cli.run import _parse_version, check_qemu
    from harness.fuzz.engine import Target
    from harness.launch import GuestSource, resolve_guest
    from harness.qemu.fetch import resolve_qemu
    from harness.qemu.version import qemu_version

    kernel, package, qemu = opts.get("kernel"), opts.get("kernel_package"), (
        opts["qemu_binary"] or "")
    board = machine(opts.get("machine_family", "pc"))
    if spec is not None and spec.startswith("kernel:"):
        kernel, package = Path(spec.removeprefix("kernel:")), None
    elif spec is not None and spec.startswith("package:"):
        kernel, package = None, spec.removeprefix("package:")
    elif spec is not None:
        qemu = spec
    binary = resolve_qemu(qemu or board.qemu_binary, arch=board.arch)
    detected = qemu_version(binary)
    check_qemu(binary, detected)
    version = _parse_version(opts["qemu_version"]) or _parse_version(
        ".".join(detected.split(".")[:2]) if detected != "unknown" else None)
    guest = resolve_guest(GuestSource(kernel=kernel, modules=opts.get("modules"),
                                      kernel_package=package, suite=opts.get("suite"),
                                      kernel_config=opts.get("kernel_config"),
                                      arch=board.debian_arch))
    return Target(guest, binary, opts["accel"], opts["timeout_scale"], version,
                  label=spec or f"{guest.describe()} on QEMU {detected}")


@click.command("fuzz")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
              help="The same seed gives the same sequences.")
@click.option("--steps", "length", default=8, show_default=True, type=click.IntRange(1, 200),
              help="Steps per sequence (a resume or reset may close one).")
@click.option("--sequences", type=click.IntRange(1), help="How many sequences (default: 3, "
              "or as many as --time allows).")
@click.option("--time", "seconds", callback=_seconds, metavar="DURATION",
              help="Stop starting sequences after this long (90s, 30m, 1h).")
@click.option("--machine", "machines", multiple=True,
              type=click.Choice(["pc", "q35", "virt"]),
              help="Machine types to cycle through (repeatable; default pc); virt (arm64) "
                   "on its own: one architecture per campaign.")
@click.option("--policy", "policies", multiple=True,
              type=click.Choice([*POLICIES, "all"]),
              help="Kernel hotplug policies to cycle through (repeatable; default manual).")
@click.option("--kinds", default="fast", show_default=True, type=click.Choice(["fast", "all"]),
              help="fast: devices, blocks, pause, reset; all: also reboot, migrate, "
                   "workloads.")
@click.option("--shrink-budget", default=30, show_default=True, type=click.IntRange(0),
              help="VM runs at most to shrink one failure.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("memhp-fuzz"),
              show_default=True, help="Where shrunk failures are written as scenarios.")
@click.option("--compare", nargs=2, metavar="A B",
              help="Run every sequence on two targets and report where they differ: "
                   "each kernel:PATH, package:NAME[/SUITE] or a QEMU (binary, debian:X.Y).")
@click.option("--accel", default="auto", show_default=True,
              type=click.Choice(["auto", "kvm", "tcg"]))
@click.option("--timeout-scale", default=1.0, show_default=True,
              type=click.FloatRange(0.1, 100))
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON on stdout.")
@apply(QEMU_OPTIONS)
@kernel_options
def fuzz_cmd(**opts: Any) -> int:
    """Random hotplug sequences checked step by step against the model."""
    from harness.cli.run import check_keep_dir
    from harness.fuzz.engine import Settings, campaign

    policies = tuple(POLICIES) if "all" in opts["policies"] else (opts["policies"]
                                                                  or ("manual",))
    machines = opts["machines"] or ("pc",)
    if len({machine(m).arch for m in machines}) > 1:
        raise UsageError(f"--machine {' '.join(machines)}: one architecture per campaign "
                         "(each boots its own guest on its own QEMU)", value=machines,
                         fix="run virt (arm64) and pc/q35 (x86) as two campaigns")
    opts["machine_family"] = machines[0]
    check_keep_dir(opts["out"], "--out")  # a directory memhp may create
    sequences = opts["sequences"] or (None if opts["seconds"] else 3)
    settings = Settings(seed=opts["seed"], length=opts["length"], sequences=sequences,
                        seconds=opts["seconds"], machines=machines,
                        policies=policies, kinds=FAST_KINDS if opts["kinds"] == "fast"
                        else KINDS, shrink_budget=opts["shrink_budget"], out=opts["out"])
    a, b = opts["compare"] or (None, None)
    target = _target(opts, a)
    other = _target(opts, b) if b is not None else None

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    say(f"memhp fuzz: seed {settings.seed}, {settings.length} steps per sequence, on "
        f"{target.label}" + (f", compared with {other.label}" if other else ""))
    summary = campaign(settings, target, compare=other, say=say)
    doc = summary.to_json()
    if opts["as_json"]:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"sequences {doc['sequences']}, steps checked {doc['steps_checked']} "
                   f"in {doc['seconds']} s ({doc['steps_per_minute']} per minute)")
        for key, n in doc["outcomes"].items():
            click.echo(f"  {key}: {n}")
        click.echo("model rules seen: " + ", ".join(f"{k} ({n})" for k, n in
                                                    doc["rules"].items()))
        for f in summary.failures:
            click.echo(f"FAIL sequence {f.sequence + 1}: {' / '.join(f.signature)}; shrunk "
                       f"from {f.steps} to {len(f.shrunk.steps)} steps: {f.path}")
        for d in summary.differences:
            click.echo(f"DIFFERENT: {json.dumps(d)}")
    return 1 if summary.failures or summary.differences else 0


COMMANDS: list[click.Command] = [fuzz_cmd]
