"""The kernel's own memory-hotplug selftest, in full, as a memhp scenario.

``tools/testing/selftests/memory-hotplug/mem-on-off-test.sh`` onlines every
offline block, offlines some, and then -- with the
``memory-notifier-error-inject`` module and debugfs -- checks that
injected notifier errors make online and offline fail.  It reports
failures as "unexpected ..." lines and skips whole parts with "skip" or
"SKIPPED" lines, and still exits 0; so memhp grades the lines as well as
the status, and then checks the guest against the model.

The script comes from Debian's ``linux-source-X.Y`` package, the same tree
``memhp kernel build`` unpacks into the cache (nothing is fetched when that
tree is there); or the user passes their own with ``--script``.  The
default guest ships the error-injection modules with a ``modules.dep`` for
busybox ``modprobe`` and mounts debugfs; the script calls
``/sbin/modprobe``, which the guest gets just before the script runs (not
at boot: the kernel's own ``request_module`` calls would then spend boot
time in it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.errors import UsageError

SCRIPT_IN_TREE = "tools/testing/selftests/memory-hotplug/mem-on-off-test.sh"
# What the script prints when something failed or a part did not run.
FORBIDDEN = (r"unexpected (fail|success|offline|online)", r"skip (all|extra) tests",
             r"SKIPPED", r"FAILED")
# Offlining boot memory that holds unmovable pages fails (the script
# tolerates that in its first part); the kernel dumps the culprit page.
EXPECTED_SPLATS = (r"page dumped because: unmovable page",)

PREPARE = """\
# memhp: what mem-on-off-test.sh needs, in the default guest
[ -e /sbin/modprobe ] || ln -s /bin/busybox /sbin/modprobe
grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug
"""


def script_from_source(progress: Callable[[str], None] | None = None) -> Path:
    """The selftest script of Debian's linux-source tree (cached; fetched and
    unpacked on first use, shared with ``memhp kernel build``)."""
    from harness.kernel.source import resolve_source

    tree = resolve_source(None, progress).path
    script = tree / SCRIPT_IN_TREE
    if not script.is_file():
        raise UsageError(f"{script} is missing from the kernel source tree",
                         fix="pass the script with --script")
    return script


def wrapped_script(script: Path, out: Path, ratio: int = 2) -> Path:
    """``script`` behind the guest preparation, as one bash script at ``out``."""
    from harness.files import read_small_file

    raw = read_small_file(script, "--script", "give the selftest's shell script",
                          max_bytes=1 << 20)
    try:
        body = raw.decode()
    except UnicodeDecodeError as exc:
        raise UsageError(f"--script {str(script)!r} is not UTF-8 text", value=script,
                         fix="give the selftest's shell script") from exc
    if body.startswith("#!"):
        body = body.split("\n", 1)[1]
    out.write_text("#!/bin/bash\n" + PREPARE + f"set -- -r {int(ratio)}\n" + body)
    return out


def scenario_toml(script: Path, ratio: int = 2) -> str:
    """The selftest as a scenario file ``memhp run --scenario`` takes."""
    import json

    wrapped = wrapped_script(script, script.parent / f".memhp-{script.stem}-wrapped.sh", ratio)
    lines = [
        'name = "mem-on-off-test"',
        "[machine]",
        'type = "pc"', 'memory = "4G,slots=4,maxmem=8G"', 'numa = "2G,2G"',
        "[guest]",
        'append = ["memhp_default_state=offline"]',
        f"expect_splats = {json.dumps(list(EXPECTED_SPLATS))}",
        "[[step]]", 'add = "sa:512M@0"',
        "[[step]]", 'add = "sb:512M@1"',
    ]
    top = [f"script = {json.dumps(str(wrapped))}",
           f"exec_forbid = {json.dumps(list(FORBIDDEN))}"]
    return "\n".join(top + lines) + "\n"
