"""tp-qemu's hotplug_memory backend x policy x options matrix, model vs real QEMU.

Every variant of :mod:`backend_matrix` is one DIMM hot-added into a paused
QEMU (-S, no guest): the backend object is built by memhp's own
constructors (:func:`harness.qemu.devices.backend_object`, with memhp's
mem-path choice), the model predicts acceptance with the address, or the
refusal with QEMU's words, given the host's facts (hugepage pools reserved
by :func:`harness.host.hugepages.reserved`, host NUMA nodes), and QEMU
must agree; for each accepted DIMM ``query-memdev`` must report the
options the spec asks for (QEMU's defaults where it leaves them out).

Variants of one backend share a QEMU (so placement after earlier DIMMs of
other alignments and the hugepages they hold are checked too); 1 GiB-page
variants get a QEMU each (a page each is all this host can spare).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from _qemu import binary as qemu_binary
from _qemu import log, paused_qemu
from backend_matrix import (
    BACKENDS,
    PREALLOC_SPACE_NAMES,
    Variant,
    mixed,
    overcommit,
    prealloc_space,
    variants,
)

from harness.devices.memory_device import DIMM_BACKEND
from harness.devices.pc_dimm.ops import AddDimm
from harness.errors import PlanRefused, QMPCommandError
from harness.host.hugepage_pools import HostCannot
from harness.host.hugepages import Reservation, filesystem_free, host_memory, reserved
from harness.model.backend import BackendSpec
from harness.model.predict import predict
from harness.model.spec import MachineSpec
from harness.qemu.devices import backend_object
from harness.retry import wait_for
from harness.units import GiB, MiB

_HOST = host_memory()
ALL = variants() + mixed() + overcommit(_HOST.mem_total + _HOST.swap_total)
# How many variants the matrix covers (README: "Backends"); the
# prealloc-space ones are made per run (their mount is a temp dir).
VARIANT_COUNT = len(ALL) + len(PREALLOC_SPACE_NAMES)
MEMDEV_KEYS = ("share", "prealloc", "reserve", "dump", "merge")


def _drop(path: Path) -> None:
    """Remove a refused backend's file and wait until QEMU's RCU reclaim has
    unmapped it (its room is back), as VM.hot_add does."""
    try:
        used = path.stat().st_blocks * 512
        before = filesystem_free(str(path))
    except OSError:
        return
    path.unlink()
    if used:
        wait_for(lambda: True if filesystem_free(str(path)) >= before + used else None,
                 what=f"the room of {path}", timeout=15)


def _mem_path(be: BackendSpec, res: Reservation, tmp: Path, name: str) -> str | None:
    if be.kind != "file":
        return None
    if be.mem_path:
        return str(Path(be.mem_path) / name)
    if be.hugepages:
        return str(res.new_file(be.hugepages, name))
    return str(tmp / name)


def run_group(binary: str, version: tuple[int, int], group: list[Variant],
              res: Reservation, fs_free: tuple[tuple[str, int], ...] = ()) -> list[str]:
    """Plug ``group`` into one paused QEMU; the disagreements, as text."""
    room = max(256 * GiB, 8 * max(v.size for v in group))
    spec = MachineSpec(machine="pc", ram_size=2 * GiB, slots=128, maxmem=room, numa=(),
                       qemu_version=version, host=replace(host_memory(), fs_free=fs_free))
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="memhp-backendf-") as tmpdir, \
            paused_qemu(binary, spec, prefix="memhp-backendq-", timeout=30) as qmp:
        base = predict(spec, []).layout.device_base
        accepted: list[AddDimm] = []
        files: list[Path] = []
        for i, v in enumerate(group):
            addr = None if v.addr_offset is None else base + v.addr_offset
            op = AddDimm(f"d{i}", v.size, 0, addr, v.backend)
            kind = "accepted"
            try:
                placed = predict(spec, [*accepted, op]).final.of("pc-dimm")
                want = next(d for d in placed if d.id == op.id)
                refusal = None
            except PlanRefused as exc:
                kind = exc.kind
                # the model cannot know the backend id the driver picks (b{i} here)
                refusal = exc.qemu_message.replace(DIMM_BACKEND, f"b{i}")
            path = _mem_path(v.backend, res, Path(tmpdir), f"b{i}")
            if path:
                files.append(Path(path))
            obj = backend_object(v.size, v.backend, backend_id=f"b{i}", mem_path=path)
            got: str | None = None
            try:
                qmp.execute("object-add", obj.qmp_args())
                args: dict[str, object] = {"driver": "pc-dimm", "id": op.id, "memdev": f"b{i}",
                                           "node": 0}
                if addr is not None:
                    args["addr"] = addr
                try:
                    qmp.execute("device_add", args)
                except QMPCommandError:
                    qmp.execute("object-del", {"id": f"b{i}"})
                    raise
            except QMPCommandError as exc:
                got = exc.desc
                if path:  # as the VM driver does: a refused backend leaves no file
                    _drop(Path(path))
            log({"qemu": ".".join(map(str, version)), "what": "backend", "variant": v.name,
                 "outcome": kind, "agree": got == refusal})
            if got != refusal:
                problems.append(f"{v.name}: model {'accepts' if refusal is None else refusal!r}"
                                f", QEMU {'accepts' if got is None else got!r}")
                continue
            if refusal is not None:
                continue
            accepted.append(op)
            dimm = next(d["data"] for d in qmp.execute("query-memory-devices")
                        if d["data"].get("id") == op.id)
            if dimm["addr"] != want.addr:
                problems.append(f"{v.name}: model addr {want.addr:#x}, QEMU {dimm['addr']:#x}")
            memdev = next(m for m in qmp.execute("query-memdev") if m.get("id") == f"b{i}")
            expect = {k: v.backend.effective(k) for k in MEMDEV_KEYS}
            expect |= {"size": v.size, "policy": v.backend.policy,
                       "host-nodes": list(v.backend.host_nodes)}
            seen = {k: memdev.get(k) for k in expect}
            if seen != expect:
                problems.append(f"{v.name}: query-memdev {seen} != {expect}")
        for f in files:
            f.unlink(missing_ok=True)
    return problems


def _groups() -> list[tuple[str, list[Variant]]]:
    out: list[tuple[str, list[Variant]]] = []
    for name, base in BACKENDS:
        mine = [v for v in ALL
                if v.backend.kind == base.kind and v.backend.hugepages == base.hugepages]
        mine = [v for v in mine if not v.name.startswith(("mixed-", "overcommit-"))]
        if base.hugepages == GiB:
            out += [(v.name, [v]) for v in mine]
        else:
            out.append((name, mine))
    out.append(("mixed", mixed()))
    out.append(("overcommit", [v for v in ALL if v.name.startswith("overcommit-")]))
    return out


GROUPS = _groups()


def _needs(group_name: str) -> dict[int, int]:
    """Hugepages one group needs: enough for every variant the model
    accepts when the pool is large (computed by the test below)."""
    if group_name == "mixed":
        return {GiB: 1, 2 * MiB: 2}  # the second 1 GiB DIMM finds no page: refused
    if "-1G" in group_name:
        return {GiB: 1}
    if "-2M" in group_name:
        return {2 * MiB: 160}
    return {}


@pytest.mark.parametrize("group", [g for g, _ in GROUPS])
@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_backend_matrix(group: str, version: str) -> None:
    binary = qemu_binary(version)
    members = dict(GROUPS)[group]
    needs = _needs(group)
    try:
        if not needs:
            problems = run_group(binary, _ver(version), members, Reservation())
        else:
            with reserved(needs) as res:
                problems = run_group(binary, _ver(version), members, res)
    except HostCannot as exc:
        pytest.skip(f"{group}: {exc}")
    assert not problems, "\n".join(problems)


def _ver(text: str) -> tuple[int, int]:
    a, b = text.split(".")
    return int(a), int(b)


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_prealloc_out_of_space(version: str, tmp_path: Path) -> None:
    """Preallocation on a 16 MiB tmpfs: the model's refusal (from the file
    system's free space) is QEMU's, in QEMU's words."""
    binary = qemu_binary(version)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir(mode=0o700)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M,mode=0700", "none",
                          str(mount)], capture_output=True, text=True, check=False)
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.strip()}")
    try:
        group = prealloc_space(str(mount))
        problems = run_group(binary, _ver(version), group, Reservation(),
                             fs_free=((str(mount), filesystem_free(str(mount))),))
    finally:
        for f in mount.iterdir():
            f.unlink()
        subprocess.run(["umount", str(mount)], check=False)
    assert not problems, "\n".join(problems)


