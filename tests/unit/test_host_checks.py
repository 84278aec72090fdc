"""harness.host.checks on constructed pool states (the real ones are read
in tests/scenarios/test_backends.py)."""

from __future__ import annotations

from pathlib import Path

from harness.host.checks import HostView, check_file, check_memdev, check_plug, check_unplug
from harness.host.hugepage_pools import PoolState
from harness.model.backend import BackendSpec
from harness.units import MiB

M2 = 2 * MiB


def view(nr: int, free: int, resv: int, node_free: int | None = None) -> HostView:
    nodes = ((0, nr, free if node_free is None else node_free),)
    return HostView({M2: PoolState(M2, nr, free, resv, 0, nodes)})


def test_reserve_without_prealloc_moves_rsvd_only() -> None:
    be = BackendSpec("memfd", hugepages=M2)
    assert check_plug(view(100, 100, 0), view(100, 100, 64), be, 64, "d") == []
    bad = check_plug(view(100, 100, 0), view(100, 98, 62), be, 64, "d")
    assert {m.what for m in bad} == {"hugepages reserved (HugePages_Rsvd)",
                                     "hugepages faulted in (free)"}


def test_prealloc_moves_free_on_the_bound_node() -> None:
    be = BackendSpec("memfd", hugepages=M2, prealloc=True, host_nodes=(0,), policy="bind")
    assert check_plug(view(100, 100, 0), view(100, 36, 0), be, 64, "d") == []
    bad = check_plug(view(100, 100, 0), view(100, 36, 0, node_free=100), be, 64, "d")
    assert [m.what for m in bad] == ["hugepages free on host node 0"]


def test_noreserve_takes_nothing_and_nr_must_not_move() -> None:
    be = BackendSpec("memfd", hugepages=M2, reserve=False)
    assert check_plug(view(100, 100, 0), view(100, 100, 0), be, 0, "d") == []
    assert "nr_hugepages" in [m.what for m in check_plug(view(100, 100, 0), view(90, 90, 0),
                                                         be, 0, "d")]


def test_unplug_returns_pages_except_what_a_shared_file_keeps() -> None:
    memfd = BackendSpec("memfd", hugepages=M2)
    assert check_unplug(view(100, 90, 54), view(100, 100, 0), memfd, 64, "d") == []
    kept = BackendSpec("file", hugepages=M2, share=True)
    assert check_unplug(view(100, 90, 54), view(100, 90, 54), kept, 64, "d") == []
    punched = BackendSpec("file", hugepages=M2, share=True, discard_data=True)
    # 10 pages were in the file: they come back, 54 untouched reservations stay
    assert check_unplug(view(100, 90, 54), view(100, 100, 54), punched, 64, "d", 10) == []
    assert check_unplug(view(100, 90, 54), view(100, 90, 54), punched, 64, "d", 10)


def test_memdev_and_file(tmp_path: Path) -> None:
    be = BackendSpec("file", share=True, discard_data=True)
    memdev = {"id": "b0", "size": 4 * MiB, "share": True, "prealloc": False, "reserve": True,
              "dump": True, "merge": True, "policy": "default", "host-nodes": []}
    assert check_memdev([memdev], "b0", be, 4 * MiB, "d") == []
    assert [m.what for m in check_memdev([memdev | {"share": False}], "b0", be, 4 * MiB,
                                         "d")] == ["memdev share"]
    f = tmp_path / "f"
    assert check_file(f, be, plugged=True, subject="d")  # missing
    f.write_bytes(b"x" * 8192)
    assert check_file(f, be, plugged=True, subject="d") == []
    assert check_file(f, be, plugged=False, subject="d")  # discard-data left blocks
