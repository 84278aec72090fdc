"""Result documents: Markdown summaries and merging shards.

The JSON result document (``memhp run --json``; schema version in its
``schema`` field, documented in the README) is the exchange format.  This
module renders it as Markdown for a CI job summary and merges the
documents of several shards into one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.files import read_small_file

SUPPORTED_SCHEMAS = (1,)
MAX_RESULT_BYTES = 256 << 20
SCHEMA_FILE = "result-1.schema.json"
_FIX = "give a file written by `memhp run --json` or `memhp report merge`"


@cache
def result_schema() -> dict[str, Any]:
    """The published JSON Schema of result documents (harness/schemas/)."""
    text = resources.files("harness").joinpath("schemas", SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_result(doc: object, where: str) -> None:
    """UsageError naming the first place where ``doc`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(result_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is None:
        return
    path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    raise UsageError(f"result {where!r} is not a memhp result document: at {path}: "
                     f"{message!r}", value=where, fix=_FIX + f" (schema: harness/schemas/"
                     f"{SCHEMA_FILE})")


def load_result(path: Path) -> dict[str, Any]:
    """Read and validate a result document (regular file, bounded, schema 1)."""
    raw = read_small_file(path, "result", _FIX, max_bytes=MAX_RESULT_BYTES)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise UsageError(f"result {str(path)!r} nests too deeply", value=path,
                         fix=_FIX) from None
    except ValueError as exc:
        raise UsageError(f"result {str(path)!r} is not JSON: {exc}", value=path,
                         fix=_FIX) from exc
    if not isinstance(data, dict):
        raise UsageError(f"result {str(path)!r} is not a memhp result document", value=path,
                         fix=_FIX)
    docs: list[Any] = data.get("runs") or [] if "runs" in data else [data]
    for doc in docs if isinstance(docs, list) else []:
        if isinstance(doc, dict) and doc.get("schema") not in SUPPORTED_SCHEMAS:
            raise UsageError(
                f"result {str(path)!r} has schema {doc.get('schema')!r}; this memhp reads "
                f"{SUPPORTED_SCHEMAS}", value=path, fix="re-run with this memhp version")
    validate_result(data, str(path))
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


def code(value: object) -> str:
    """``value`` as a Markdown code span: never markup, never a link, never
    HTML, and safe inside a table cell (``|`` escaped, one line); terminal
    control characters and bidi overrides shown escaped (a summary is read
    in terminals and CI logs too)."""
    if value is None or value == "":
        return "—"
    from harness.report import printable

    text = printable(str(value).replace("\r", " ").replace("\n", " ")).replace("|", "\\|")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_SAFE_LINK = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,1000}\.svg")


def _map_link(where: str) -> str:
    """A link to the run's own memory map (a relative or absolute .svg path
    of plain characters); anything else is shown as code, not linked."""
    if _SAFE_LINK.fullmatch(where.lstrip("/")) and ".." not in where.split("/"):
        return f"[{code(where)}]({where})"
    return code(where)


def _num(value: object, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def markdown(doc: dict[str, Any]) -> str:
    """A Markdown summary.  Every field of the document is shown as a code
    span (the document may come from another CI job: no live markup)."""
    runs: Sequence[dict[str, Any]] = doc.get("runs", [doc])
    out: list[str] = []
    for r in runs:
        icon = "✅" if r.get("result") == "pass" else "❌"
        accel = r.get("accel") or {}
        result = "PASS" if r.get("result") == "pass" else "FAIL"
        out.append(f"### {icon} memhp {code(r.get('scenario'))} — {result}")
        out.append("")
        out.append(f"kernel {code(r.get('kernel'))} · QEMU {code(r.get('qemu_version'))} · "
                   f"{code(str(accel.get('name', '?')).upper())} "
                   f"({code(accel.get('reason', ''))})")
        t = r.get("timings") or {}
        if t:
            out.append(f"boot-to-SSH {_num(t.get('boot_to_ssh_s', 0))}s · "
                       f"total {_num(t.get('total_s', 0))}s")
        out.append("")
        out.append("| step | result | blocks (model → guest) | node MemTotal (model / guest) "
                   "| time |")
        out.append("|---|---|---|---|---|")
        for s in r.get("steps", []):
            expected, observed = s.get("expected") or {}, s.get("observed") or {}
            exp_b = {b["number"]: b for b in expected.get("blocks", [])}
            obs_b = {b["number"]: b for b in observed.get("blocks", [])}
            nums = sorted(exp_b.keys() | obs_b.keys())
            states = sorted({f"{b.get('state')}/{b.get('zone') or '-'}"
                             for b in obs_b.values()}) or ["gone"]
            blocks = (f"memory{nums[0]}–{nums[-1]}: " + ", ".join(code(x) for x in states)
                      ) if nums else "—"
            exp_n = {n["node"]: n["bytes"] for n in expected.get("nodes", [])}
            obs_n = {n["node"]: n["bytes"] for n in observed.get("nodes", [])}
            nodes = "; ".join(
                f"node{n}: {_mib(exp_n.get(n))} / {_mib(obs_n.get(n))}"
                for n in sorted(exp_n.keys() | obs_n.keys())
            )
            ok = "pass" if s.get("passed") else "**FAIL**"
            out.append(f"| {code(s.get('action'))} | {ok} | {blocks} | {nodes} | "
                       f"{_num(s.get('seconds'))}s |")
        mism = [m for s in r.get("steps", []) for m in s.get("mismatches", [])]
        if mism:
            out.append("")
            out.append("Mismatches:")
            for m in mism:
                out.append(f"- {code(m.get('subject'))} {code(m.get('what'))}: model "
                           f"{code(m.get('expected'))}, {code(m.get('source', '?'))} "
                           f"{code(m.get('observed'))}")
        policy = r.get("policy")
        if isinstance(policy, dict):
            keys = ("release", "auto_online_blocks", "online_policy", "memmap_on_memory",
                    "movable_node", "rules")
            out.append("")
            out.append("Kernel policy: " + " · ".join(f"{k} {code(policy.get(k))}"
                                                       for k in keys))
        splats = [(s.get("action"), sp) for s in r.get("steps", [])
                  for sp in s.get("splats") or []]
        splats += [("run", sp) for sp in r.get("splats") or []]
        if splats:
            out.append("")
            out.append("Kernel splats:")
            for where, sp in splats:
                tag = "expected" if sp.get("expected") else "**unexpected**"
                out.append(f"- {tag} {code(sp.get('kind'))} in {code(where)}: "
                           f"{code(sp.get('title'))}")
        ex = r.get("exec")
        if isinstance(ex, dict) and (ex.get("findings") or ex.get("mismatches")):
            out.append("")
            out.append(f"Exec {code(ex.get('command'))}:")
            for f in ex.get("findings") or []:
                out.append(f"- {code(f)}")
            for m in ex.get("mismatches") or []:
                out.append(f"- after exec: {code(m.get('subject'))} {code(m.get('what'))}: "
                           f"model {code(m.get('expected'))}, guest {code(m.get('observed'))}")
        err = r.get("error")
        if err:
            out.append("")
            out.append(f"Error ({code(err.get('phase'))}): {code(err.get('message'))}")
        if r.get("map") or r.get("artifacts"):
            out.append("")
            where = r.get("map") or f"{r['artifacts']}/memory-map.svg"
            out.append(f"Memory map: {_map_link(where)}"
                       + (f" · artifacts: {code(r['artifacts'])}" if r.get("artifacts") else ""))
        out.append("")
    return "\n".join(out)
