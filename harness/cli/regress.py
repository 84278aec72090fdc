"""Regression testing of patched kernels: ``memhp compare`` and ``memhp bisect``.

``memhp bisect`` speaks ``git bisect run``'s exit codes: 0 good, 1 bad (the
scenario fails: a mismatch with the model or a refused/failed hotplug),
125 skip (cannot test this commit: the kernel does not build, its config
lacks memory hotplug per ``memhp kconfig check``, or the guest never boots),
and anything >= 128 aborts the bisection: 128 for bad input (a usage
error says nothing about the commit; exit 2 would read as "bad"), 130 on
Ctrl-C.  The plan is checked before anything is built.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from harness.cli.run import execute_with, prepare, scenario_options
from harness.errors import HarnessError

GOOD, BAD, SKIP, ABORT, BAD_INPUT = 0, 1, 125, 130, 128


def bisect_exit_code(result: Any) -> int:
    """Map a run to git bisect's convention."""
    from harness.workflow import never_booted

    if never_booted(result):
        return SKIP
    return GOOD if result.passed else BAD


def _node_deltas(step: Any) -> str:
    """Each node's MemTotal change since boot: the boot totals differ between
    kernels by reservations nobody predicts, the hotplug deltas must not."""
    base = {n["node"]: n["bytes"] - n.get("hotplug_online_bytes", 0)
            for n in step.expected.get("nodes", [])}
    parts = []
    for n in step.observed.get("nodes", []):
        if n["node"] in base:
            delta = (n["bytes"] - base[n["node"]]) >> 20
            parts.append(f"node{n['node']} {delta:+d}M")
    return ", ".join(parts) or "-"


def _step_key(step: Any) -> dict[str, Any]:
    obs = step.observed
    blocks = obs.get("blocks", [])
    return {
        "passed": step.passed,
        "blocks": ", ".join(f"memory{b['number']}:{b['state']}/{b.get('zone') or '-'}"
                            for b in blocks) or "-",
        "nodes": _node_deltas(step),
        "seconds": step.seconds,
    }


POLICY_KEYS = ("auto_online_blocks", "online_policy", "auto_movable_ratio",
               "auto_movable_numa_aware", "memmap_on_memory", "movable_node", "kernelcore",
               "movablecore", "rules")


def policy_differences(a: Any, b: Any) -> list[str]:
    """The kernel policy inputs and model rule sets that differ between A and
    B: what explains a real difference in behaviour."""
    pa, pb = a.policy or {}, b.policy or {}
    return [f"{k}: {pa.get(k)} (A) vs {pb.get(k)} (B)" for k in POLICY_KEYS
            if pa.get(k) != pb.get(k)]


def comparison(a: Any, b: Any) -> tuple[list[dict[str, Any]], bool]:
    """Rows per step (A vs B) and whether B regressed where A passed."""
    rows = []
    regressed = False
    for i in range(max(len(a.steps), len(b.steps))):
        sa = a.steps[i] if i < len(a.steps) else None
        sb = b.steps[i] if i < len(b.steps) else None
        ka, kb = (_step_key(sa) if sa else {}), (_step_key(sb) if sb else {})
        either = sa or sb
        assert either is not None
        rows.append({"step": either.action, "a": ka, "b": kb,
                     "differs": {k for k in ("passed", "blocks", "nodes")
                                 if ka.get(k) != kb.get(k)}})
        if ka.get("passed") and not kb.get("passed"):
            regressed = True
    if a.passed and not b.passed:
        regressed = True
    return rows, regressed


