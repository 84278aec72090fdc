"""KTAP version 1 (Documentation/dev-tools/ktap.rst, Linux 6.12): one test
per run (scenario), one subtest per step, diagnostics for mismatches and
errors; read by the kernel's own parser (``tools/testing/kunit/kunit.py
parse``, checked in tests/kernels/test_ktap_kunit.py)."""

from __future__ import annotations

from typing import Any

from harness.export import runs

# A description may hold any character but '#' and a newline (ktap.rst).
_BAD = str.maketrans({"#": "No.", "\n": " ", "\r": " "})


def _text(value: object) -> str:
    """One safe line: no '#', no newline, no terminal control character."""
    text = str(value).translate(_BAD)
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _step_lines(i: int, step: dict[str, Any]) -> list[str]:
    lines = [f"# {_text(m.get('subject'))}: {_text(m.get('what'))}: model expects "
             f"{_text(repr(m.get('expected')))}, {_text(m.get('source'))} reports "
             f"{_text(repr(m.get('observed')))}" for m in step.get("mismatches") or []]
    lines += [f"# kernel {_text(s.get('kind'))}: {_text((s.get('lines') or [''])[0])}"
              for s in step.get("splats") or [] if not s.get("expected")]
    desc = _text(step.get("action", f"step {i + 1}"))
    if step.get("error"):
        return [*lines, f"not ok {i + 1} {desc} # ERROR {_text(step['error'])}"]
    return [*lines, f"{'ok' if step.get('passed') else 'not ok'} {i + 1} {desc}"]


def _run_lines(n: int, run: dict[str, Any]) -> list[str]:
    name = _text(run.get("scenario", f"run {n}"))
    steps = [s for s in run.get("steps") or [] if isinstance(s, dict)]
    body = ["  KTAP version 1", f"  # Subtest: {name}", f"  1..{len(steps)}"]
    for i, step in enumerate(steps):
        body += [f"  {line}" for line in _step_lines(i, step)]
    accel = (run.get("accel") or {}).get("name", "?")
    head = [f"# {name}: {_text(run.get('kernel', '?'))} on QEMU "
            f"{_text(run.get('qemu_version', '?'))}, {_text(accel)}"]
    if run.get("diagnostic"):
        head.append(f"# {_text(run['diagnostic'])}")
    if run.get("skipped") is not None:
        return [*body, f"ok {n} {name} # SKIP {_text(run['skipped'])}"]
    error = run.get("error")
    if error:
        return [*body, *head, f"not ok {n} {name} # ERROR "
                f"{_text(error.get('phase', '?'))}: {_text(error.get('message', ''))}"]
    ok = run.get("result") == "pass"
    return [*body, *head, f"{'ok' if ok else 'not ok'} {n} {name}"]


def ktap(docs: list[dict[str, Any]]) -> str:
    """The KTAP text of result documents (each a run or a merged document)."""
    all_runs = [r for d in docs for r in runs(d)]
    lines = ["KTAP version 1", f"1..{len(all_runs)}"]
    for n, run in enumerate(all_runs, 1):
        lines += _run_lines(n, run)
    return "\n".join(lines) + "\n"
