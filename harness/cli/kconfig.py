"""``memhp kconfig check``: will this kernel do memory hotplug, and how?

Exit 0 when hot-add and online will work, 1 when something required is
missing, 2 when the input cannot be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


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
    from harness.kconfig import check_config, read_config

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
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    version = ".".join(map(str, report.kernel_version)) if report.kernel_version else "?"
    table = Table(title=f"{source} ({kind}, Linux {version})", title_justify="left")
    for col in ("", "severity", "option", "value", "group", "why / fix"):
        table.add_column(col)
    colour = {"error": "red", "warning": "yellow", "info": "blue"}
    for f in report.findings:
        mark = "[green]✓[/]" if f.ok else f"[{colour[f.severity]}]✗[/]"
        text = f.why if f.ok else f"{f.why}\nfix: {f.fix}"
        if f.option in explanations:
            text += f"\nwhy it is off: {explanations[f.option]}"
        table.add_row(mark, f.severity, f"CONFIG_{f.option}", f.value, f.group, text)
    console.print(table)
    state = "comes online by itself" if report.auto_online else "stays offline until onlined"
    console.print(f"new memory {state}: policy [bold]{report.online_policy}[/] "
                  f"({report.policy_source})")
    for note in report.notes:
        console.print(f"note: {note}")
    verdict = "[green]hot-add and online will work[/]" if report.ok else \
        "[red]memory hotplug will not work with this config[/]"
    console.print(verdict)


COMMANDS: list[click.Command] = [kconfig_group]
