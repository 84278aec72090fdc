"""User values inside QEMU option strings are escaped (``,`` doubled), and
QEMU itself opens exactly the path memhp checked (real QEMU, stopped with -S)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.qemu.argv import RuntimePaths, boot_args, build_argv, opt_value
from harness.qemu.config import DiskBoot, FwCfgFile, KernelBoot, VMConfig


def _cfg(**kw: object) -> VMConfig:
    return VMConfig(name="t", memory=1 << 30, slots=2, maxmem=2 << 30, numa=(), smp=1,
                    accel="tcg", **kw)  # type: ignore[arg-type]


def test_commas_are_doubled_in_every_option_value(tmp_path: Path) -> None:
    weird = tmp_path / "my,disk.img"
    argv = build_argv(_cfg(boot=DiskBoot(weird, "raw")), RuntimePaths(tmp_path / "w,d"))
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith(f"file={tmp_path}/my,,disk.img,format=raw,")
    qmp = argv[argv.index("-qmp") + 1]
    assert qmp == f"unix:{tmp_path}/w,,d/qmp.sock,server=on,wait=off"
    kernel = _cfg(boot=KernelBoot(tmp_path / "k", None, ()),
                  fw_cfg=(FwCfgFile("opt/a,b", tmp_path / "x,y"),))
    fw = build_argv(kernel, RuntimePaths(tmp_path))
    assert fw[fw.index("-fw_cfg") + 1] == f"name=opt/a,,b,file={tmp_path}/x,,y"
    assert opt_value("a,,b") == "a,,,,b"


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed")
def test_qemu_opens_the_path_with_a_comma(tmp_path: Path) -> None:
    disk = tmp_path / "my,disk.img"
    disk.write_bytes(b"\0" * 1024 * 1024)
    (tmp_path / "my").write_bytes(b"decoy")  # what an unescaped value would open
    args = boot_args(_cfg(boot=DiskBoot(disk, "raw")))
    qmp = [json.dumps({"execute": "qmp_capabilities"}), json.dumps({"execute": "query-block"}),
           json.dumps({"execute": "quit"})]
    proc = subprocess.run(
        ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-display", "none",
         "-nodefaults", *args, "-qmp", "stdio"],
        input="\n".join(qmp) + "\n", capture_output=True, text=True, timeout=60, check=False)
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    blocks = next(r["return"] for r in replies
                  if isinstance(r.get("return"), list) and r["return"])
    files = [b["inserted"]["file"] for b in blocks if "inserted" in b]
    # snapshot=on: the image is the backing file of a temporary overlay
    assert any(json.dumps(str(disk)) in f for f in files), (files, proc.stderr)
