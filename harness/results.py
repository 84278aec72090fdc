"""Result documents: Markdown summaries and merging shards.

The JSON result document (``memhp run --json``; schema version in its
``schema`` field, documented in the README) is the exchange format.  This
module renders it as Markdown for a CI job summary and merges the
documents of several shards into one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import UsageError

SUPPORTED_SCHEMAS = (1,)


def load_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read result {str(path)!r}: {exc.strerror}", value=path) from exc
    except ValueError as exc:
        raise UsageError(f"result {str(path)!r} is not JSON: {exc}", value=path,
                         fix="give a file written by `memhp run --json`") from exc
    if not isinstance(data, dict):
        raise UsageError(f"result {str(path)!r} is not a memhp result document", value=path)
    docs: list[Any] = data.get("runs") or [] if "runs" in data else [data]
    for doc in docs:
        if doc.get("schema") not in SUPPORTED_SCHEMAS:
            raise UsageError(
                f"result {str(path)!r} has schema {doc.get('schema')!r}; this memhp reads "
                f"{SUPPORTED_SCHEMAS}", value=path, fix="re-run with this memhp version")
    return data


def merge(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One document holding every run of every shard, with an overall result."""
    runs: list[dict[str, Any]] = []
    for d in docs:
        runs.extend(d.get("runs", [d]))
    passed = all(r.get("result") == "pass" for r in runs)
    return {"schema": 1, "result": "pass" if passed and runs else "fail",
            "runs": runs, "total": len(runs),
            "failed": sum(1 for r in runs if r.get("result") != "pass")}


def _mib(n: object) -> str:
    return f"{int(n) / (1 << 20):.0f} MiB" if isinstance(n, int) else "-"


def markdown(doc: dict[str, Any]) -> str:
    runs: Sequence[dict[str, Any]] = doc.get("runs", [doc])
    out: list[str] = []
    for r in runs:
        icon = "✅" if r.get("result") == "pass" else "❌"
        accel = r.get("accel", {})
        out.append(f"### {icon} memhp `{r.get('scenario')}` — {r.get('result', '?').upper()}")
        out.append("")
        out.append(f"kernel `{r.get('kernel')}` · QEMU {r.get('qemu_version')} · "
                   f"{str(accel.get('name', '?')).upper()} ({accel.get('reason', '')})")
        t = r.get("timings", {})
        if t:
            out.append(f"boot-to-SSH {t.get('boot_to_ssh_s', 0):.2f}s · "
                       f"total {t.get('total_s', 0):.2f}s")
        out.append("")
        out.append("| step | result | blocks (model → guest) | node MemTotal (model / guest) "
                   "| time |")
        out.append("|---|---|---|---|---|")
        for s in r.get("steps", []):
            exp_b = {b["number"]: b for b in s["expected"].get("blocks", [])}
            obs_b = {b["number"]: b for b in s["observed"].get("blocks", [])}
            nums = sorted(exp_b.keys() | obs_b.keys())
            blocks = (f"memory{nums[0]}–{nums[-1]}: "
                      + ", ".join(sorted({f"{b.get('state')}/{b.get('zone') or '-'}"
                                          for b in obs_b.values()}) or ["gone"])
                      ) if nums else "—"
            exp_n = {n["node"]: n["bytes"] for n in s["expected"].get("nodes", [])}
            obs_n = {n["node"]: n["bytes"] for n in s["observed"].get("nodes", [])}
            nodes = "; ".join(
                f"node{n}: {_mib(exp_n.get(n))} / {_mib(obs_n.get(n))}"
                for n in sorted(exp_n.keys() | obs_n.keys())
            )
            ok = "pass" if s.get("passed") else "**FAIL**"
            out.append(f"| {s['action']} | {ok} | {blocks} | {nodes} | {s['seconds']:.2f}s |")
        mism = [m for s in r.get("steps", []) for m in s.get("mismatches", [])]
        if mism:
            out.append("")
            out.append("Mismatches:")
            for m in mism:
                out.append(f"- `{m['subject']}` {m['what']}: model `{m['expected']}`, "
                           f"{m['source']} `{m['observed']}`")
        if r.get("error"):
            out.append("")
            out.append(f"Error ({r['error'].get('phase')}): `{r['error'].get('message')}`")
        if r.get("map") or r.get("artifacts"):
            out.append("")
            where = r.get("map") or f"{r['artifacts']}/memory-map.svg"
            out.append(f"Memory map: [{where}]({where})"
                       + (f" · artifacts: `{r['artifacts']}`" if r.get("artifacts") else ""))
        out.append("")
    return "\n".join(out)
