"""Warm starts: a guest ready in a fraction of a boot, from a saved state.

The first time a set of start-up inputs is used, the guest boots as usual;
once SSH is up its state is saved (:mod:`harness.qemu.snapshot`) into
memhp's cache, and the VM goes on to run its test.  Later VMs with the same
inputs start QEMU with ``-incoming`` from that state instead of booting:
QEMU loads it, memhp sends ``cont``, logs in over SSH with the keys kept
with the state, sets the guest's clock from the host's and mixes fresh
host randomness into its entropy pool.  The Runner then reads the baseline
from the guest as after a boot; nothing the model compares is cached.

The key of a state is a hash of everything in :class:`VMConfig` that the
guest can see (machine, ``-m``/slots/maxmem, NUMA, smp, CPU, accelerator,
pvpanic, extra arguments, and any device field added to VMConfig later,
all through :func:`dataclasses.asdict`), the kernel's and initramfs'
content hashes and command line, and the QEMU binary (resolved path, size,
mtime, ``--version`` text).  Host-side details are left out: the VM's
name, its forwarded SSH port (QEMU's user network forwards a new port
after a restore), and the paths of the key files (their content is in the
state).  So a kernel, initramfs or QEMU change makes a new key, and the
old state is simply never used again (``memhp cache clear`` removes it).

Layout (every directory 0700, every file 0600)::

    <cache>/states/<key>/state.zst    QEMU's migration stream (zstd), or
                         state.bin    uncompressed when zstd is missing
                         keys/        the guest's SSH host key, memhp's
                                      client key and authorized_keys
                         console.log  the saved boot's serial console
                         meta.json    inputs, sizes, timings, public keys
    <cache>/states/<key>.lock         held while one process boots and saves

Concurrency: the process that saves holds ``<key>.lock`` (filelock, as the
image cache and the KVM probe cache do), builds the state in a private
temporary directory and renames it into place, so a reader sees a whole
state or none.  Each restored VM has its own work directory (with a copy
of the keys), QMP socket and forwarded port.  A restore that fails (QEMU
refuses the stream, the guest does not answer) is logged with its reason,
the state is dropped, and the VM boots cold (saving a new state).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness import cache as store
from harness.errors import HarnessError
from harness.image.keys import GuestKeys, copy_guest_keys
from harness.qemu.argv import RuntimePaths, build_argv
from harness.qemu.config import KernelBoot
from harness.qemu.snapshot import incoming_args, refresh_guest, resume, save_state, wait_incoming

log = logging.getLogger("harness.warm")

# Bump when the layout or the restore procedure changes: older states are
# then never matched.
STATE_FORMAT = 1
# The states kept at most, in MiB ($MEMHP_STATE_CACHE_MB): after a save the
# least recently used states beyond it are removed (about 45 MiB each).
DEFAULT_CAP_MB = 2048


def states_root(root: Path | None = None) -> Path:
    """``root``/states, else ``$MEMHP_STATE_DIR``, else memhp's cache/states."""
    if root is not None:
        return root / "states"
    override = os.environ.get("MEMHP_STATE_DIR")
    return Path(override) if override else store.cache_root() / "states"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Content hash of ``path``, memoised per (path, size, mtime)."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


_QEMU_IDS: dict[str, dict[str, Any]] = {}


def qemu_identity(binary: str) -> dict[str, Any]:
    """The QEMU binary as resolved on PATH: path, size, mtime and its full
    ``--version`` text (a rebuilt or upgraded QEMU gives a new identity)."""
    path = shutil.which(binary) or binary
    real = Path(path).resolve()
    st = real.stat()
    memo = f"{real}:{st.st_size}:{st.st_mtime_ns}"
    if memo not in _QEMU_IDS:
        try:
            version = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                                     timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = "unknown"
        _QEMU_IDS[memo] = {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "version": version}
    return _QEMU_IDS[memo]


def state_inputs(config: Any) -> dict[str, Any]:
    """What the key of ``config``'s state is made of (see the module doc)."""
    cfg = asdict(config)
    for host_side in ("name", "ssh_port"):
        cfg.pop(host_side, None)
    boot = config.boot
    assert isinstance(boot, KernelBoot)
    cfg["boot"] = {
        "kernel_sha256": file_sha256(Path(boot.kernel)),
        "initrd_sha256": file_sha256(Path(boot.initrd)) if boot.initrd else None,
        "append": list(boot.append),
    }
    cfg["fw_cfg"] = [item.name for item in config.fw_cfg]
    cfg["qemu"] = qemu_identity(config.qemu_binary)
    cfg["argv"] = argv_template(config)
    cfg["format"] = STATE_FORMAT
    return cfg


