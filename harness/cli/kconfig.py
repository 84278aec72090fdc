"""``memhp kconfig check``: will this kernel do memory hotplug, and how?

Exit 0 when hot-add and online will work, 1 when something required is
missing, 2 when the input cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

MAX_SOURCE_BYTES = 2 << 30  # a kernel package or image is read whole


@click.group("kconfig")
def kconfig_group() -> None:
    """Kernel configuration checks for memory hotplug."""


@kconfig_group.command("check")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--cmdline", default="", help="The guest kernel command line that will be used "
              "(memhp_default_state= overrides the build default).")
@click.option("--source", "source_tree", type=click.Path(path_type=Path),
              help="Kernel source tree: explain with kconfiglib why a missing option is off.")
@click.option("--json", "as_json", is_flag=True)
def check_cmd(source: Path, cmdline: str, source_tree: Path | None, as_json: bool) -> int:
    """Check SOURCE: a .config, config.gz, an IKCONFIG kernel image or a linux-image .deb."""
    from harness.files import check_readable_file
    from harness.kconfig import check_config, read_config
    from harness.scenario import auto_online_from_append

    check_readable_file(source, "kernel config source", "give a .config, config.gz, a bzImage "
                        "with IKCONFIG or a linux-image .deb", max_bytes=MAX_SOURCE_BYTES)
    auto_online_from_append(cmdline.split())  # memhp_default_state=bogus is refused
    text, kind = read_config(source)
    report = check_config(text, cmdline=cmdline)
    explanations: dict[str, str] = {}
    if source_tree is not None and report.problems:
        from harness.kconfig.deps import explain

        explanations = explain(source_tree, text, [f.option for f in report.problems])
    if as_json:
        doc = report.to_json() | {"source": str(source), "source_kind": kind}
        if explanations:
            doc["explanations"] = {f"CONFIG_{k}": v for k, v in explanations.items()}
        click.echo(json.dumps(doc, indent=2))
    else:
        _print(report, source, kind, explanations)
    return 0 if report.ok else 1


def _print(report, source: Path, kind: str, explanations: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A table on a terminal; plain lines otherwise (a CI log shows every
    option name and fix whole, however narrow).  All text is escaped."""
    from harness.report import esc, make_console, make_table

    console = make_console()
    version = ".".join(map(str, report.kernel_version)) if report.kernel_version else "?"
    title = f"{esc(source)} ({esc(kind)}, Linux {version})"
    colour = {"error": "red", "warning": "yellow", "info": "blue"}
    if console.is_terminal:
        table = make_table(title, ("", "severity", "option", "value", "group", "why / fix"))
    else:
        console.print(title, soft_wrap=True)
    for f in report.findings:
        mark = "[green]✓[/]" if f.ok else f"[{colour[f.severity]}]✗[/]"
        lines = [esc(f.why)] if f.ok else [esc(f.why), f"fix: {esc(f.fix)}"]
        if f.option in explanations:
            lines.append(f"why it is off: {esc(explanations[f.option])}")
        if console.is_terminal:
            table.add_row(mark, f.severity, f"CONFIG_{esc(f.option)}", esc(f.value),
                          esc(f.group), "\n".join(lines))
        else:
            console.print(f"{mark} {f.severity} CONFIG_{esc(f.option)}={esc(f.value)} "
                          f"({esc(f.group)})", soft_wrap=True)
            for line in lines:
                console.print(f"    {line}", soft_wrap=True)
    if console.is_terminal:
        console.print(table)
    state = "comes online by itself" if report.auto_online else "stays offline until onlined"
    console.print(f"new memory {state}: policy [bold]{esc(report.online_policy)}[/] "
                  f"({esc(report.policy_source)})", soft_wrap=not console.is_terminal)
    for note in report.notes:
        console.print(f"note: {esc(note)}", soft_wrap=not console.is_terminal)
    verdict = "[green]hot-add and online will work[/]" if report.ok else \
        "[red]memory hotplug will not work with this config[/]"
    console.print(verdict)


COMMANDS: list[click.Command] = [kconfig_group]
