"""The kernel's own KTAP parser (tools/testing/kunit/kunit.py parse, from
Debian's linux-source-6.12, the tree the kernel-build test unpacks) reads
what ``memhp run --ktap`` writes for a real run, and a merged document
with a failed step and a run that never booted, with no parse error and
the counts the documents hold."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

from harness.export.ktap import ktap
from harness.kernel.source import resolve_source
from kernels._cli import run_json


def _kunit_parse(path: Path) -> str:
    tree = resolve_source(None, package="linux-source-6.12").path
    kunit = tree / "tools/testing/kunit/kunit.py"
    proc = subprocess.run([sys.executable, str(kunit), "parse", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout + proc.stderr


def test_kunit_parses_a_real_run_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "run.ktap"
    proc, doc = run_json("--ktap", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _kunit_parse(path)
    steps = len(doc["steps"])
    assert "[ERROR]" not in out and "parse error" not in out.lower(), out
    assert f"Ran {steps} tests: passed: {steps}" in out, out

    failed = copy.deepcopy(doc)
    failed["scenario"], failed["result"] = "failed#one", "fail"
    failed["steps"][0]["passed"] = False
    failed["steps"][0]["mismatches"] = [{"what": "addr", "subject": "dimm0", "expected": 1,
                                         "observed": 2, "source": "qemu"}]
    down = copy.deepcopy(doc)
    down["scenario"], down["result"], down["steps"] = "down", "fail", []
    down["error"] = {"kind": "GuestPanic", "phase": "boot", "message": "panic", "booted": False}
    mixed = tmp_path / "mixed.ktap"
    mixed.write_text(ktap([{"runs": [doc, failed, down]}]))
    out = _kunit_parse(mixed)
    assert "[ERROR]" not in out, out
    ran = re.search(r"Ran (\d+) tests: passed: (\d+), failed: (\d+)", out)
    assert ran is not None, out
    assert tuple(map(int, ran.groups())) == (2 * steps + 1, 2 * steps - 1, 2), out
    json.dumps(doc)  # the document itself stays JSON
