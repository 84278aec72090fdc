"""A kernel built by `memhp kernel build` with auto-online configured onlines
hot-added memory by itself, and the kconfig checker predicted exactly that.

Slow: the first run builds Debian's linux-source-6.12 (memhp's default source;
tests/kernels/test_kernel_612_build.py shares this build) with tinyconfig +
kconfigs/memhp.config + kconfigs/auto-online.config (minutes on 2 cores);
later runs take the kernel from the cache (keyed by the build's inputs).
The guest is then booted under TCG, a DIMM is hot-added and nothing in the
plan writes to sysfs: the only step is the add.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.guest.readers import Guest
from harness.kconfig import check_config
from harness.kernel import KernelBuild, build_kernel
from harness.launch import GuestSource, resolve_guest
from harness.scenario import build_scenario, default_steps
from harness.testing import run_cli
from harness.workflow import execute

# A cold 6.12 build can exceed pytest-timeout's default 900 s on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(3600)]



def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def auto_online_kernel() -> KernelBuild:
    t0 = time.monotonic()
    build = build_kernel(auto_online=True, progress=_say)
    wall = time.monotonic() - t0
    _say(f"kernel build: {'cache hit' if build.cached else 'cold'} in {wall:.1f}s "
         f"(recorded build time {build.seconds:.0f}s, phases {build.to_json()['phases']})")
    # Figures, not assertions: timing belongs to `memhp bench`/build.json.
    return build


def test_checker_predicts_auto_online(auto_online_kernel: KernelBuild) -> None:
    report = check_config(auto_online_kernel.config.read_text())
    assert report.ok, [f.to_json() for f in report.problems]
    assert report.auto_online
    # The kernel picks the zone ("online"), set by whichever option this
    # kernel's Kconfig has: the bool MEMORY_HOTPLUG_DEFAULT_ONLINE (6.1), or
    # the MHP_DEFAULT_ONLINE_TYPE_* choice (6.14, and 6.12 stable since
    # 6.12.110: "mm: add build-time option for hotplug memory default online
    # type" in Debian's linux-source-6.12 changelog).
    assert report.online_policy == "online", report.policy_source
    both = {"MEMORY_HOTPLUG_DEFAULT_ONLINE", "MHP_DEFAULT_ONLINE_TYPE_ONLINE_AUTO"}
    [unknown] = both & set(auto_online_kernel.unknown_options)
    [used] = both - {unknown}
    assert used in report.policy_source


def test_hot_added_dimm_comes_online_without_sysfs_write(
    auto_online_kernel: KernelBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every sysfs write memhp can make to a memory block or to
    # auto_online_blocks goes through these two; record any call.
    writes: list[tuple[str, tuple[Any, ...]]] = []
    for name in ("set_blocks", "set_auto_online"):
        original = getattr(Guest, name)

        def spy(self: Guest, *args: Any, _name: str = name, _orig: Any = original) -> Any:
            writes.append((_name, args))
            return _orig(self, *args)

        monkeypatch.setattr(Guest, name, spy)
    report = check_config(auto_online_kernel.config.read_text())
    # No --append memhp_default_state=...: the config alone decides.
    steps = default_steps(["d0:512M@1"], [], online=None,
                          auto=report.auto_online)
    scenario = build_scenario(
        name="kernel-auto-online", machine="pc", memory="2G,slots=2,maxmem=4G",
        numa="1G,1G", steps=steps,
        exec_cmd="cat /sys/devices/system/memory/auto_online_blocks",
    )
    assert scenario.append == () and scenario.auto_online is None
    # The model learns the online policy from the checker's reading of the config.
    scenario = dataclasses.replace(scenario, auto_online=report.online_policy)
    assert [s.action for s in scenario.steps] == ["add"]  # no online step: no sysfs write

    guest = resolve_guest(GuestSource(kernel=auto_online_kernel.bzimage))
    assert not any(w.startswith("memhp_default_state=") for w in guest.image.cmdline)
    result = execute(scenario, guest, accel="tcg", artifacts_on_failure=tmp_path / "artifacts")
    doc = result.to_json()
    _say(f"boot timings of the built kernel: {json.dumps(doc['timings'])}")
    assert result.passed, json.dumps(doc, indent=2)
    assert writes == []

    assert result.exec is not None and result.exec.output.strip() == "online"
    [step] = result.steps
    [dimm] = step.expected["dimms"]
    assert dimm["id"] == "d0" and dimm["guest_accepts"]
    blocks = {b["number"]: b for b in step.observed["blocks"]}
    model = {b["number"]: b for b in step.expected["blocks"]}  # the kernel model's zones
    assert set(dimm["blocks"]) <= set(blocks), (dimm["blocks"], sorted(blocks))
    for n in dimm["blocks"]:
        assert blocks[n]["state"] == "online", blocks[n]
        assert blocks[n]["zone"] == model[n]["zone"], (blocks[n], model[n])
        assert blocks[n]["node"] == 1, blocks[n]


def test_memhp_run_learns_the_policy_from_the_kernel_config(
        auto_online_kernel: KernelBuild) -> None:
    """The CLI reads the built kernel's IKCONFIG: no online step is planned
    and the model expects the blocks online, as the guest reports."""

    proc = run_cli(
        "run", "--kernel", str(auto_online_kernel.bzimage),
        "--memory", "2G,slots=2,maxmem=4G", "--numa", "1G,1G", "--add", "d0:512M@1",
        "--accel", "tcg", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "onlines new memory by itself (online" in proc.stderr
    doc = json.loads(proc.stdout)
    assert [s["action"].split()[0] for s in doc["steps"]] == ["add"]
    assert doc["steps"][0]["observed"]["blocks"]
    assert all(b["state"] == "online" for b in doc["steps"][0]["observed"]["blocks"])


def test_a_real_kernel_warning_fails_the_run_naming_it(auto_online_kernel: KernelBuild) -> None:
    """kconfigs/memhp.config builds LKDTM in: writing WARNING to its debugfs
    file makes the kernel itself print a WARNING with a call trace
    (drivers/misc/lkdtm/bugs.c lkdtm_WARNING).  The run, otherwise clean,
    fails and names it; a user-space "WARNING:" line in /dev/kmsg does not."""

    def run(exec_cmd: str) -> tuple[int, dict[str, Any]]:
        proc = run_cli(
            "run", "--kernel", str(auto_online_kernel.bzimage),
            "--memory", "2G,slots=2,maxmem=4G", "--numa", "1G,1G", "--add", "d0:512M@1",
            "--accel", "tcg", "--json", "--exec", exec_cmd, timeout=600)
        return proc.returncode, json.loads(proc.stdout)

    code, doc = run("echo WARNING > /sys/kernel/debug/provoke-crash/DIRECT")
    assert code == 1 and doc["result"] == "fail"
    assert all(s["passed"] for s in doc["steps"])  # the hotplug itself was fine
    [warning] = [s for s in doc["splats"] if s["kind"] == "warning"]
    assert not warning["expected"] and "lkdtm" in "\n".join(warning["lines"]).lower()
    assert "Call Trace:" in "\n".join(warning["lines"])
    code, doc = run("echo 'WARNING: CPU: 0 PID: 1 at fake.c:1 user' > /dev/kmsg")
    assert code == 0 and doc["splats"] == [], doc["splats"]


def test_virtio_mem_on_a_kernel_without_its_driver_says_so(
        auto_online_kernel: KernelBuild, tmp_path: Path) -> None:
    """memhp.config leaves CONFIG_VIRTIO_MEM out: the image builds without the
    optional virtio_mem module, the guest boots, and a virtio-mem step fails
    naming the missing driver and its option (not a wait for blocks)."""
    from harness.scenario import add_virtio_mem

    assert "CONFIG_VIRTIO_MEM=y" not in auto_online_kernel.config.read_text()
    scenario = build_scenario(
        name="no-virtio-mem-driver", machine="pc", memory="2G,slots=2,maxmem=4G",
        numa="1G,1G", steps=[add_virtio_mem("vmem0:1G@1", "128M")])
    guest = resolve_guest(GuestSource(kernel=auto_online_kernel.bzimage))
    result = execute(scenario, guest, accel="tcg", artifacts_on_failure=tmp_path / "artifacts")
    assert not result.passed
    [step] = result.steps
    assert step.error is not None and "CONFIG_VIRTIO_MEM" in step.error, step.error
    assert "virtio-mem driver" in step.error
