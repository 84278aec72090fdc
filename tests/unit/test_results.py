"""Result documents: Markdown summaries, shard merging, `memhp report` CLI."""

from __future__ import annotations

import json
from pathlib import Path

from fakes import fake_result_doc

from harness.cli import main
from harness.results import markdown, merge


def _docs() -> tuple[dict, dict]:
    good = fake_result_doc("pc", "2G,slots=2,maxmem=4G", "1G,1G", ("a:512M@1",))
    bad = fake_result_doc("q35", "2G,slots=2,maxmem=4G", "1G,1G", ("b:128M@0",))
    bad["scenario"], bad["result"] = "broken", "fail"
    bad["steps"][-1]["passed"] = False
    bad["steps"][-1]["mismatches"] = [{"what": "zone", "subject": "memory32",
                                       "expected": "Movable", "observed": "Normal",
                                       "source": "sysfs"}]
    return good, bad


def test_merge_keeps_every_run_and_fails_if_any_failed() -> None:
    good, bad = _docs()
    both = merge([good, bad])
    assert [r["scenario"] for r in both["runs"]] == ["fake", "broken"]
    assert both["result"] == "fail"
    assert merge([good])["result"] == "pass"
    assert merge([])["result"] == "fail"  # no runs is not a pass
    assert len(merge([both, good])["runs"]) == 3  # merged documents merge again


def test_markdown_names_each_run_and_each_mismatch() -> None:
    good, bad = _docs()
    text = markdown(merge([good, bad]))
    assert "`fake` — PASS" in text and "`broken` — FAIL" in text
    assert "**FAIL**" in text
    assert "`memory32` `zone`: model `Movable`, `sysfs` `Normal`" in text
    first_block = good["steps"][-1]["expected"]["dimms"][0]["blocks"][0]
    assert f"memory{first_block}" in text


def test_report_cli_merge_markdown_and_map(tmp_path: Path, monkeypatch, capsys) -> None:
    good, bad = _docs()
    paths = []
    for name, doc in (("g", good), ("b", bad)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(doc))
        paths.append(str(p))
    out = tmp_path / "all.json"
    assert main(["report", "merge", *paths, "-o", str(out)]) == 1
    assert main(["report", "merge", paths[0], "-o", str(out)]) == 0
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["report", "markdown", paths[1]]) == 0
    assert "`broken` — FAIL" in summary.read_text()
    svg = tmp_path / "m.svg"
    assert main(["report", "map", paths[0], "-o", str(svg)]) == 0
    assert svg.read_text().startswith("<svg")
    assert main(["report", "map", paths[0], "-o", str(svg), "--step", "9"]) == 2
    capsys.readouterr()


def test_report_cli_refuses_what_is_not_a_result(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert main(["report", "markdown", str(junk)]) == 2
    junk.write_text(json.dumps({"schema": 99}))
    assert main(["report", "merge", str(junk)]) == 2
    assert "schema 99" in capsys.readouterr().err
    assert main(["report", "markdown", str(tmp_path / "missing.json")]) == 2
