"""What memhp could leave behind: QEMU processes it started and work dirs.

Used by the test suite to prove that nothing leaks (see tests/conftest.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def memhp_qemu_pids(under: Path | None = None) -> set[int]:
    """PIDs of running QEMUs started by memhp (named ``-name memhp-...``),
    optionally only those whose work dir is below ``under``."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            status = (d / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        ours = any(a.startswith(b"memhp-") for a in argv) and b"-name" in argv
        if ours and (under is None or any(str(under).encode() in a for a in argv)):
            out.add(int(d.name))
    return out


def memhp_work_dirs() -> set[Path]:
    """memhp's private VM directories in the temp and runtime dirs."""
    roots = {Path(tempfile.gettempdir())}
    if os.environ.get("XDG_RUNTIME_DIR"):
        roots.add(Path(os.environ["XDG_RUNTIME_DIR"]))
    out: set[Path] = set()
    for root in roots:
        try:
            out |= {p for p in root.iterdir() if p.name.startswith("memhp-") and p.is_dir()}
        except OSError:
            continue
    return out
