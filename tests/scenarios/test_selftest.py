"""The kernel's own memory-hotplug selftest, both halves, in the default
guest (`memhp selftest`): the error-injection half needs the
memory-notifier-error-inject module, modprobe and debugfs, which the image
provides; graded on the script's lines, status, splats and the model."""

from __future__ import annotations

import json

import pytest

from harness.testing import run_cli

pytestmark = [pytest.mark.vm]


@pytest.mark.long_running
def test_mem_on_off_test_runs_in_full_and_passes() -> None:
    proc = run_cli("selftest", "--json", timeout=1800)
    assert proc.stdout, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    ex = doc["exec"]
    assert "Test with memory notifier error injection" in ex["output"]
    assert "skip" not in ex["output"].lower(), ex["output"]
    assert ex["status"] == 0 and ex["findings"] == [] and ex["mismatches"] == [], ex
    assert doc["result"] == "pass", (doc.get("error"), proc.stderr[-2000:])
    # the DIMMs it found offline, it onlined: the model followed
    assert ex["changes"] and all("onlined in" in c for c in ex["changes"])
