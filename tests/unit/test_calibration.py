"""Calibration records and the model's standing for a run
(harness.calibrate, harness.model.versions): which versions run on
extrapolated rules, which records are trusted, and that a clean record of
this very binary lifts the flag while any other record does not.

No QEMU runs here: a QEMU's identity is the hash of a file and its version
string, so any file serves as "the binary"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import harness.model.qemu_rules as qemu_rules
from harness.calibrate import model_status
from harness.calibrate.record import (
    Record,
    load,
    model_fingerprint,
    qemu_identity,
    record_path,
    save,
)
from harness.model.kernel import rules as kernel_rules
from harness.model.versions import kernel_extrapolation, qemu_extrapolation


def _beyond(version: tuple[int, int]) -> tuple[int, int]:
    return (version[0] + 1, 0)


NEWEST_QEMU = getattr(qemu_rules, "NEWEST_READ", None)
NEWEST_KERNEL = kernel_rules.MODELLED[-1]


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\necho a stand-in file, hashed, never run\n")
    return path


def _clean(kind: str, identity: str, version: str) -> Record:
    return Record(kind, identity, version, model_fingerprint(kind), True, "start 1/1", {})


# -- extrapolation ----------------------------------------------------------------------

def test_versions_read_are_not_extrapolated() -> None:
    assert NEWEST_QEMU is not None, "qemu_rules.NEWEST_READ names the newest QEMU read"
    for v in ((7, 2), (8, 0), (9, 1), (10, 0), tuple(NEWEST_QEMU)):
        assert qemu_extrapolation(v) is None, v
    assert kernel_extrapolation(tuple(NEWEST_KERNEL)) is None
    assert kernel_extrapolation(kernel_rules.MODELLED[0]) is None


def test_newer_versions_run_on_the_newest_rules_flagged() -> None:
    assert NEWEST_QEMU is not None
    q = qemu_extrapolation(_beyond(NEWEST_QEMU))
    assert q is not None and q.rules_of == tuple(NEWEST_QEMU)
    assert f"QEMU {_beyond(NEWEST_QEMU)[0]}.0" in q.message()
    assert "may be behind" in q.behind() and q.rule
    k = kernel_extrapolation(_beyond(NEWEST_KERNEL))
    assert k is not None and k.rules_of == tuple(NEWEST_KERNEL)
    assert k.rule in k.behind()


def test_run_status_flags_an_uncalibrated_newer_qemu(binary: Path, tmp_path: Path) -> None:
    assert NEWEST_QEMU is not None
    newer = _beyond(NEWEST_QEMU)
    version = f"{newer[0]}.{newer[1]}.1"
    status = model_status(qemu_binary=str(binary), qemu_version=version, cache=tmp_path)
    assert [e.component for e in status.extrapolated] == ["qemu"]
    assert status.to_json()["extrapolated_from"] == {"qemu": "{}.{}".format(*NEWEST_QEMU)}
    within = model_status(qemu_binary=str(binary), qemu_version="10.0.2", cache=tmp_path)
    assert not within.extrapolated and not within.lines()


def test_a_clean_record_of_this_binary_lifts_the_flag(binary: Path, tmp_path: Path) -> None:
    assert NEWEST_QEMU is not None
    newer = _beyond(NEWEST_QEMU)
    version = f"{newer[0]}.{newer[1]}.1"
    save(_clean("qemu", qemu_identity(str(binary), version), version), tmp_path)
    status = model_status(qemu_binary=str(binary), qemu_version=version, cache=tmp_path)
    assert not status.extrapolated
    assert "QEMU" in status.calibrated and "calibrated" in status.lines()[0]
    # another binary of the same version is not vouched for
    other = binary.with_name("other")
    other.write_text("another build\n")
    assert model_status(qemu_binary=str(other), qemu_version=version,
                        cache=tmp_path).extrapolated


def test_a_record_with_disagreements_does_not_lift_the_flag(binary: Path,
                                                             tmp_path: Path) -> None:
    assert NEWEST_QEMU is not None
    newer = _beyond(NEWEST_QEMU)
    version = f"{newer[0]}.{newer[1]}.0"
    ident = qemu_identity(str(binary), version)
    save(Record("qemu", ident, version, model_fingerprint("qemu"), False, "start 0/1", {}),
         tmp_path)
    assert model_status(qemu_binary=str(binary), qemu_version=version,
                        cache=tmp_path).extrapolated


# -- what a record must be to be read back ----------------------------------------------

def test_saved_records_are_private(binary: Path, tmp_path: Path) -> None:
    path = save(_clean("qemu", "abc", "11.1.3"), tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load("qemu", "abc", tmp_path) is not None


def test_a_record_of_another_model_is_ignored(tmp_path: Path) -> None:
    path = save(_clean("qemu", "abc", "11.1.3"), tmp_path)
    data = json.loads(path.read_text())
    data["model"] = "0" * 16
    path.write_text(json.dumps(data))
    assert load("qemu", "abc", tmp_path) is None


@pytest.mark.parametrize("forgery", ["symlink", "group-writable", "not-json", "wrong-identity"])
def test_forged_records_are_ignored(tmp_path: Path, forgery: str) -> None:
    path = save(_clean("qemu", "abc", "11.1.3"), tmp_path)
    if forgery == "symlink":
        real = tmp_path / "elsewhere.json"
        real.write_text(path.read_text())
        path.unlink()
        path.symlink_to(real)
    elif forgery == "group-writable":
        os.chmod(path, 0o664)
    elif forgery == "not-json":
        path.write_text("{")
    else:
        data = json.loads(path.read_text())
        data["identity"] = "xyz"
        path.write_text(json.dumps(data))
    assert load("qemu", "abc", tmp_path) is None


def test_record_names_do_not_leave_the_directory(tmp_path: Path) -> None:
    assert record_path("qemu", "abc", tmp_path).parent == tmp_path / "calibration"
