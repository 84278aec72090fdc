"""KCIDB JSON (schema v5, as ``kcidb-io`` validates it; checked in
tests/unit/test_export.py): one checkout per kernel (its version or git
commit), one build per kernel image, and one test per run and per step,
with paths ``memhp.<machine>.<scenario>.<stepNN_kind>``.  IDs are
``memhp:`` + a hash of what they name, so the same run exports the same."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from harness.export import runs, step_name

ORIGIN = "memhp"
KCIDB_VERSION = {"major": 5, "minor": 3}


def _id(*parts: object) -> str:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]
    return f"{ORIGIN}:{digest}"


def _path_part(text: object) -> str:
    """A KCIDB path component: [a-zA-Z0-9_-]+."""
    part = re.sub(r"[^a-zA-Z0-9_-]", "_", str(text))
    return part or "_"


def _status(passed: bool | None, error: object) -> str:
    if error:
        return "ERROR"
    return "PASS" if passed else "FAIL"


def kcidb(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The KCIDB document of result documents (each a run or a merged one)."""
    checkouts: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    tests: list[dict[str, Any]] = []
    for run in (r for d in docs for r in runs(d)):
        kernel = str(run.get("kernel") or "unknown kernel")
        checkout_id = _id("checkout", kernel)
        checkouts.setdefault(checkout_id, {
            "id": checkout_id, "origin": ORIGIN, "comment": kernel[:1000],
            "misc": {"kernel": kernel}})
        build_id = _id("build", kernel)
        builds.setdefault(build_id, {
            "id": build_id, "origin": ORIGIN, "checkout_id": checkout_id,
            "architecture": "x86_64", "comment": kernel[:1000], "status": "PASS"})
        layout = run.get("layout") or {}
        machine = _path_part(layout.get("machine", "pc"))
        scenario = _path_part(run.get("scenario", "run"))
        base = f"{ORIGIN}.{machine}.{scenario}"
        run_key = (kernel, run.get("qemu_version"), scenario, run.get("timings"))
        environment = {"comment": f"QEMU {run.get('qemu_version', '?')}, "
                                  f"{(run.get('accel') or {}).get('name', '?')}"}
        error = run.get("error")
        tests.append({"id": _id("run", *run_key), "origin": ORIGIN, "build_id": build_id,
                      "path": base, "status": _status(run.get("result") == "pass", error),
                      "environment": environment,
                      "comment": (f"{error.get('phase')}: {error.get('message')}"[:1000]
                                  if error else f"scenario {run.get('scenario')}")})
        for i, step in enumerate(s for s in run.get("steps") or [] if isinstance(s, dict)):
            mismatches = step.get("mismatches") or []
            tests.append({
                "id": _id("step", *run_key, i), "origin": ORIGIN, "build_id": build_id,
                "path": f"{base}.{step_name(i, step)}",
                "status": _status(step.get("passed"), step.get("error")),
                "environment": environment,
                "comment": str(step.get("action", ""))[:1000],
                "duration": float(step.get("seconds") or 0.0),
                "misc": {"mismatches": [f"{m.get('subject')}: {m.get('what')}: expected "
                                        f"{m.get('expected')!r}, {m.get('source')} reports "
                                        f"{m.get('observed')!r}" for m in mismatches][:50]},
            })
    return {"version": dict(KCIDB_VERSION), "checkouts": list(checkouts.values()),
            "builds": list(builds.values()), "tests": tests}
