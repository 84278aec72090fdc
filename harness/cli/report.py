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
    from harness.files import check_output_file

    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and target:
        check_output_file(Path(target), "GITHUB_STEP_SUMMARY",
                          "point it at a regular file, or pass --no-summary")
    text = markdown(load_result(result))
    click.echo(text)
    if summary and target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


@report_group.command("merge")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file.")
def merge_cmd(results: tuple[Path, ...], output: Path | None) -> int:
    """Merge the JSON results of several shards into one document."""
    from harness.files import check_output_file

    if output:
        check_output_file(output, "--output")
    doc = merge(load_result(p) for p in results)
    text = json.dumps(doc, indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        click.echo(text)
    return 0 if doc["result"] == "pass" else 1


@report_group.command("map")
@click.argument("result", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="SVG file to write (a PNG beside it when rsvg-convert is installed).")
@click.option("--step", type=int, help="Draw the state after this step (0-based; default last).")
@click.option("--run", "run_index", default=0, show_default=True,
              help="Which run of a merged document.")
def map_cmd(result: Path, output: Path, step: int | None, run_index: int) -> int:
    """Draw RESULT's guest-physical memory map: RAM, hole, DIMMs, blocks by zone/state."""
    from harness.errors import UsageError
    from harness.files import check_output_file
    from harness.memmap import render_svg, svg_to_png

    check_output_file(output, "--output", "give a file name such as map.svg")
    doc = load_result(result)
    runs = doc.get("runs", [doc])
    if not 0 <= run_index < len(runs):
        raise UsageError(f"--run {run_index} is out of range: {result} holds {len(runs)} run(s)",
                         value=run_index, fix=f"use 0..{len(runs) - 1}")
    doc = runs[run_index]
    n = len(doc.get("steps") or [])
    if step is not None and not 0 <= step < n:
        raise UsageError(f"--step {step} is out of range: the run has {n} step(s)", value=step,
                         fix=f"use 0..{n - 1}")
    try:
        output.write_text(render_svg(doc, step))
    except ValueError as exc:
        raise UsageError(f"cannot draw {result}: {exc}", value=result) from exc
    click.echo(f"memory map: {output}")
    png = svg_to_png(output)
    if png is not None:
        click.echo(f"memory map: {png}")
    return 0


def _export(results: tuple[Path, ...], output: Path | None, text: str) -> None:
    from harness.files import check_output_file

    if output:
        check_output_file(output, "--output")
        output.write_text(text)
    else:
        click.echo(text, nl=False)


@report_group.command("ktap")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file.")
def ktap_cmd(results: tuple[Path, ...], output: Path | None) -> int:
    """RESULTS as KTAP version 1: one test per run, one subtest per step
    (what tools/testing/kunit/kunit.py parse reads)."""
    from harness.export.ktap import ktap

    docs = [load_result(p) for p in results]
    _export(results, output, ktap(docs))
    return 0 if all(d.get("result") == "pass" for d in docs) else 1


@report_group.command("kcidb")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file.")
def kcidb_cmd(results: tuple[Path, ...], output: Path | None) -> int:
    """RESULTS as one KCIDB v5 document (checkouts, builds, tests; test
    paths memhp.<machine>.<scenario>.<stepNN_kind>) for KernelCI."""
    from harness.export.kcidb import kcidb

    doc = kcidb([load_result(p) for p in results])
    _export(results, output, json.dumps(doc, indent=2) + "\n")
    return 0


COMMANDS: list[click.Command] = [report_group]
