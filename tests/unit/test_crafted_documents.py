"""Crafted result documents (as merged shards from other CI jobs could be)
through every renderer: Markdown, SVG, the rich terminal report and the
kconfig report.  The output is parsed, and must hold no live markup: no
HTML, no foreign link, no extra table cell, no SVG element or attribute of
the document's making, no rich markup error.

The documents' "observed" halves are fakes (see fakes.py): pure renderer input.
"""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fakes import fake_result_doc
from markdown_it import MarkdownIt

from harness.cli import main
from harness.memmap import render_svg
from harness.report import print_run_report, print_step
from harness.results import load_result, markdown, merge, validate_result
from harness.run.results import ExecResult, RunResult, StepResult
from harness.verify import Mismatch

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "`` ` `x` ```",
    "a | b | c",
    "[/]",
    "[bold red]x[/bold red]",
    "[link=javascript:alert(1)]click[/link]",
    "](javascript:alert(1))",
    "&amp; &lt; \"quoted\" 'single'",
    "line1\nline2",
    "<!-- comment -->",
    "<![CDATA[ x ]]>",
]


def crafted_doc(text: str) -> dict[str, Any]:
    """A schema-valid document with ``text`` in every string field."""
    doc = fake_result_doc("pc", "6G,slots=32,maxmem=32G", "3G,3G", ("dimm0:1G@1", "d1:512M@0"))
    doc.update(scenario=text, kernel=text, qemu_version=text, artifacts=text,
               map="javascript:alert(1)//x.svg" if "java" in text else text,
               accel={"name": text, "reason": text},
               error={"kind": text, "phase": text, "message": text, "booted": True},
               exec={"command": text, "status": 1, "output": text}, timings={"total_s": 1.0})
    doc["layout"]["machine"] = text
    doc["layout"]["why"] = text
    step = doc["steps"][-1]
    step["action"] = text
    step["error"] = text
    step["expected"]["dimms"][0]["id"] = text
    step["expected"]["dimms"][0]["reason"] = text
    for b in step["observed"]["blocks"][:2]:
        b["zone"] = text
        b["state"] = text
    step["mismatches"] = [{"what": text, "subject": text, "expected": text, "observed": text,
                           "source": text}]
    validate_result(doc, "crafted")  # a valid document: only its strings are hostile
    return doc


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_has_no_live_markup(text: str) -> None:
    doc = merge([crafted_doc(text), crafted_doc(text)])
    md = markdown(doc)
    parser = MarkdownIt("commonmark").enable("table")
    tokens = parser.parse(md)

    def walk(toks: list[Any]) -> list[Any]:
        out = []
        for t in toks:
            out.append(t)
            out.extend(walk(t.children or []))
        return out

    every = walk(tokens)
    assert not [t for t in every if t.type in ("html_inline", "html_block")]
    links = [t.attrGet("href") for t in every if t.type == "link_open"]
    assert all(h and h.endswith(".svg") and ":" not in h for h in links), links
    rows = [t for t in every if t.type == "tr_open"]
    assert rows
    for row in rows:
        cells = every[every.index(row) + 1:]
        n = 0
        for t in cells:
            if t.type == "tr_close":
                break
            n += t.type in ("td_open", "th_open")
        assert n == 5
    tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append((tag, attrs))

    Collect().feed(parser.render(md))
    allowed = {"h3", "p", "code", "table", "thead", "tbody", "tr", "th", "td", "ul", "li",
               "strong", "a", "br"}
    assert {t for t, _ in tags} <= allowed, {t for t, _ in tags}
    for tag, attrs in tags:
        for name, value in attrs:
            assert tag == "a" and name == "href" and value and value.endswith(".svg") \
                and ":" not in value, (tag, name, value)


@pytest.mark.parametrize("text", HOSTILE)
def test_svg_holds_only_its_own_elements(text: str) -> None:
    svg = render_svg(crafted_doc(text))
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    tags = {el.tag.removeprefix(ns) for el in root.iter()}
    assert tags <= {"svg", "rect", "text", "g", "title", "path"}, tags
    for el in root.iter():
        assert not [a for a in el.attrib if a.lower().startswith("on")]
    texts = "".join(el.text or "" for el in root.iter())
    assert text.split("\n")[0] in texts  # shown, as text


