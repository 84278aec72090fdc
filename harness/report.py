"""Human-readable reports of a run: a table per step (model vs guest) and a
final PASS/FAIL line, rendered with :mod:`rich`.

Output is data, never markup: every string that comes from the user, the
guest or a document goes through :func:`esc` (``[/]`` prints as ``[/]``).
Width follows the terminal, else ``COLUMNS``, else 80; ``NO_COLOR`` is
honoured (rich); table cells fold long words instead of cropping them, so
a CI log shows every identifier, path and fix whole.
"""

from __future__ import annotations

import re
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from harness.run.results import RunResult, StepResult


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` with terminal control characters (ESC and the other C0/C1
    controls but tab and newline) and bidi overrides shown as ``\\xNN`` /
    ``\\uNNNN``: guest output, QEMU's words and scenario text never drive
    the terminal of whoever reads the report."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", str(value))


def esc(value: object) -> str:
    """``value`` as literal, printable text for rich (markup characters
    escaped, control characters shown, see :func:`printable`)."""
    return escape(printable(value))


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """The one way memhp makes a rich console (see the module docstring)."""
    return Console(file=file, stderr=stderr, highlight=False, soft_wrap=False, emoji=False)


def make_table(title: str, columns: tuple[str, ...]) -> Table:
    """A table whose cells fold (never crop with an ellipsis)."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def _console(file: IO[str] | None) -> Console:
    return make_console(file)


def _title(step: StepResult) -> str:
    status = "[green]ok[/]" if step.passed else "[bold red]MISMATCH[/]"
    lat = ", ".join(f"{esc(k.removesuffix('_s'))} {v * 1000:.0f} ms" if k.endswith("_s")
                    else f"{esc(k)} {v:g}" for k, v in step.latencies.items())
    return f"step {step.index + 1}: {esc(step.action)} — {status}" + (f"  ({lat})" if lat else "")


def qemu_table(step: StepResult) -> Table:
    """Per DIMM: address and slot, model vs QEMU (when the guest could not
    be observed, e.g. while paused)."""
    table = make_table(_title(step), ("DIMM", "address (model/QEMU)", "slot (model/QEMU)"))
    seen = {d["id"]: d for d in step.observed.get("dimms", [])}
    want = {d["id"]: d for d in step.expected.get("dimms", [])}

    def pair(a: Any, b: Any, fmt: str = "") -> str:
        text = esc(f"{'-' if a is None else format(a, fmt)} / "
                   f"{'-' if b is None else format(b, fmt)}")
        return text if a == b else f"[red]{text}[/]"

    for dimm_id in sorted(want.keys() | seen.keys()):
        w, s = want.get(dimm_id, {}), seen.get(dimm_id, {})
        if w.get("unplug_pending") and not s:  # a pending unplug may complete any moment
            table.add_row(esc(dimm_id) + " (unplug pending)", esc(f"{w['addr']:#x} / ejected"),
                          esc(f"{w['slot']} / ejected"))
            continue
        table.add_row(esc(dimm_id) + (" (unplug pending)" if w.get("unplug_pending") else ""),
                      pair(w.get("addr"), s.get("addr"), "#x"),
                      pair(w.get("slot"), s.get("slot")))
    return table


def step_table(step: StepResult) -> Table:
    """Per block: address, node, zone, state — model vs guest."""
    if "guest" in step.observed:
        return qemu_table(step)
    table = make_table(_title(step),
                       ("block", "address", "node (model/guest)", "zone (model/guest)",
                        "state (model/guest)"))
    bs = step.expected.get("block_size", 0)
    seen = {b["number"]: b for b in step.observed.get("blocks", [])}
    want = {b["number"]: b for b in step.expected.get("blocks", [])}

    def pair(a: Any, b: Any) -> str:
        text = esc(f"{a if a is not None else '-'} / {b if b is not None else '-'}")
        return text if a == b else f"[red]{text}[/]"

    for n in sorted(want.keys() | seen.keys()):
        w, s = want.get(n, {}), seen.get(n, {})
        table.add_row(
            esc(f"memory{n}"), esc(f"{n * bs:#x}") if isinstance(bs, int) and bs else "?",
            pair(w.get("node"), s.get("node")),
            pair(w.get("zone") if w.get("state") == "online" else None,
                 s.get("zone") if s.get("state") == "online" else None),
            pair(w.get("state"), s.get("state")),
        )
    exp_vmem = {v["id"]: v for v in step.expected.get("virtio_mem", [])}
    obs_vmem = {v["id"]: v for v in step.observed.get("virtio_mem", [])}
    for vid in sorted(exp_vmem.keys() | obs_vmem.keys()):  # QEMU's plugged size
        w, s = exp_vmem.get(vid, {}), obs_vmem.get(vid, {})
        table.add_row(esc(f"{vid} plugged"), esc(f"{w.get('addr', s.get('addr', 0)):#x}"),
                      pair(w.get("node"), s.get("node")), "",
                      pair(w.get("size"), s.get("size")))
    exp_nodes = {n["node"]: n["bytes"] for n in step.expected.get("nodes", [])}
    obs_nodes = {n["node"]: n["bytes"] for n in step.observed.get("nodes", [])}
    for node in sorted(exp_nodes.keys() | obs_nodes.keys()):
        table.add_row(esc(f"node{node} MemTotal"), "", "", "",
                      pair(exp_nodes.get(node), obs_nodes.get(node)))
    return table


def print_step(step: StepResult, *, file: IO[str] | None = None) -> None:
    console = _console(file)
    console.print(step_table(step))
    if "guest" in step.observed:
        console.print(f"  guest {esc(step.observed['guest'])}")
    mig = step.observed.get("migration")
    if mig:
        console.print(f"  migrated: {mig['total_time_ms']} ms total, {mig['downtime_ms']} ms "
                      f"downtime, {mig['transferred_bytes']} bytes sent, QEMU pid "
                      f"{mig['source_pid']} -> {mig['destination_pid']}")
    for key in ("pending_unplugs_at_reset", "stale_unplugs_ejected", "ejects_shadowed",
                "stale_unplugs_forgotten", "workloads_ended"):
        if key in step.observed:
            console.print(f"  {key.replace('_', ' ')}: {esc(step.observed[key])}")
    if step.error:
        console.print(f"  [red]error:[/] {esc(step.error)}")
    for m in step.mismatches:
        console.print(f"  [red]✗[/] {esc(m)}")
    print_splats(console, step.splats)


def verdict_line(result: RunResult) -> str:
    """One plain line: PASS, or FAIL and the first reason (``--json`` prints
    it on stderr, so a terminal or CI log says why without the document)."""
    if result.passed:
        return f"memhp: PASS {result.scenario}: {len(result.steps)} step(s)"
    why = "failed"
    if result.error:
        why = f"{result.error['phase']} error: {result.error['message']}"
    else:
        for s in result.steps:
            if not s.passed:
                first = (s.error or (str(s.mismatches[0]) if s.mismatches else "")
                         or (f"unexpected kernel {s.unexpected_splats[0].kind}: "
                             f"{s.unexpected_splats[0].title}" if s.unexpected_splats else ""))
                why = f"step {s.index + 1} ({s.action}): {first}"
                break
        else:
            if result.unexpected_splats:
                sp = result.unexpected_splats[0]
                why = f"unexpected kernel {sp.kind}: {sp.title}"
            elif result.exec is not None and not result.exec.passed:
                why = (f"exec exited {result.exec.status}" if result.exec.status else
                       "; ".join([*result.exec.findings, *map(str, result.exec.mismatches)]))
    behind = (result.model or {}).get("behind", ())
    return printable(f"memhp: FAIL {result.scenario}: {why}"
                     + "".join(f"\nmemhp: {line}" for line in behind))


def print_splats(console: Console, splats: list[Any]) -> None:
    """Kernel splats, whole (their lines are the evidence); expected ones marked."""
    for sp in splats:
        mark = f"expected ({sp.why}) " if sp.expected and sp.why else \
            "expected " if sp.expected else "✗ "
        console.print(printable(f"  {mark}kernel {sp.kind}: {sp.title}"), markup=False,
                      highlight=False)
        for line in sp.lines[1:]:
            console.print(printable(f"      {line}"), markup=False, highlight=False)


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


def print_model_status(status: Any, *, file: IO[str] | None = None) -> None:
    """The run's first lines: extrapolated rules and calibrations
    (:class:`harness.calibrate.ModelStatus`)."""
    console = _console(file)
    for line in status.lines():
        console.print(f"memhp: {line}", markup=False, highlight=False)


def print_run_report(result: RunResult, *, file: IO[str] | None = None) -> None:
    console = _console(file)
    if result.exec is not None:
        console.print(f"[bold]exec[/] {esc(result.exec.command)} → exit {result.exec.status}")
        if result.exec.output.strip():
            console.print(result.exec.output.rstrip(), markup=False)
        for line in result.exec.findings:
            console.print(f"  ✗ exec: {line}", markup=False, highlight=False)
        for line in result.exec.changes:
            console.print(f"  exec changed {line}", markup=False, highlight=False)
        for m in result.exec.mismatches:
            console.print(f"  ✗ after exec: {m}", markup=False, highlight=False)
    if result.policy:
        console.print(policy_line(result.policy), markup=False, highlight=False)
    print_splats(console, result.splats)
    if result.error:
        console.print(f"[red]{esc(result.error['phase'])} error:[/] "
                      f"{esc(result.error['message'])}")
    t = result.timings
    warm = bool(result.start and result.start.get("warm"))
    figures = ", ".join(
        f"{label} {t[key]:.2f}s" for key, label in
        (("boot_to_ssh_s", "warm start-to-SSH" if warm else "boot-to-SSH"),
         ("total_s", "total")) if key in t
    )
    verdict = "[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict} {esc(result.scenario)}: {len(result.steps)} step(s), "
                  f"{esc(result.accel.upper())}, QEMU {esc(result.qemu_version)}, "
                  f"kernel {esc(result.kernel)}" + (f"; {figures}" if figures else ""))
    for line in (result.model or {}).get("behind", ()):
        console.print(f"memhp: {line}", markup=False, highlight=False)
    if result.artifacts:
        console.print(f"artifacts: {esc(result.artifacts)}")