@click.command("compare")
@scenario_options
@click.option("--kernel", "kernels", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Give twice: the baseline (A) and the patched kernel (B).")
@click.option("--modules", "modules", multiple=True, type=click.Path(path_type=Path),
              help="Modules for each --kernel, in the same order (optional).")
@click.option("--json", "as_json", is_flag=True)
def compare_cmd(kernels: tuple[Path, ...], modules: tuple[Path, ...], as_json: bool,
                **opts: Any) -> int:
    """Run the same scenario on kernel A and kernel B, side by side; exit 1 if B regresses."""
    if len(kernels) != 2:
        click.echo("memhp: compare needs exactly two --kernel (baseline, then patched)", err=True)
        return 2
    # Bad input and Ctrl-C reach harness.cli.main, which reports them for
    # every command alike (exit 2 / 3 / 130).
    results = []
    for i, k in enumerate(kernels):
        opts["modules"] = modules[i] if i < len(modules) else None
        scenario, guest = prepare(opts, kernel=k)
        click.echo(f"memhp: running on {'AB'[i]}: {guest.describe()}", err=True)
        results.append(execute_with(opts, scenario, guest))
    a, b = results
    rows, regressed = comparison(a, b)
    if as_json:
        click.echo(json.dumps({"a": a.to_json(), "b": b.to_json(), "regressed": regressed,
                               "policy_differences": policy_differences(a, b),
                               "rows": [r | {"differs": sorted(r["differs"])} for r in rows]},
                              indent=2))
    else:
        _print_comparison(a, b, rows, regressed)
    return 1 if regressed else 0


def _print_comparison(a: Any, b: Any, rows: list[dict[str, Any]], regressed: bool) -> None:
    from harness.report import esc, make_console, make_table

    console = make_console()
    table = make_table(f"A: {esc(a.kernel)}\nB: {esc(b.kernel)}", ("step", "A", "B"))
    for r in rows:
        def cell(k: dict[str, Any], differs: set[str]) -> str:
            if not k:
                return "[red](not run)[/]"
            parts = []
            for key in ("passed", "blocks", "nodes"):
                text = ("pass" if k[key] else "FAIL") if key == "passed" else esc(k[key])
                parts.append(f"[bold red]{text}[/]" if key in differs else text)
            parts.append(f"{k['seconds']:.2f}s")
            return "\n".join(parts)
        table.add_row(esc(r["step"]), cell(r["a"], r["differs"]), cell(r["b"], r["differs"]))
    console.print(table)
    for line in policy_differences(a, b):
        console.print(f"policy differs: {line}", markup=False)
    for name, res in (("A", a), ("B", b)):
        if res.error:
            console.print(f"{name}: {esc(res.error['phase'])} error: "
                          f"{esc(res.error['message'])}")
        console.print(f"{name}: {'PASS' if res.passed else 'FAIL'}, boot-to-SSH "
                      f"{res.timings.get('boot_to_ssh_s', 0):.2f}s, total "
                      f"{res.timings.get('total_s', 0):.2f}s")
    console.print("[bold red]B REGRESSES[/]" if regressed else "[green]no regression[/]")


@click.command("bisect")
@scenario_options
@click.option("--source", type=click.Path(path_type=Path),
              help="Kernel source tree to build (the commit git bisect checked out).")
@click.option("--build-cmd", help="Build command run in --source (default: make olddefconfig "
              "&& make -j$(nproc) bzImage); must leave arch/x86/boot/bzImage.")
@click.option("--kernel", type=click.Path(path_type=Path),
              help="A prebuilt bzImage instead of --source.")
@click.option("--modules", type=click.Path(path_type=Path))
def bisect_cmd(source: Path | None, build_cmd: str | None, **opts: Any) -> int:
    """One `git bisect run` step: build, check config, boot, run; exit 0/1/125."""
    from harness.cli.run import plan
    from harness.kconfig import check_config

    kernel = opts.get("kernel")
    try:
        plan(opts)  # bad input aborts before a build: it is no verdict on the commit
        if source is not None:
            kernel = _build(source, build_cmd)
            if kernel is None:
                return SKIP
            config = source / ".config"
            if config.exists():
                report = check_config(config.read_text())
                if not report.ok:
                    missing = ", ".join(f"CONFIG_{f.option}" for f in report.problems
                                        if f.severity == "error")
                    click.echo(f"memhp bisect: skip: config lacks {missing}", err=True)
                    return SKIP
        scenario, guest = prepare(opts, kernel=kernel)
    except HarnessError as exc:
        click.echo(f"memhp bisect: {exc.phase} error: {exc}", err=True)
        return SKIP if exc.exit_code == 3 else BAD if exc.exit_code == 1 else BAD_INPUT
    result = execute_with(opts, scenario, guest)  # Ctrl-C: main() exits 130 (= ABORT)
    code = bisect_exit_code(result)
    verdict = {GOOD: "good", BAD: "bad", SKIP: "skip (cannot test)"}[code]
    detail = result.error["message"].splitlines()[0] if result.error else ""
    for s in result.steps:
        for m in s.mismatches:
            detail = detail or str(m)
    click.echo(f"memhp bisect: {verdict}" + (f": {detail}" if detail else ""), err=True)
    return code


def _build(source: Path, build_cmd: str | None) -> Path | None:
    cmd = build_cmd or f"make olddefconfig && make -j{os.cpu_count() or 2} bzImage"
    click.echo(f"memhp bisect: building in {source}: {cmd}", err=True)
    proc = subprocess.run(["sh", "-c", cmd], cwd=source, stdout=sys.stderr, stderr=sys.stderr,
                          check=False)
    image = source / "arch/x86/boot/bzImage"
    if proc.returncode != 0 or not image.exists():
        click.echo(f"memhp bisect: skip: build failed ({shlex.quote(cmd)} exited "
                   f"{proc.returncode})", err=True)
        return None
    return image


COMMANDS: list[click.Command] = [compare_cmd, bisect_cmd]
