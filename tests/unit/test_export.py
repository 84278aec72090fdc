"""KTAP and KCIDB exports of result documents: the structure KTAP v1 asks
for (plans, nesting, no '#' in a description), and KCIDB JSON that
kcidb-io's own schema (v5) accepts; the kernel's KTAP parser reads it in
tests/kernels/test_ktap_kunit.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kcidb_io
from fakes import fake_result_doc

from harness.export.kcidb import kcidb
from harness.export.ktap import ktap
from harness.results import merge


def _docs() -> list[dict[str, Any]]:
    good = fake_result_doc("pc", "6G,slots=32,maxmem=32G", "3G,3G", ("d0:1G@1", "d1:512M@0"))
    bad = copy.deepcopy(good)
    bad["scenario"], bad["result"] = "a#b\nc\x1b[2J", "fail"
    bad["steps"][0]["passed"] = False
    bad["steps"][0]["mismatches"] = [{"what": "addr", "subject": "d0", "expected": "0x1c0000000",
                                      "observed": "0x200000000", "source": "qemu"}]
    down = copy.deepcopy(good)
    down["scenario"], down["result"], down["steps"] = "down", "fail", []
    down["error"] = {"kind": "GuestPanic", "phase": "boot", "message": "panic\nhere",
                     "booted": False}
    return [good, bad, down]


def test_ktap_nests_a_subtest_per_step_and_keeps_every_line_safe() -> None:
    text = ktap(_docs())
    lines = text.splitlines()
    assert lines[:2] == ["KTAP version 1", "1..3"]
    assert lines.count("  KTAP version 1") == 3
    results = [ln for ln in lines if re.match(r"(not )?ok \d+ ", ln)]
    assert [r.split(" #")[0] for r in results] == ["ok 1 fake", "not ok 2 aNo.b c\\x1b[2J",
                                                   "not ok 3 down"]
    assert results[2].endswith("# ERROR boot: panic here")
    assert "  # d0: addr: model expects '0x1c0000000', qemu reports '0x200000000'" in lines
    for line in lines:  # one line each, no control characters, '#' only as a separator
        assert line.isprintable()
        m = re.match(r"\s*(?:not )?ok \d+ ([^#]*)", line)
        assert m is None or "\n" not in m.group(1)
    assert ktap([merge(_docs())]) == text  # a merged document: the same runs


def test_kcidb_validates_against_kcidb_io_and_names_each_step() -> None:
    doc = kcidb(_docs())
    kcidb_io.schema.LATEST.validate(doc)  # raises if the schema refuses it
    assert doc["version"]["major"] == 5
    paths = [t["path"] for t in doc["tests"]]
    assert "memhp.pc.fake" in paths and "memhp.pc.fake.step01_online_movable" in paths
    assert "memhp.pc.a_b_c__2J" in paths  # components kept to [a-zA-Z0-9_-]
    by_path = {t["path"]: t for t in doc["tests"]}
    assert by_path["memhp.pc.down"]["status"] == "ERROR"
    assert by_path["memhp.pc.a_b_c__2J.step01_online_movable"]["status"] == "FAIL"
    assert len({t["id"] for t in doc["tests"]}) == len(doc["tests"])  # unique ids
    assert kcidb(_docs()) == doc  # the same runs export the same ids
    assert len(doc["checkouts"]) == 1 and len(doc["builds"]) == 1


def test_the_report_commands_write_both(tmp_path: Path) -> None:
    from harness.testing import run_cli

    paths = []
    for i, d in enumerate(_docs()[:2]):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(d))
        paths.append(str(p))
    out = tmp_path / "k.ktap"
    res = run_cli("report", "ktap", *paths, "-o", str(out))
    assert res.returncode == 1 and out.read_text().startswith("KTAP version 1\n1..2\n")
    res = run_cli("report", "kcidb", *paths)
    assert res.returncode == 0
    kcidb_io.schema.LATEST.validate(json.loads(res.stdout))


def test_the_plugin_writes_ktap_for_its_tests_under_xdist(tmp_path: Path) -> None:
    """A tiny suite run with --memhp-ktap (two workers): pass, fail and skip
    each become a KTAP test, read back by the same rules."""
    import subprocess
    import sys

    (tmp_path / "test_tiny.py").write_text(
        "import pytest\n"
        "def test_good():\n    pass\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no KVM here')\ndef test_skipped():\n    pass\n")
    out = tmp_path / "suite.ktap"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-n", "2", f"--memhp-ktap={out}", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_tiny.py")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[:2] == ["KTAP version 1", "1..3"]
    results = sorted(ln.split(" 1..")[0] for ln in lines if re.match(r"(not )?ok \d", ln))
    names = {re.sub(r"^(not )?ok \d+ ", "", r) for r in results}
    assert names == {"test_tiny.py::test_good", "test_tiny.py::test_bad",
                     "test_tiny.py::test_skipped # SKIP no KVM here"}, results
    assert any(r.startswith("not ok") and "test_bad" in r for r in results)
