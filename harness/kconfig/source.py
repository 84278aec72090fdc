"""Getting a kernel ``.config`` out of whatever the user has.

Detected by content, not by name: a ``.config`` text, a gzip'd one (as
``/proc/config.gz``), a kernel image built with IKCONFIG, or a Debian
kernel package.  Images are handled the way the kernel's
``scripts/extract-ikconfig`` does: look for the ``IKCFG_ST`` marker (which
``kernel/configs.c`` puts right before the gzip'd config); if absent, find
every compressed stream by its magic bytes (gzip, xz, lzma, bzip2, zstd,
lz4), decompress it and look again.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

from harness.errors import KconfigError

EXPECTED = ("a kernel .config, a gzip'd config (/proc/config.gz), a kernel image built with "
            "CONFIG_IKCONFIG, or a Debian linux-image .deb")


def _looks_like_config(text: str) -> bool:
    return bool(re.search(r"^(CONFIG_\w+=|# CONFIG_\w+ is not set)", text, re.M))


def _ikconfig(blob: bytes) -> str | None:
    start = blob.find(b"IKCFG_ST")
    if start < 0:
        return None
    try:
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob[start + 8:])
    except zlib.error:
        return None
    text = data.decode("utf-8", "replace")
    return text if _looks_like_config(text) else None


def _decompress_at(blob: bytes, offset: int, kind: str) -> bytes | None:
    chunk = blob[offset:]
    try:
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(chunk)
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(chunk)
        if kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(chunk)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(chunk)
        tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[kind]
        if shutil.which(tool[0]) is None:
            return None
        proc = subprocess.run(tool, input=chunk, capture_output=True, check=False)
        return proc.stdout or None
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
        return None


_MAGICS = (
    (b"\x1f\x8b\x08", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x5d\x00\x00\x00", "lzma"),
    (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x02\x21\x4c\x18", "lz4"),
)


def config_from_image(blob: bytes) -> str | None:
    found = _ikconfig(blob)
    if found:
        return found
    for magic, kind in _MAGICS:
        pos = blob.find(magic)
        tries = 0
        while pos >= 0 and tries < 8:
            data = _decompress_at(blob, pos, kind)
            if data:
                found = _ikconfig(data)
                if found:
                    return found
            pos = blob.find(magic, pos + 1)
            tries += 1
    return None


#: A kernel's config inside a Debian package: ``boot/config-VER`` (up to
#: bookworm's 6.1/6.12), ``usr/lib/modules/VER/config`` (trixie's 6.12 and
#: 7.x, in the ``linux-base-VER`` package since 7.x split the image).
DEB_CONFIG_RE = re.compile(r"(^|/)(boot/config-[^/]+|(usr/)?lib/modules/[^/]+/config)$")


def config_package_of(path: Path) -> str | None:
    """The ``linux-base-VER`` package a split Debian ``linux-image-VER`` .deb
    (sid 7.2, trixie-backports 7.3) depends on for its config, or None."""
    try:
        proc = subprocess.run(["dpkg-deb", "-f", str(path), "Depends"], capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        return None
    found = re.search(r"\b(linux-base-\d[^\s,(]*)", proc.stdout)
    return found.group(1) if found else None


def config_from_deb(path: Path) -> str | None:
    """The config inside a kernel .deb; for a split ``linux-image-VER`` (no
    config of its own) the config of its ``linux-base-VER`` .deb beside it."""
    text = _config_in_deb(path)
    if text is None:
        base = config_package_of(path)
        sibling = next(iter(sorted(path.parent.glob(f"{base}_*.deb"))), None) if base else None
        if sibling is not None:
            text = _config_in_deb(sibling)
    return text


def _config_in_deb(path: Path) -> str | None:
    try:
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True,
                              check=False)
    except FileNotFoundError as exc:
        raise KconfigError(f"{path}: reading a .deb needs dpkg-deb (apt-get install dpkg)"
                           ) from exc
    if proc.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for member in tar.getmembers():
            if DEB_CONFIG_RE.search(member.name) and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    return f.read().decode("utf-8", "replace")
    return None


def read_config(path: Path) -> tuple[str, str]:
    """(config text, what kind of source it was); KconfigError if unusable."""
    if not path.exists():
        raise KconfigError(f"{path}: no such file (expected {EXPECTED})")
    if path.is_dir():
        raise KconfigError(f"{path} is a directory (expected {EXPECTED}; for a kernel tree "
                           "give its .config)")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise KconfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if blob.startswith(b"\x1f\x8b"):
        try:
            text = gzip.decompress(blob).decode("utf-8", "replace")
        except (OSError, EOFError, zlib.error) as exc:
            raise KconfigError(f"{path}: corrupt gzip data ({exc}); expected {EXPECTED}") from exc
        if _looks_like_config(text):
            return text, "config.gz"
    elif blob.startswith(b"!<arch>\n"):
        deb_text = config_from_deb(path)
        if deb_text:
            return deb_text, "deb"
        base = config_package_of(path)
        if base is not None:
            raise KconfigError(f"{path}: holds no config; this split kernel package keeps it "
                               f"in {base} (give that .deb, or put it beside this one)")
        raise KconfigError(f"{path}: a .deb without boot/config-* or usr/lib/modules/*/config "
                           "(expected a linux-image or linux-base package)")
    else:
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and _looks_like_config(text):
            return text, ".config"
        found = config_from_image(blob)
        if found:
            return found, "ikconfig"
        if b"HdrS" in blob[:0x300] or blob.startswith(b"\x7fELF"):
            raise KconfigError(f"{path}: a kernel image without an embedded config (it was "
                               "built without CONFIG_IKCONFIG); give its .config instead")
    raise KconfigError(f"{path}: not recognised; expected {EXPECTED}")


def parse_values(text: str) -> dict[str, str]:
    """CONFIG_X=y/m/"str"/123 -> {"X": "y"}; '# CONFIG_X is not set' -> "n"."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.match(r"^CONFIG_(\w+)=(.*)$", line):
            values[m.group(1)] = m.group(2).strip().strip('"')
        elif m := re.match(r"^# CONFIG_(\w+) is not set", line):
            values[m.group(1)] = "n"
    return values


def kernel_version(text: str) -> tuple[int, int] | None:
    m = re.search(r"^# Linux/\S+ (\d+)\.(\d+)", text, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None