def argv_template(config: Any) -> list[str]:
    """QEMU's command line for ``config`` with the host-side parts (name,
    port, work dir, file paths) made constant: a change in how memhp builds
    the command line (a new device in harness.qemu.argv) changes the key."""
    boot = config.boot
    assert isinstance(boot, KernelBoot)
    fixed = replace(
        config, name="vm", ssh_port=1,  # launch always forwards a port
        boot=replace(boot, kernel=Path("/kernel"),
                     initrd=None if boot.initrd is None else Path("/initrd")),
        fw_cfg=tuple(replace(f, path=Path("/fw_cfg") / str(i)) for i, f in
                     enumerate(config.fw_cfg)))
    argv = build_argv(fixed, RuntimePaths(Path("/workdir")))
    return argv[1:]  # the binary is in "qemu"


def state_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@dataclass(frozen=True)
class SavedState:
    """One saved state in the cache."""

    key: str
    directory: Path
    meta: dict[str, Any]

    @property
    def state_file(self) -> Path:
        return self.directory / ("state.zst" if self.meta["compressed"] else "state.bin")

    @property
    def size(self) -> int:
        """Bytes on disk (state, keys, meta)."""
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    @property
    def id(self) -> str:
        return str(self.meta.get("id", ""))

    @property
    def last_used(self) -> float:
        """When it was last restored (or saved)."""
        try:
            return (self.directory / "meta.json").stat().st_mtime
        except OSError:
            return 0.0

    def touch(self) -> None:
        with contextlib.suppress(OSError):  # dropped meanwhile: nothing to keep fresh
            os.utime(self.directory / "meta.json")


def copy_keys(src: Path, dst: Path, host_line: str, client_line: str) -> GuestKeys:
    """Copy the key files of a state (in ``src``) into ``dst`` (0700, files 0600)."""
    return copy_guest_keys(GuestKeys(
        host_key_path=src / "host_key", host_public_line=host_line,
        client_key_path=src / "client_key", client_public_line=client_line,
        authorized_keys_path=src / "authorized_keys"), dst)


