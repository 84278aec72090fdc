"""``memhp bench``: figures for turnaround time, side by side.

Measured in one run, ``--repeat`` times each (min / median / max):

1. raw baseline: QEMU started directly (no harness: no QMP connection, no
   SSH) with the very argv memhp would use, until the ready marker appears
   on the serial console;
2. memhp boot: ``VM.start()`` to the first successful SSH command;
3. hot-add latency: ``device_add`` returned -> all new ``memoryN`` visible;
4. online latency: one block, and a whole 1 GiB DIMM in one round trip;
5. the seed session (``memhp run``) end to end, as a subprocess, with
   ``--cold-boot`` and warm (from a saved state, :mod:`harness.warm`);
6. warm start: ``VM.start()`` from the saved state to the first SSH
   command (clock and entropy refreshed), of which QEMU's loading of the
   state (``restore``); once: the save and the state's size on disk;
7. image build, cold (empty cache dir, downloads included) and warm;
8. optionally (``--suite``) the scenario suite at ``-n 2``, cold
   (``--memhp-cold-boot=true``) and warm.

Ratios (memhp boot / raw boot, warm start / raw boot, suite speed-up) are
what compare across machines; absolute TCG times depend on the host.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.launch import GuestSource, launch_vm, resolve_guest
from harness.model.spec import SEED_MEMORY, SEED_NUMA
from harness.qemu.argv import RuntimePaths
from harness.run.observe import wait_blocks
from harness.scenario import Scenario, add, build_scenario


@dataclass
class Series:
    name: str
    samples: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        s = sorted(self.samples)
        if not s:
            return {"n": 0}
        return {"n": len(s), "min": s[0], "median": statistics.median(s), "max": s[-1]}


def _seed(append: tuple[str, ...] = (), machine: str = "pc") -> Scenario:
    return build_scenario(name="bench", machine=machine, memory=SEED_MEMORY,
                          numa=SEED_NUMA, steps=[add("dimm0:1G@1"), add("dimm1:1G@0")],
                          append=append)


def boot_profile(accel: str, append: tuple[str, ...] = (), top: int = 12) -> dict[str, Any]:
    """Boot the seed machine once with ``initcall_debug``: where boot time goes."""
    from harness.guest.parsers import parse_boot_profile

    guest = resolve_guest(GuestSource())
    with launch_vm(_seed(("initcall_debug", *append)), guest, accel=accel,
                   name="profile") as (vm, _):
        dmesg = vm.ssh(["dmesg"]).stdout
        wall = vm.timings
    prof = parse_boot_profile(dmesg, guest.image.ready_marker)
    return {"append": list(append), "wall_boot_to_ready_s": wall.get("boot_to_ready_s"),
            "wall_boot_to_ssh_s": wall.get("boot_to_ssh_s"),
            "kernel_run_init_s": prof.run_init_s, "kernel_ready_s": prof.ready_s,
            "initcalls_total_s": prof.initcalls_total_s,
            "init_marks": [{"mark": n, "kernel_s": t} for n, t in prof.marks],
            "slowest_initcalls": [{"initcall": n, "s": s} for n, s in prof.initcalls[:top]]}


def render_profile(data: dict[str, Any]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buf = StringIO()
    console = Console(file=buf, width=110)
    console.print(f"boot profile (initcall_debug{' ' if data['append'] else ''}"
                  f"{' '.join(data['append'])}): wall boot-to-ready "
                  f"{data['wall_boot_to_ready_s']:.2f}s, boot-to-SSH "
                  f"{data['wall_boot_to_ssh_s']:.2f}s; kernel clock: /init at "
                  f"{data['kernel_run_init_s']}s, ready marker at {data['kernel_ready_s']}s; "
                  f"all initcalls {data['initcalls_total_s']:.2f}s")
    if data["init_marks"]:
        console.print("/init phases (kernel clock): " + ", ".join(
            f"{m['mark']} {m['kernel_s']:.3f}" for m in data["init_marks"]))
    table = Table(title="slowest initcalls", title_justify="left")
    table.add_column("initcall")
    table.add_column("ms", justify="right")
    for row in data["slowest_initcalls"]:
        table.add_row(row["initcall"], f"{row['s'] * 1000:.1f}")
    console.print(table)
    return buf.getvalue()


def raw_boot(vm_argv: list[str], serial: Path, marker: str, timeout: float = 120.0) -> float:
    """Seconds from exec of QEMU to the ready marker on the console."""
    start = time.monotonic()
    proc = subprocess.Popen(vm_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - start < timeout:
            if serial.exists() and marker in serial.read_text(errors="replace"):
                return time.monotonic() - start
            if proc.poll() is not None:
                raise RuntimeError(f"raw QEMU exited {proc.returncode}")
            time.sleep(0.005)
        raise RuntimeError("raw boot timed out")
    finally:
        proc.kill()
        proc.wait()


def measure(repeat: int, accel: str, suite: bool, cold_build: bool,
            progress: Callable[[str], None], machine: str = "pc") -> dict[str, Any]:
    """``machine``: the seed's (virt: the arm64 guest on qemu-system-aarch64)."""
    from harness.machines import machine as board

    results: dict[str, Series] = {}

    def rec(name: str, value: float) -> None:
        results.setdefault(name, Series(name)).samples.append(value)

    t0 = time.monotonic()
    guest = resolve_guest(GuestSource(arch=board(machine).debian_arch))
    rec("image build, warm (s)", time.monotonic() - t0)
    scenario = _seed(machine=machine)
    progress("saved state for warm starts (booted and saved unless cached)")
    from harness.warm import WarmStarts

    states = WarmStarts()
    with launch_vm(scenario, guest, accel=accel, name="bench", warm=states) as (vm, _):
        entry = states.lookup(vm.start_info["state"]) if vm.start_info.get("state") else None
        if "save_s" in vm.timings:
            rec("save the VM state (stop, migrate to zstd, resume) (s)", vm.timings["save_s"])
    if entry is not None:
        rec("saved state on disk (MiB)", entry.size / 2**20)
        rec("migration stream before compression (MiB)", entry.meta["stream_bytes"] / 2**20)
    for i in range(repeat):
        progress(f"round {i + 1}/{repeat}: memhp boot + hotplug")
        with launch_vm(scenario, guest, accel=accel, name="bench") as (vm, choice):
            rec("memhp cold boot to first SSH command (s)", vm.timings["boot_to_ssh_s"])
            accel_used = choice
            argv_for_raw = list(vm.argv)
            bs = vm.guest.snapshot().sysfs.block_size
            t = time.monotonic()
            vm.ssh(["true"])
            rec("SSH command round trip (s)", time.monotonic() - t)
            pred = scenario.predict(block_size=bs).final.of("pc-dimm")[0]
            t = time.monotonic()
            vm.hot_add("dimm0", 1 << 30, 1)
            t_added = time.monotonic()
            wait_blocks(vm, list(pred.blocks))
            rec("hot-add: device_add return -> blocks visible (s)", time.monotonic() - t_added)
            t = time.monotonic()
            vm.guest.online_blocks(list(pred.blocks[:1]), "online_movable")
            rec("online 1 block (s)", time.monotonic() - t)
            whole = scenario.predict(block_size=bs).final.of("pc-dimm")[1]
            vm.hot_add("dimm1", whole.size, 0)
            wait_blocks(vm, list(whole.blocks))
            t = time.monotonic()
            vm.guest.online_blocks(list(whole.blocks), "online_movable")
            rec(f"online a whole 1 GiB DIMM ({len(whole.blocks)} blocks, one round trip) (s)",
                time.monotonic() - t)
        progress(f"round {i + 1}/{repeat}: raw QEMU boot")
        with tempfile.TemporaryDirectory(prefix="memhp-bench-") as tmp:
            paths = RuntimePaths(Path(tmp))
            raw_argv = _rebase_argv(argv_for_raw, vm_workdir_of(argv_for_raw), paths)
            rec("raw QEMU boot to ready marker (s)",
                raw_boot(raw_argv, paths.serial_log, guest.image.ready_marker))
        progress(f"round {i + 1}/{repeat}: memhp warm start")
        with launch_vm(scenario, guest, accel=accel, name="bench", warm=states) as (vm, _):
            if vm.start_info.get("warm"):
                rec("memhp warm start to first SSH command (s)", vm.timings["boot_to_ssh_s"])
                rec("  of which QEMU loads the state (s)", vm.timings["restore_s"])
            else:
                progress(f"not warm: {vm.start_info.get('reason')}")
        for mode, flags in (("cold", ["--cold-boot"]), ("warm", [])):
            progress(f"round {i + 1}/{repeat}: memhp run (seed) end to end, {mode}")
            t = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "harness", "run", "--accel", accel,
                                   "--machine", machine, *flags],
                                  capture_output=True, text=True, check=False)
            rec(f"memhp run seed session end to end, {mode} (s)", time.monotonic() - t)
            if proc.returncode != 0:
                progress(f"memhp run failed ({proc.returncode}): {proc.stdout[-500:]}")
    if cold_build:
        progress("cold image build (empty cache)")
        with tempfile.TemporaryDirectory(prefix="memhp-bench-cache-") as cache:
            env = dict(os.environ, MEMHP_CACHE_DIR=cache)
            t = time.monotonic()
            subprocess.run([sys.executable, "-m", "harness", "image", "build"], env=env,
                           capture_output=True, check=True)
            rec("image build, cold (s)", time.monotonic() - t)
    suite_runs: dict[str, str] = {}
    if suite:
        for mode in ("cold", "warm"):
            progress(f"scenario suite -n 2, {mode}")
            t = time.monotonic()
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2",
                                  "tests/scenarios", "-p", "no:cacheprovider",
                                  f"--memhp-cold-boot={'true' if mode == 'cold' else 'false'}"],
                                 capture_output=True, text=True, check=False)
            rec(f"scenario suite -n 2, {mode} (s)", time.monotonic() - t)
            suite_runs[mode] = suite_outcome(run.returncode, run.stdout)
            progress(f"scenario suite -n 2, {mode}: {suite_runs[mode]}")
    out: dict[str, Any] = {name: s.summary() for name, s in results.items()}
    ratios: dict[str, float] = {}
    mb = results.get("memhp cold boot to first SSH command (s)")
    rb = results.get("raw QEMU boot to ready marker (s)")
    if mb and rb and mb.samples and rb.samples:
        ratios["memhp boot / raw boot (median)"] = (
            statistics.median(mb.samples) / statistics.median(rb.samples))
    ws = results.get("memhp warm start to first SSH command (s)")
    if ws and rb and ws.samples and rb.samples:
        ratios["warm start / raw boot (median; target <= 0.3)"] = (
            statistics.median(ws.samples) / statistics.median(rb.samples))
    sw = results.get("memhp run seed session end to end, warm (s)")
    sc = results.get("memhp run seed session end to end, cold (s)")
    if sw and rb and sw.samples and rb.samples:
        ratios["seed session warm / raw boot (median; target < 1)"] = (
            statistics.median(sw.samples) / statistics.median(rb.samples))
    if sw and sc and sw.samples and sc.samples:
        ratios["seed session cold / warm (median)"] = (
            statistics.median(sc.samples) / statistics.median(sw.samples))
    s1 = results.get("scenario suite -n 2, cold (s)")
    s2 = results.get("scenario suite -n 2, warm (s)")
    if s1 and s2:
        ratios["suite -n 2 speed-up warm vs cold (target >= 2)"] = (
            s1.samples[0] / s2.samples[0])
    return {"accel": {"name": accel_used.accel, "reason": accel_used.reason},
            "repeat": repeat, "figures": out, "ratios": ratios, "suite_runs": suite_runs,
            "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
            "guest": {"machine": machine, "kernel": guest.image.kernel_version}}


