"""Why an option cannot be enabled as-is: its unmet dependencies, resolved
with kconfiglib against a kernel source tree (``--source DIR``), or read from
the tree's Kconfig text when kconfiglib cannot parse it (the readers below are
shared with ``memhp kernel build``'s check of merged fragments)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from harness.errors import KconfigError


def explain(source: Path, config_text: str, options: Iterable[str]) -> dict[str, str]:
    """For each option: why it is off in ``config_text`` (its ``depends on``
    with the current value of every symbol in it), or that it could be set."""
    try:
        import kconfiglib
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise KconfigError("kconfiglib is not installed") from exc
    if not (source / "Kconfig").is_file():
        raise KconfigError(f"{source} is not a kernel source tree (no Kconfig at its top)")
    env = {"srctree": str(source), "SRCARCH": "x86", "ARCH": "x86", "CC": "gcc", "LD": "ld",
           "HOSTCC": "gcc", "KERNELVERSION": "memhp", "CC_VERSION_TEXT": "gcc"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(source)
        kconf = kconfiglib.Kconfig("Kconfig", warn=False, suppress_traceback=True)
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".config", delete=False) as f:
            f.write(config_text)
        kconf.load_config(f.name, replace=True)
        os.unlink(f.name)
    except (Exception, SystemExit) as exc:
        # kconfiglib raises many kinds, and SystemExit on syntax it does not
        # know (Linux 6.1's `modules` keyword): read the depends-on lines.
        return _explain_from_text(source, config_text, options, exc)
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out: dict[str, str] = {}
    for name in options:
        sym = kconf.syms.get(name)
        if sym is None:
            out[name] = "unknown to this kernel version"
            continue
        dep = sym.direct_dep
        value = kconfiglib.TRI_TO_STR[kconfiglib.expr_value(dep)]
        if value == "n":
            parts = ", ".join(
                f"{s.name}={s.str_value or 'n'}" for s in kconfiglib.expr_items(dep)
                if isinstance(s, kconfiglib.Symbol) and not s.is_constant
            )
            out[name] = (f"depends on {kconfiglib.expr_str(dep)} which is n here ({parts})")
        elif sym.visibility == 0 and not sym.rev_dep:
            out[name] = "has no prompt: it must be selected by another option"
        else:
            out[name] = f"can be enabled (visible as {kconfiglib.TRI_TO_STR[sym.visibility]}, " \
                        f"now {sym.str_value or 'n'})"
    return out


# -- reading Kconfig text directly (no kconfiglib) ----------------------------------------

_CONFIG_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.M)
_ENTRY_END = re.compile(r"^\s*(?:(?:menu)?config|choice|endchoice|menu|endmenu|if|endif|"
                        r"source|comment)\b")
_DEPENDS = re.compile(r"^\s*depends\s+on\s+(.+?)\s*$")


def kconfig_symbols(texts: Iterable[str]) -> set[str]:
    """The symbols defined (``config X`` / ``menuconfig X``) in Kconfig texts."""
    names: set[str] = set()
    for text in texts:
        names.update(_CONFIG_RE.findall(text))
    return names


def kconfig_depends(texts: Iterable[str], names: Iterable[str]) -> dict[str, list[str]]:
    """The ``depends on`` lines of each named symbol's own entries (not those
    inherited from an enclosing ``if``/``menu``)."""
    wanted = set(names)
    deps: dict[str, list[str]] = {}
    for text in texts:
        current: str | None = None
        for line in text.splitlines():
            if m := _CONFIG_RE.match(line):
                current = m.group(1) if m.group(1) in wanted else None
                if current is not None:
                    deps.setdefault(current, [])
            elif _ENTRY_END.match(line):
                current = None
            elif current is not None and (d := _DEPENDS.match(line)):
                deps[current].append(d.group(1))
    return deps


def explain_dropped(dropped: Sequence[tuple[str, str, str]], depends: Mapping[str, list[str]],
                    final: Mapping[str, str]) -> dict[str, str]:
    """``depends on ACPI && PCI`` -> ``depends on ACPI && PCI [ACPI=n PCI=y]``."""
    out: dict[str, str] = {}
    for name, _, _ in dropped:
        exprs = depends.get(name, [])
        if not exprs:
            continue
        symbols = dict.fromkeys(re.findall(r"\b[A-Z][A-Z0-9_]+\b", " && ".join(exprs)))
        values = " ".join(f"{s}={final.get(s, 'n')}" for s in symbols)
        out[name] = f"depends on {' && '.join(exprs)} [{values}]"
        if all(final.get(s, "n") != "n" for s in symbols):
            out[name] += "; those hold, so an enclosing `if`/`menu` or a `choice` decides"
    return out


def kconfig_texts(tree: Path) -> list[str]:
    """Every Kconfig* file of a source tree (a second or so for Linux)."""
    texts = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("Kconfig"):
                texts.append(Path(dirpath, name).read_text(errors="replace"))
    return texts


def _explain_from_text(source: Path, config_text: str, options: Iterable[str],
                       why: BaseException) -> dict[str, str]:
    """Without kconfiglib: each option's own ``depends on`` lines from the
    tree's Kconfig files, with the current value of every symbol in them."""
    from harness.kconfig.source import parse_values

    texts = kconfig_texts(source)
    known = kconfig_symbols(texts)
    values = parse_values(config_text)
    names = list(options)
    off = [(n, "y", values.get(n, "n")) for n in names if n in known]
    explained = explain_dropped(off, kconfig_depends(texts, [n for n, _, _ in off]), values)
    note = f" (read from the Kconfig text: kconfiglib cannot parse this tree: {why})"
    return {n: ("unknown to this kernel version" if n not in known
                else explained.get(n, "no depends-on of its own; a select or an enclosing "
                                      "if/menu decides") + note)
            for n in names}