class WarmStarts:
    """The state cache and the start procedure a :class:`VM` delegates to."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = states_root(root)

    # -- the cache -----------------------------------------------------------
    def lookup(self, key: str) -> SavedState | None:
        directory = self.root / key
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        entry = SavedState(key, directory, meta)
        if not entry.state_file.is_file() or meta.get("format") != STATE_FORMAT:
            return None
        return entry

    def entries(self) -> list[SavedState]:
        if not self.root.is_dir():
            return []
        found = (self.lookup(p.name) for p in sorted(self.root.iterdir())
                 if p.is_dir() and not p.name.startswith("."))
        return [e for e in found if e is not None]

    def lock(self, key: str) -> FileLock:
        return store.lock(store.private_dir(self.root), key)

    def drop(self, entry: SavedState) -> bool:
        """Remove ``entry`` unless another process already replaced it."""
        with self.lock(entry.key):
            current = self.lookup(entry.key)
            if current is None or current.id != entry.id:
                return False
            trash = self.root / f".trash-{entry.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(entry.directory, trash)
        if trash.is_symlink():  # a link where a state was: drop the link, never its target
            trash.unlink()
        else:
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def prune(self, keep: str, cap_bytes: int | None = None) -> list[SavedState]:
        """Drop the least recently used states (never ``keep``) until the
        cache holds at most ``cap_bytes`` ($MEMHP_STATE_CACHE_MB)."""
        if cap_bytes is None:
            try:
                cap_bytes = int(os.environ.get("MEMHP_STATE_CACHE_MB", DEFAULT_CAP_MB)) << 20
            except ValueError:
                cap_bytes = DEFAULT_CAP_MB << 20
        entries = sorted(((e, e.size) for e in self.entries()), key=lambda p: p[0].last_used)
        total = sum(size for _, size in entries)
        dropped = []
        for e, size in entries:
            if total <= cap_bytes:
                break
            if e.key != keep and self.drop(e):
                total -= size
                dropped.append(e)
                log.info("state cache over %d MiB: removed %s", cap_bytes >> 20, e.key)
        return dropped

    def clear(self) -> list[SavedState]:
        dropped = [e for e in self.entries() if self.drop(e)]
        for stale in self.root.glob(".tmp-*") if self.root.is_dir() else ():
            owner = stale.name.split("-")[1]  # .tmp-PID-RANDOM-KEY
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed saver
        return dropped

    # -- starting a VM --------------------------------------------------------
    @staticmethod
    def applies(vm: Any) -> str | None:
        """Why ``vm`` must boot cold, or None when it can start warm."""
        if vm.image is None:
            return "not a memhp image (a disk image boots)"
        if not isinstance(vm.base_config.boot, KernelBoot) or not vm.ready_marker:
            return "not a direct kernel boot with a ready marker"
        return None

    def start(self, vm: Any) -> None:
        """Start ``vm`` warm from its state, or boot it and save the state."""
        inputs = state_inputs(vm.base_config)
        key = state_key(inputs)
        entry = self.lookup(key)
        why = "no saved state yet"
        if entry is not None:
            try:
                self._restore(vm, entry)
                return
            except HarnessError as exc:
                why = self._abandon(vm, entry, exc)
        lock = self.lock(key)
        try:
            lock.acquire(timeout=vm.timeouts.s("boot") + vm.timeouts.s("ssh"))
        except Timeout:
            vm.boot()
            vm.start_info = {"warm": False, "state": None,
                             "reason": f"{why}; another process holds {lock.lock_file}"}
            return
        try:
            entry = self.lookup(key)
            if entry is None:
                self._boot_and_save(vm, key, inputs, why)
                return
        finally:
            lock.release()
        try:  # another process saved it while we waited
            self._restore(vm, entry)
        except HarnessError as exc:
            why = self._abandon(vm, entry, exc)
            vm.boot()
            vm.start_info = {"warm": False, "state": None, "reason": why}

    def _abandon(self, vm: Any, entry: SavedState, exc: HarnessError) -> str:
        why = f"restore from state {entry.key} failed ({type(exc).__name__}: {exc})"
        log.warning("%s; dropping the state and booting cold", why)
        vm.stop()
        vm.timings.clear()
        self.drop(entry)
        return why

    def _restore(self, vm: Any, entry: SavedState) -> None:
        meta = entry.meta
        t0 = time.monotonic()
        def prepare(keys_dir: Path) -> GuestKeys:
            # The work dir before QEMU starts: the state's keys, and the saved
            # boot's console, which QEMU appends to (argv.console_args).
            console = entry.directory / "console.log"
            text = console.read_bytes() if console.is_file() else b""
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            text += (f"\n[memhp] {stamp} UTC: restored from saved state {entry.key}; the "
                     "lines above are the saved boot's console\n").encode()
            (keys_dir.parent / "serial.log").write_bytes(text)
            return copy_keys(entry.directory / "keys", keys_dir, meta["host_public_line"],
                             meta["client_public_line"])

        vm.launch(incoming=incoming_args(entry.state_file, compressed=meta["compressed"]),
                  keys=prepare)
        wait_incoming(vm)
        loaded = time.monotonic()
        vm.connect_ssh()
        refresh_guest(vm)
        vm.timings["restore_s"] = loaded - t0
        vm.timings["boot_to_ssh_s"] = time.monotonic() - t0
        entry.touch()
        vm.start_info = {"warm": True, "state": entry.key, "state_dir": str(entry.directory),
                         "state_bytes": entry.size, "saved_at": meta.get("created"),
                         "reason": "restored from a saved state"}
        vm.log.info("warm start from %s in %.2fs", entry.directory,
                    vm.timings["boot_to_ssh_s"])

    def _boot_and_save(self, vm: Any, key: str, inputs: dict[str, Any], why: str) -> None:
        vm.boot()
        # .tmp-PID-RANDOM-KEY (clear() reads the PID), 0700
        tmp = store.temp_dir(store.private_dir(self.root), f".tmp-{os.getpid()}-", f"-{key}")
        try:
            keys = vm.guest_keys
            copy_guest_keys(keys, tmp / "keys")
            shutil.copyfile(vm.paths.serial_log, tmp / "console.log")
            vm.disconnect_ssh()  # no SSH session inside the saved state
            compressed_name = tmp / "state.zst"
            result = save_state(vm, compressed_name)
            if not result.compressed:
                os.rename(compressed_name, tmp / "state.bin")
            resume(vm)
            vm.connect_ssh()
            refresh_guest(vm)  # its clock stood still while it was stopped
            meta = {"format": STATE_FORMAT, "id": uuid.uuid4().hex, "key": key,
                    "created": time.time(), "compressed": result.compressed,
                    "stream_bytes": result.stream_bytes, "save_s": round(result.seconds, 3),
                    "boot_to_ssh_s": round(vm.timings.get("boot_to_ssh_s", 0.0), 3),
                    "host_public_line": keys.host_public_line,
                    "client_public_line": keys.client_public_line, "inputs": inputs}
            store.write_file(tmp / "meta.json", json.dumps(meta, indent=1, default=str),
                             mode=0o600)
            # atomic: readers see all of it or nothing
            store.publish(tmp, self.root / key, mode=0o700)
        except HarnessError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("could not save the state of %s: %s", vm.config.name, exc)
            if vm.shell is None:  # stopped for the save: run on, or fail as the boot would
                resume(vm)
                vm.connect_ssh()
            vm.start_info = {"warm": False, "state": None,
                             "reason": f"{why}; saving it failed: {exc}"}
            return
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        vm.timings["save_s"] = result.seconds
        self.prune(keep=key)
        vm.start_info = {"warm": False, "state": key, "state_dir": str(self.root / key),
                         "state_bytes": result.size,
                         "reason": f"{why}: booted, then saved state {key}"}
        log.info("saved state %s (%d bytes, %.2fs)", key, result.size, result.seconds)
