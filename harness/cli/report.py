"""``memhp report``: render and merge result documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from harness.results import load_result, markdown, merge


@click.group("report")
def report_group() -> None:
    """Render (Markdown) or merge (shards) `memhp run --json` documents."""


@report_group.command("markdown")
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--summary/--no-summary", default=True,
              help="Also append to $GITHUB_STEP_SUMMARY when it is set.")
def markdown_cmd(result: Path, summary: bool) -> int:
    """Print a Markdown summary of RESULT (for CI job summaries)."""
    text = markdown(load_result(result))
    click.echo(text)
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


@report_group.command("merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file.")
def merge_cmd(results: tuple[Path, ...], output: Path | None) -> int:
    """Merge the JSON results of several shards into one document."""
    doc = merge(load_result(p) for p in results)
    text = json.dumps(doc, indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        click.echo(text)
    return 0 if doc["result"] == "pass" else 1


COMMANDS: list[click.Command] = [report_group]
