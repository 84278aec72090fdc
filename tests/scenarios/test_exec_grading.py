"""--exec/--script are graded on their output and on what they leave behind:
expected and forbidden patterns, and a guest state the model, told what the
script did, agrees with (memhp run through its CLI, on real guests)."""

from __future__ import annotations

import json

import pytest

from harness.testing import run_cli

pytestmark = [pytest.mark.vm]

ONLINE_ALL = ("for f in /sys/devices/system/memory/memory*/state; do "
              "grep -q offline $f && echo online_movable > $f; done; "
              "echo 'selftest: ok'; echo 'test: unexpected fail' >&2")


def run(*args: str) -> tuple[int, dict]:
    proc = run_cli("run", "--json", "--numa", "3G,3G",
                   "--add", "d0:256M@1", "--online", "none", *args, timeout=600)
    return proc.returncode, json.loads(proc.stdout)


def test_script_that_onlines_blocks_is_followed_and_graded() -> None:
    code, doc = run("--exec", ONLINE_ALL, "--expect-output", "selftest: ok")
    assert code == 0, doc
    ex = doc["exec"]
    assert ex["passed"] and ex["findings"] == [] and ex["mismatches"] == []
    assert len(ex["changes"]) == 2 and all("onlined in Movable" in c for c in ex["changes"])


def test_forbidden_and_missing_output_fail_the_run() -> None:
    code, doc = run("--exec", ONLINE_ALL, "--forbid-output", "unexpected fail",
                    "--expect-output", "all tests passed")
    assert code == 1
    findings = doc["exec"]["findings"]
    assert any("unexpected fail" in f for f in findings)
    assert any("all tests passed" in f for f in findings)
    assert doc["result"] == "fail" and all(s["passed"] for s in doc["steps"])