def _run_result(text: str) -> RunResult:
    step = StepResult(0, text, {"blocks": [{"number": 56, "state": text, "node": 1,
                                             "zone": text}], "nodes": [], "block_size": 1 << 27},
                      {"blocks": [{"number": 56, "state": "online", "node": 1, "zone": text}]},
                      [Mismatch(text, text, text, text, text)], 0.5, {text: 0.1}, text)
    return RunResult(scenario=text, accel=text, accel_reason=text, qemu_version=text,
                     kernel=text, steps=[step], exec=ExecResult(text, -1, text),
                     error={"kind": text, "phase": text, "message": text}, artifacts=text)


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_report_prints_text_verbatim(text: str) -> None:
    result = _run_result(text)
    buf = io.StringIO()
    print_step(result.steps[0], file=buf)
    print_run_report(result, file=buf)
    out = buf.getvalue()
    first = text.split("\n")[0]
    assert first in out.replace("\n", "") or first.replace(" ", "") in out.replace(" ", "")
    assert f"exec {first}" in out
    assert "FAIL" in out


def test_kconfig_report_prints_paths_and_values_verbatim(tmp_path: Path, capsys) -> None:
    odd = tmp_path / "[bold]x[_] [red].config"
    odd.write_text('CONFIG_MEMORY_HOTPLUG="[/]"\nCONFIG_ACPI_HOTPLUG_MEMORY="[red]y"\n')
    assert main(["kconfig", "check", str(odd)]) == 1
    out = capsys.readouterr().out
    assert str(odd) in out
    assert 'CONFIG_MEMORY_HOTPLUG=[/]' in out
    assert 'CONFIG_ACPI_HOTPLUG_MEMORY=[red]y' in out


def test_report_cli_renders_a_crafted_document(tmp_path: Path, capsys) -> None:
    doc = crafted_doc("<script>alert(1)</script> | [/] `x`")
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(doc))
    assert load_result(path)["scenario"] == doc["scenario"]
    assert main(["report", "markdown", str(path), "--no-summary"]) == 0
    out = capsys.readouterr().out
    assert "memhp `` <script>alert(1)</script> \\| [/] `x` `` — PASS" in out  # a code span
    svg = tmp_path / "m.svg"
    assert main(["report", "map", str(path), "-o", str(svg)]) == 0
    ET.fromstring(svg.read_text())


def test_an_absurd_map_is_refused_with_the_reason(tmp_path: Path, capsys) -> None:
    """A document claiming 70000 blocks: refused (exit 2) instead of a huge SVG."""
    doc = copy.deepcopy(fake_result_doc("pc", "6G,slots=32,maxmem=32G", "3G,3G",
                                        ("dimm0:1G@1",)))
    doc["steps"][-1]["expected"]["dimms"][0]["blocks"] = list(range(70000))
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc))
    svg = tmp_path / "m.svg"
    assert main(["report", "map", str(path), "-o", str(svg)]) == 2
    err = capsys.readouterr().err
    assert "70000 memory blocks" in err and "16384 blocks" in err and "fix:" in err
    assert not svg.exists()


@pytest.mark.parametrize(("where", "value"), [
    ("step-splats", [{"kind": 5, "lines": 7}]),
    ("run-splats", [{"kind": None, "title": [], "lines": "x"}]),
    ("exec-findings", 5),
    ("exec-mismatches", [{"a": 1}]),
    ("virtio_mem", 5),
    ("virtio_mem-item", [{"id": "v", "addr": "0x1", "max_size": 1, "size": 1}]),
    ("policy", ["not", "a", "table"]),
])
def test_fields_the_reports_read_are_in_the_schema(tmp_path: Path, where: str,
                                                   value: object, capsys) -> None:
    """Issue 26: report markdown/map crashed on splats, exec findings and
    mismatches and expected.virtio_mem the schema did not check; now each is
    typed, and a document with a wrong one is refused (exit 2), never a
    traceback."""
    doc = crafted_doc("x")
    step = doc["steps"][-1]
    if where == "step-splats":
        step["splats"] = value
    elif where == "run-splats":
        doc["splats"] = value
    elif where.startswith("exec-"):
        doc["exec"][where.removeprefix("exec-")] = value
    elif where.startswith("virtio_mem"):
        step["expected"]["virtio_mem"] = value
    else:
        doc["policy"] = value
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    for argv in (["report", "markdown", str(path), "--no-summary"],
                 ["report", "map", str(path), "-o", str(tmp_path / "m.svg")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not a memhp result document" in err and "Traceback" not in err, err
