"""Calibration records: what ``memhp calibrate`` found for one QEMU binary
or one guest kernel, kept for later runs.

A record lives in ``<cache>/calibration/`` (or ``$MEMHP_CALIBRATION_DIR``;
a directory of mode 0700), one
JSON file (mode 0600) per binary or kernel, named by a hash of what it
identifies:

* a QEMU: the SHA-256 of the file run (the binary, or memhp's launcher of
  a ``debian:X.Y`` QEMU, which names the unpacked binary) and the full
  version ``--version`` prints;
* a kernel: the SHA-256 of the kernel image and its release string.

Each record also carries the fingerprint of the model it was checked
against (a hash of the model's source), so a record made by another
memhp model never vouches for this one.  A record is read back only when
it is a regular file (not a symlink) owned by this user and not writable
by others; anything else is ignored, as if there were none.

A *clean* record (every comparison agreed, or every kernel case passed)
is what lets a later run drop the "extrapolated" flag of a version newer
than the newest one memhp's rules were read from.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import cache as store

SCHEMA = 1
# The model's own modules (each device kind's and machine's are found, so a
# new kind or machine is part of the fingerprint without a line here).
_QEMU_MODEL = ("harness.model.qemu_rules", "harness.model.qemu_rules.cpu",
               "harness.model.qemu_rules.host", "harness.model.layout",
               "harness.model.predict", "harness.model.spec", "harness.model.backend",
               "harness.model.changes", "harness.model.plan", "harness.model.ids",
               "harness.devices.memory_device")
_KERNEL_MODEL = ("harness.model.changes", "harness.model.kernel.rules",
                 "harness.model.kernel.memory", "harness.model.kernel.inputs")


def model_modules(kind: str) -> tuple[str, ...]:
    """The modules of the model's ``kind`` half (``qemu``/``kernel``): a
    change to any of them is a change of the model."""
    import importlib.util

    from harness.devices import KINDS
    from harness.machines import MACHINES

    if kind == "qemu":
        machines = sorted({where.split(":")[0] for where in MACHINES.values()})
        parts = [f"{pkg}.{part}" for pkg in KINDS.values() for part in ("ops", "model", "rules")]
        names = [*_QEMU_MODEL, "harness.machines.base", "harness.machines.common", *machines,
                 *parts]
    else:
        names = [*_KERNEL_MODEL, *(f"{pkg}.driver" for pkg in KINDS.values())]
    return tuple(n for n in names if importlib.util.find_spec(n) is not None)


def model_fingerprint(kind: str) -> str:
    """A hash of the source of the model's ``kind`` half (``qemu``/``kernel``)."""
    import importlib

    h = hashlib.sha256()
    for name in model_modules(kind):
        module = importlib.import_module(name)
        h.update(name.encode() + b"\0")
        if module.__file__:
            h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def qemu_identity(binary: str, version: str) -> str:
    """The key of a QEMU: its file's hash and its full version."""
    import shutil

    found = shutil.which(binary) or binary
    return hashlib.sha256(f"qemu\0{file_sha256(Path(found))}\0{version}".encode()
                          ).hexdigest()[:24]


def kernel_identity(image: Path, release: str) -> str:
    """The key of a guest kernel: its image's hash and its release."""
    return hashlib.sha256(f"kernel\0{file_sha256(image)}\0{release}".encode()
                          ).hexdigest()[:24]


@dataclass(frozen=True)
class Record:
    kind: str  # "qemu" or "kernel"
    identity: str
    version: str  # "11.1.3" or the kernel release
    model: str  # model_fingerprint(kind) when it was made
    clean: bool
    summary: str  # one line: the counts
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "kind": self.kind, "identity": self.identity,
                "version": self.version, "model": self.model, "clean": self.clean,
                "summary": self.summary, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
                **self.data}


def _dir(cache: Path | None) -> Path:
    """``<cache>/calibration``, or ``$MEMHP_CALIBRATION_DIR`` when set (and
    no cache is named): records kept apart from the rest of the cache."""
    if cache is None and os.environ.get("MEMHP_CALIBRATION_DIR"):
        return Path(os.environ["MEMHP_CALIBRATION_DIR"])
    return store.cache_root(cache) / "calibration"


def record_path(kind: str, identity: str, cache: Path | None = None) -> Path:
    return _dir(cache) / f"{kind}-{identity}.json"


def save(record: Record, cache: Path | None = None) -> Path:
    """Write ``record`` atomically, 0600 in a 0700 directory; its path."""
    store.private_dir(_dir(cache))
    path = record_path(record.kind, record.identity, cache)
    return store.write_file(path, json.dumps(record.to_json(), indent=2) + "\n", mode=0o600)


def _trusted(path: Path) -> bool:
    try:
        st = os.lstat(path)
        dst = os.lstat(path.parent)
    except OSError:
        return False
    uid = os.geteuid()
    return (stat.S_ISREG(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022
            and stat.S_ISDIR(dst.st_mode) and dst.st_uid == uid and not dst.st_mode & 0o022)


def load(kind: str, identity: str, cache: Path | None = None) -> Record | None:
    """The record of ``identity`` when there is a trustworthy one made
    against this model, else None."""
    path = record_path(kind, identity, cache)
    if not _trusted(path):
        return None
    try:
        if path.stat().st_size > 1 << 22:
            return None
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA or data.get("kind") != kind \
                or data.get("identity") != identity:
            return None
        if data.get("model") != model_fingerprint(kind):
            return None
        return Record(kind, identity, str(data["version"]), str(data["model"]),
                      bool(data["clean"]), str(data.get("summary", "")), data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_qemu_record(binary: str, version: str, cache: Path | None = None) -> Record | None:
    """A clean calibration of this QEMU binary against this model, or None."""
    try:
        rec = load("qemu", qemu_identity(binary, version), cache)
    except OSError:
        return None
    return rec if rec is not None and rec.clean else None


def clean_kernel_record(image: Path, release: str, cache: Path | None = None
                        ) -> Record | None:
    """A clean calibration of this kernel image against this model, or None."""
    try:
        rec = load("kernel", kernel_identity(image, release), cache)
    except OSError:
        return None
    return rec if rec is not None and rec.clean else None
