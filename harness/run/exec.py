"""The user's ``--exec`` command or ``--script`` in the guest after the
steps, and the grading of its output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from harness.qemu.vm import VM
from harness.run.results import ExecResult


def grade_output(output: str, expect: tuple[str, ...], forbid: tuple[str, ...]) -> list[str]:
    """The output patterns a command's output misses (expect) or shows (forbid)."""
    out = [f"expected output not found: /{p}/" for p in expect
           if not re.search(p, output, re.M)]
    for p in forbid:
        m = re.search(p, output, re.M)
        if m:
            line = output[:m.start()].count("\n") + 1
            out.append(f"forbidden output /{p}/ at line {line}: "
                       f"{output.splitlines()[line - 1] if output.splitlines() else ''}")
    return out


def run_exec(vm: VM, command: str | None, script: Path | None) -> ExecResult | None:
    """Run the user's command or script in the guest after the steps."""
    if script is not None:
        remote = "/tmp/memhp-user-script"
        vm.shell.write_file(remote, script.read_bytes(), mode=0o755)
        res = vm.shell.run(["bash", remote], timeout=vm.timeouts.s("command") * 10,
                           check=False)
        return ExecResult(f"bash {shlex.quote(str(script))}", res.status,
                          res.stdout + res.stderr)
    if command is not None:
        res = vm.shell.run(["sh", "-c", command], timeout=vm.timeouts.s("command") * 10,
                           check=False)
        return ExecResult(command, res.status, res.stdout + res.stderr)
    return None
