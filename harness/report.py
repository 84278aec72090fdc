"""Human-readable reports of a run: a table per step (model vs guest) and a
final PASS/FAIL line, rendered with :mod:`rich`."""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console
from rich.table import Table

from harness.session import RunResult, StepResult


def _console(file: IO[str] | None) -> Console:
    return Console(file=file, highlight=False, soft_wrap=False, width=120)


def step_table(step: StepResult) -> Table:
    """Per block: address, node, zone, state — model vs guest."""
    status = "[green]ok[/]" if step.passed else "[bold red]MISMATCH[/]"
    lat = ", ".join(f"{k.removesuffix('_s')} {v * 1000:.0f} ms" for k, v in step.latencies.items())
    table = Table(title=f"step {step.index + 1}: {step.action} — {status}"
                        + (f"  ({lat})" if lat else ""), title_justify="left")
    for col in ("block", "address", "node (model/guest)", "zone (model/guest)",
                "state (model/guest)"):
        table.add_column(col)
    bs = step.expected.get("block_size", 0)
    seen = {b["number"]: b for b in step.observed.get("blocks", [])}
    want = {b["number"]: b for b in step.expected.get("blocks", [])}

    def pair(a: Any, b: Any) -> str:
        text = f"{a if a is not None else '-'} / {b if b is not None else '-'}"
        return text if a == b else f"[red]{text}[/]"

    for n in sorted(want.keys() | seen.keys()):
        w, s = want.get(n, {}), seen.get(n, {})
        table.add_row(
            f"memory{n}", f"{n * bs:#x}" if bs else "?",
            pair(w.get("node"), s.get("node")),
            pair(w.get("zone") if w.get("state") == "online" else None,
                 s.get("zone") if s.get("state") == "online" else None),
            pair(w.get("state"), s.get("state")),
        )
    exp_nodes = {n["node"]: n["bytes"] for n in step.expected.get("nodes", [])}
    obs_nodes = {n["node"]: n["bytes"] for n in step.observed.get("nodes", [])}
    for node in sorted(exp_nodes.keys() | obs_nodes.keys()):
        table.add_row(f"node{node} MemTotal", "", "", "",
                      pair(exp_nodes.get(node), obs_nodes.get(node)))
    return table


def print_step(step: StepResult, *, file: IO[str] | None = None) -> None:
    console = _console(file)
    console.print(step_table(step))
    if step.error:
        console.print(f"  [red]error:[/] {step.error}")
    for m in step.mismatches:
        console.print(f"  [red]✗[/] {m}")
    print_splats(console, step.splats)


def print_splats(console: Console, splats: list[Any]) -> None:
    """Kernel splats, whole (their lines are the evidence); expected ones marked."""
    for sp in splats:
        mark = "expected " if sp.expected else "✗ "
        console.print(f"  {mark}kernel {sp.kind}: {sp.title}", markup=False, highlight=False)
        for line in sp.lines[1:]:
            console.print(f"      {line}", markup=False, highlight=False)


def policy_line(policy: dict[str, Any]) -> str:
    """The kernel's hotplug policy inputs as one line (see harness.model.kernel)."""
    parts = [f"kernel {policy.get('release')}",
             f"auto_online_blocks={policy.get('auto_online_blocks')}",
             f"online_policy={policy.get('online_policy')}"]
    if policy.get("online_policy") == "auto-movable":
        parts.append(f"auto_movable_ratio={policy.get('auto_movable_ratio')}")
    parts.append(f"memmap_on_memory={policy.get('memmap_on_memory')}")
    if policy.get("movable_node"):
        parts.append("movable_node")
    for key in ("kernelcore", "movablecore"):
        if policy.get(key):
            parts.append(f"{key}={policy[key]}")
    return "policy: " + ", ".join(parts)


def print_run_report(result: RunResult, *, file: IO[str] | None = None) -> None:
    console = _console(file)
    if result.exec is not None:
        console.print(f"[bold]exec[/] {result.exec.command} → exit {result.exec.status}")
        if result.exec.output.strip():
            console.print(result.exec.output.rstrip(), markup=False)
    if result.policy:
        console.print(policy_line(result.policy), markup=False, highlight=False)
    print_splats(console, result.splats)
    if result.error:
        console.print(f"[red]{result.error['phase']} error:[/] {result.error['message']}",
                      markup=True)
    t = result.timings
    figures = ", ".join(
        f"{label} {t[key]:.2f}s" for key, label in
        (("boot_to_ssh_s", "boot-to-SSH"), ("total_s", "total")) if key in t
    )
    verdict = "[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict} {result.scenario}: {len(result.steps)} step(s), "
                  f"{result.accel.upper()}, QEMU {result.qemu_version}, kernel {result.kernel}"
                  + (f"; {figures}" if figures else ""))
    if result.artifacts:
        console.print(f"artifacts: {result.artifacts}")
