"""``memhp cache states|clear``: the saved VM states that warm starts use."""

from __future__ import annotations

import json
import time
from typing import Any

import click


@click.group("cache")
def cache_group() -> None:
    """List or clear the saved VM states (warm starts; see README)."""


def _describe(entry: Any) -> dict[str, Any]:
    inputs = entry.meta.get("inputs", {})
    qemu = inputs.get("qemu", {})
    return {
        "key": entry.key, "directory": str(entry.directory), "bytes": entry.size,
        "stream_bytes": entry.meta.get("stream_bytes"), "save_s": entry.meta.get("save_s"),
        "created": entry.meta.get("created"), "compressed": entry.meta.get("compressed"),
        "machine": inputs.get("machine"), "memory": inputs.get("memory"),
        "slots": inputs.get("slots"), "maxmem": inputs.get("maxmem"),
        "numa": inputs.get("numa"), "smp": inputs.get("smp"),
        "append": inputs.get("boot", {}).get("append"),
        "qemu": (qemu.get("version") or "").splitlines()[0] if qemu.get("version") else None,
    }


@cache_group.command("states")
@click.option("--json", "as_json", is_flag=True)
def states_cmd(as_json: bool) -> int:
    """List the saved states: key, size on disk, machine and memory."""
    from harness.warm import WarmStarts

    cache = WarmStarts()
    rows = [_describe(e) for e in cache.entries()]
    if as_json:
        click.echo(json.dumps({"root": str(cache.root), "states": rows}, indent=2))
        return 0
    total = sum(r["bytes"] for r in rows)
    click.echo(f"{len(rows)} saved state(s) in {cache.root}, {total / 2**20:.1f} MiB")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
        click.echo(f"{r['key']}  {r['bytes'] / 2**20:7.1f} MiB  saved {when}")
        click.echo(f"    {r['machine']}, -m {r['memory'] >> 20}M slots={r['slots']} "
                   f"maxmem={r['maxmem'] >> 20}M, numa {[n >> 20 for n in r['numa']]} MiB, "
                   f"smp {r['smp']}; {r['qemu']}")
        click.echo(f"    cmdline: {' '.join(r['append'] or ())}")
    return 0


@cache_group.command("clear")
def clear_cmd() -> int:
    """Remove every saved state (the next VM of each kind boots and saves again)."""
    from harness.warm import WarmStarts

    cache = WarmStarts()
    sizes = {e.key: e.size for e in cache.entries()}
    dropped = cache.clear()
    freed = sum(sizes.get(e.key, 0) for e in dropped)
    click.echo(f"removed {len(dropped)} saved state(s) from {cache.root}"
               + (f" ({freed / 2**20:.1f} MiB)" if freed else ""))
    return 0


COMMANDS: list[click.Command] = [cache_group]