def test_variant_count() -> None:
    """The matrix is what the README says it is (and every name is unique)."""
    assert len({v.name for v in ALL} | set(PREALLOC_SPACE_NAMES)) == VARIANT_COUNT
    assert sum(len(m) for _, m in GROUPS) + len(PREALLOC_SPACE_NAMES) == VARIANT_COUNT


@pytest.mark.parametrize("version", ["7.2", "10.0", "11.1"])
def test_file_in_a_missing_directory(version: str, tmp_path: Path) -> None:
    """A file backend whose directory does not exist: object-add fails in
    file_ram_open(), QEMU's words as the model predicts them from the host's
    fact (the VM driver hands a non-directory mem_path to QEMU as is)."""
    binary = qemu_binary(version)
    missing = str(tmp_path / "no-such-dir" / "guest.ram")
    be = BackendSpec("file", mem_path=missing, share=True)
    spec = MachineSpec(ram_size=2 * GiB, slots=2, maxmem=8 * GiB, numa=(),
                       qemu_version=_ver(version),
                       host=replace(host_memory(), unopenable=(missing,)))
    op = AddDimm("d0", 128 * MiB, 0, None, be)
    with pytest.raises(PlanRefused) as info:
        predict(spec, [op])
    obj = backend_object(op.size, be, backend_id="b0", mem_path=missing)
    with paused_qemu(binary, spec, prefix="memhp-backendq-") as qmp, \
            pytest.raises(QMPCommandError) as qemu_err:
        qmp.execute("object-add", obj.qmp_args())
    agree = qemu_err.value.desc == info.value.qemu_message
    log({"qemu": version, "what": "backend", "variant": "file-missing-dir",
         "outcome": info.value.kind, "agree": agree})
    assert agree, (qemu_err.value.desc, info.value.qemu_message)
    assert not Path(missing).parent.exists()
