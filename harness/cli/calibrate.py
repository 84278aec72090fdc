"""``memhp calibrate``: check the model against the user's own QEMU binary
and guest kernel, and keep the verdict for later runs.

QEMU side: the start-up limits, the seed session's refusals, the check
order of each refusal, then ``--plans`` random plans (``--seed``), against
the binary started paused (no guest); agreement is counted per kind
(start, placement, refusal) and every disagreement is printed with the
``memhp model`` line that reproduces the model's side.

Kernel side: the policy cases (harness.calibrate.cases) booted on the
kernel, one VM each (``--no-kernel`` skips it; ``--case`` picks some).

A clean side writes a record (harness.calibrate.record) that lifts the
"model extrapolated" flag of that binary or kernel in later runs.

Exit codes: 0 every comparison agreed, 1 a disagreement, 2 usage,
3 environment.  The JSON (``--json``) has one document per side:
``agreed`` (every comparison agreed) and ``clean`` (agreed on the whole
set of cases: the record lifts the extrapolation flag).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from harness.cli.run import check_qemu, kernel_options
from harness.errors import UsageError


def _say(as_json: bool) -> Any:
    def say(line: str) -> None:
        click.echo(f"memhp calibrate: {line}", err=as_json)
    return say


@click.command("calibrate")
@click.option("--qemu", "qemu_binary", default="qemu-system-x86_64", show_default=True,
              help="QEMU binary (path or name), or debian:X.Y (fetched into memhp's cache).")
@click.option("--plans", default=40, show_default=True, type=click.IntRange(0, 10000),
              help="Random plans against the paused QEMU.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the random plans (the same seed, the same plans).")
@click.option("--no-qemu", is_flag=True, help="Skip the QEMU side.")
@click.option("--no-kernel", is_flag=True, help="Skip the kernel side (no guest boots).")
@click.option("--case", "cases", multiple=True, metavar="ID",
              help="Run only these kernel cases (repeatable); default: all.")
@kernel_options
@click.option("--accel", default="auto", show_default=True,
              type=click.Choice(["auto", "kvm", "tcg"]))
@click.option("--timeout-scale", default=1.0, show_default=True,
              type=click.FloatRange(0.1, 100))
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def calibrate_cmd(**opts: Any) -> int:
    """Check the model against this QEMU and kernel; record a clean result."""
    from harness.calibrate.cases import ALL_CASES
    from harness.qemu.fetch import resolve_qemu
    from harness.qemu.version import qemu_version

    as_json: bool = opts["as_json"]
    say = _say(as_json)
    all_cases = ALL_CASES
    known = {c.id for c in all_cases}
    for wanted in opts["cases"]:
        if wanted not in known:
            raise UsageError(f"--case {wanted!r} is not a kernel case", value=wanted,
                             fix=f"use one of {', '.join(sorted(known))}")
    if opts["no_qemu"] and opts["no_kernel"]:
        raise UsageError("--no-qemu and --no-kernel leave nothing to calibrate",
                         fix="drop one of them")
    binary = resolve_qemu(opts["qemu_binary"])
    detected = qemu_version(binary)
    check_qemu(binary, detected)
    parts = detected.split(".")
    version = (int(parts[0]), int(parts[1]))
    docs: list[dict[str, Any]] = []
    clean = True
    if not opts["no_qemu"]:
        doc = _qemu_side(binary, detected, version, opts, say)
        docs.append(doc)
        clean &= doc["agreed"]
    if not opts["no_kernel"]:
        cases = tuple(c for c in all_cases if not opts["cases"] or c.id in opts["cases"])
        doc = _kernel_side(binary, version, cases, opts, say)
        docs.append(doc)
        clean &= doc["agreed"]
    if as_json:
        click.echo(json.dumps(docs, indent=2))
    return 0 if clean else 1


def _qemu_side(binary: str, detected: str, version: tuple[int, int], opts: dict[str, Any],
               say: Any) -> dict[str, Any]:
    from harness.calibrate.qemu import KINDS, calibrate_qemu
    from harness.calibrate.record import Record, model_fingerprint, qemu_identity, save
    from harness.model.versions import qemu_extrapolation

    ext = qemu_extrapolation(version)
    say(f"QEMU {detected} ({binary}): "
        + (ext.message() if ext else "within the versions the model was read from"))
    t0 = time.monotonic()
    tally = calibrate_qemu(binary, version, plans=opts["plans"], seed=opts["seed"],
                           progress=say)
    seconds = time.monotonic() - t0
    counts = tally.counts()
    summary = ", ".join(f"{k} {counts[k][0]}/{counts[k][1]}" for k in KINDS)
    bad = tally.disagreements
    for c in bad:
        say(f"DISAGREES ({c.what}): {c.detail}")
        say(f"  reproduce: {c.reproducer}")
    say(f"QEMU {detected}: agreed {summary} in {seconds:.1f}s"
        + ("" if not bad else f"; {len(bad)} disagreement(s)"))
    record = Record("qemu", qemu_identity(binary, detected), detected,
                    model_fingerprint("qemu"), not bad, summary,
                    {"binary": binary, "seconds": round(seconds, 2), "plans": opts["plans"],
                     "seed": opts["seed"], "agreed": not bad,
                     "counts": {k: list(v) for k, v in counts.items()},
                     "disagreements": [c.to_json() for c in bad]})
    path = save(record)
    say(f"record {path}" + (" (later runs of this binary carry no extrapolation flag)"
                            if not bad and ext else ""))
    return record.to_json() | {"path": str(path)}


def _kernel_side(binary: str, version: tuple[int, int], cases: tuple[Any, ...],
                 opts: dict[str, Any], say: Any) -> dict[str, Any]:
    from harness.calibrate.cases import ALL_CASES
    from harness.calibrate.kernel import calibrate_kernel
    from harness.calibrate.record import Record, kernel_identity, model_fingerprint, save
    from harness.launch import GuestSource, resolve_guest
    from harness.model.kernel.inputs import parse_kernel_version
    from harness.model.versions import kernel_extrapolation

    if opts.get("modules") is not None and opts.get("kernel") is None:
        raise UsageError("--modules is only for --kernel", value=opts["modules"],
                         fix="pass --kernel BZIMAGE too, or drop --modules")
    guest = resolve_guest(GuestSource(
        kernel=opts.get("kernel"), modules=opts.get("modules"),
        kernel_package=opts.get("kernel_package"), suite=opts.get("suite"),
        kernel_config=opts.get("kernel_config")))
    release = guest.image.kernel_version
    try:
        ext = kernel_extrapolation(parse_kernel_version(release))
    except ValueError:
        ext = None
    say(f"kernel {release} ({guest.kernel}): "
        + (ext.message() if ext else "within the versions the model was read from")
        + f"; {len(cases)} case(s), one boot each")
    t0 = time.monotonic()
    outcomes = calibrate_kernel(guest, qemu_binary=binary, qemu_version=version,
                                accel=opts["accel"], cases=cases,
                                timeout_scale=opts["timeout_scale"], progress=say)
    seconds = time.monotonic() - t0
    bad = [o for o in outcomes if not o.passed]
    for o in bad:
        say(f"DISAGREES ({o.id}):")
        for line in o.detail.splitlines():
            say(f"  {line}")
    summary = f"cases {len(outcomes) - len(bad)}/{len(outcomes)}"
    say(f"kernel {release}: agreed {summary} in {seconds:.0f}s")
    complete = len(cases) == len(ALL_CASES)
    image = Path(guest.image.kernel)
    record = Record("kernel", kernel_identity(image, release), release,
                    model_fingerprint("kernel"), not bad and complete, summary,
                    {"kernel": str(guest.kernel), "qemu": binary, "agreed": not bad,
                     "seconds": round(seconds, 2),
                     "cases": [o.to_json() for o in outcomes]})
    path = save(record)
    note = ""
    if not complete:
        note = " (a subset of the cases: it does not lift the extrapolation flag)"
    elif not bad and ext:
        note = " (later runs of this kernel carry no extrapolation flag)"
    say(f"record {path}{note}")
    return record.to_json() | {"path": str(path)}


COMMANDS: list[click.Command] = [calibrate_cmd]
