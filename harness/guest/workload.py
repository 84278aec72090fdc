"""A guest workload that lives across steps: memory on a node, kept dirty,
checked after every step.

``start`` fills a tmpfs file of a given size with random data, allocated
with ``numactl --preferred=NODE`` (the node first, spilling elsewhere
only when it is full, so offlining never OOM-kills it), records its MD5,
and leaves a background loop that rewrites the file in place one MiB at a
time (the same bytes: pages get dirtied, the content stays checkable).
``check`` answers whether the loop is alive, whether the content still
has its MD5, and how much shmem each node holds.  Everything comes from
the default guest's busybox, bash and numactl: nothing to compile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.errors import UsageError

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")

START_SCRIPT = r"""
set -e
id=$1 node=$2 mib=$3
d=/run/memhp-wl-$id f=/dev/shm/memhp-wl-$id
mkdir -p "$d"
numactl --preferred="$node" dd if=/dev/urandom of="$f" bs=1M count="$mib" 2>"$d/fill.err"
md5sum < "$f" | cut -d' ' -f1 > "$d/sum"
setsid numactl --preferred="$node" bash -c '
  k=0
  while :; do
    dd if="$1" of="$1" bs=1M skip=$k seek=$k count=1 conv=notrunc 2>/dev/null
    k=$(( (k + 1) % $2 )); sleep 0.2
  done' dirtier "$f" "$mib" </dev/null >/dev/null 2>&1 &
echo $! > "$d/pid"
echo "sum $(cat "$d/sum")"
"""

CHECK_SCRIPT = r"""
id=$1
d=/run/memhp-wl-$id f=/dev/shm/memhp-wl-$id
if kill -0 "$(cat "$d/pid")" 2>/dev/null; then echo alive yes; else echo alive no; fi
echo "want $(cat "$d/sum")"
echo "have $(md5sum < "$f" | cut -d' ' -f1)"
grep -H Shmem: /sys/devices/system/node/node*/meminfo | sed 's/^/shmem /'
"""

STOP_SCRIPT = r"""
id=$1
d=/run/memhp-wl-$id
kill "$(cat "$d/pid")" 2>/dev/null || true
rm -rf "$d" "/dev/shm/memhp-wl-$id"
"""


@dataclass(frozen=True)
class WorkloadSpec:
    id: str
    node: int
    size: int  # bytes, a multiple of 1 MiB

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise UsageError(f"workload id {self.id!r} is not valid", value=self.id,
                             fix="a letter, then letters, digits, '-', '.', '_' (32 at most)")
        if self.node < 0:
            raise UsageError(f"workload node {self.node} is negative", value=self.node)
        if self.size <= 0 or self.size % (1 << 20):
            raise UsageError(f"workload size {self.size} is not a positive multiple of 1M",
                             value=self.size, fix="e.g. size = \"512M\"")


@dataclass(frozen=True)
class WorkloadState:
    id: str
    alive: bool
    want: str
    have: str
    shmem_by_node: dict[int, int]

    @property
    def intact(self) -> bool:
        return bool(self.want) and self.want == self.have

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "alive": self.alive, "intact": self.intact, "md5": self.have,
                "shmem_by_node": {str(k): v for k, v in self.shmem_by_node.items()}}


def parse_check(workload_id: str, text: str) -> WorkloadState:
    alive, want, have = False, "", ""
    shmem: dict[int, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "alive":
            alive = rest.strip() == "yes"
        elif key == "want":
            want = rest.strip()
        elif key == "have":
            have = rest.strip()
        elif key == "shmem" and (m := re.search(r"node(\d+)/meminfo:Node \d+ Shmem:\s+(\d+)",
                                                 rest)):
            shmem[int(m.group(1))] = int(m.group(2)) * 1024
    return WorkloadState(workload_id, alive, want, have, shmem)
