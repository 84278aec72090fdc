"""Why an option cannot be enabled as-is: its unmet dependencies, resolved
with kconfiglib against a kernel source tree (``--source DIR``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
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


def _explain_from_text(source: Path, config_text: str, options: Iterable[str],
                       why: BaseException) -> dict[str, str]:
    """Without kconfiglib: each option's own ``depends on`` lines from the
    tree's Kconfig files, with the current value of every symbol in them."""
    import re

    from harness.kernel.build import kconfig_depends, kconfig_symbols, kconfig_texts

    texts = kconfig_texts(source)
    known = kconfig_symbols(texts)
    values = dict(re.findall(r"^CONFIG_(\w+)=(\S+)", config_text, flags=re.M))
    names = list(options)
    depends = kconfig_depends(texts, names)
    note = f" (read from the Kconfig text: kconfiglib cannot parse this tree: {why})"
    out: dict[str, str] = {}
    for name in names:
        if name not in known:
            out[name] = "unknown to this kernel version"
            continue
        exprs = depends.get(name) or []
        symbols = dict.fromkeys(re.findall(r"\b[A-Z][A-Z0-9_]+\b", " && ".join(exprs)))
        off = [s for s in symbols if values.get(s, "n") == "n"]
        if off:
            parts = ", ".join(f"{s}={values.get(s, 'n')}" for s in symbols)
            out[name] = f"depends on {' && '.join(exprs)}, which has n in it ({parts}){note}"
        else:
            out[name] = ("its own depends-on lines hold; an enclosing if/menu or a select "
                         f"decides{note}")
    return out