def suite_outcome(returncode: int, output: str) -> str:
    """What a timed suite run did, in one line: pytest's exit status, its
    summary line and how many boots hung and were retried (a timing means
    little without it)."""
    lines = [ln.strip("= ") for ln in output.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and (
        "passed" in ln or "failed" in ln or "error" in ln)), "no pytest summary line")
    retries = output.count("MemhpBootRetry:")
    return f"exit {returncode}: {summary}; {retries} hung boot(s) retried"


def vm_workdir_of(argv: list[str]) -> Path:
    sock = next(a for a in argv if a.startswith("unix:"))
    return Path(sock.removeprefix("unix:").split(",")[0]).parent


def _rebase_argv(argv: list[str], old: Path, paths: RuntimePaths) -> list[str]:
    """The VM's argv with its (deleted) work dir swapped for a fresh one; the
    fw_cfg key files are regenerated so the guest boots the same way."""
    from harness.image.keys import write_guest_keys

    keys = write_guest_keys(paths.workdir / "keys")
    out = []
    for a in argv:
        a = a.replace(str(old / "keys" / "host_key"), str(keys.host_key_path))
        a = a.replace(str(old / "keys" / "authorized_keys"), str(keys.authorized_keys_path))
        out.append(a.replace(str(old), str(paths.workdir)))
    return out


def render(data: dict[str, Any]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    guest = data.get("guest", {})
    on = f"{guest['machine']}, {guest['kernel']}, " if guest else ""
    table = Table(title=f"memhp bench ({on}{data['accel']['name'].upper()}, "
                        f"{data['repeat']} rounds)", title_justify="left")
    for col in ("figure", "n", "min", "median", "max"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    for name, s in data["figures"].items():
        if s.get("n"):
            table.add_row(name, str(s["n"]), f"{s['min']:.3f}", f"{s['median']:.3f}",
                          f"{s['max']:.3f}")
    buf = StringIO()
    console = Console(file=buf, width=110)
    console.print(table)
    for name, value in data["ratios"].items():
        console.print(f"{name}: {value:.2f}")
    for mode, outcome in data.get("suite_runs", {}).items():
        console.print(f"scenario suite, {mode}: {outcome}", markup=False, highlight=False)
    console.print(f"accelerator: {data['accel']['reason']}")
    return buf.getvalue()


