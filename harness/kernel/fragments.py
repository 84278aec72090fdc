"""Config fragments: what they ask for (in merge order) and whether the
final ``.config`` kept it (``merge_config.sh`` and ``olddefconfig`` drop an
option whose dependencies are not met without a word)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.kconfig.source import parse_values
from harness.resources import kconfigs_dir


@dataclass(frozen=True)
class Verification:
    """How the fragments' requests ended up in the final .config."""

    dropped: tuple[tuple[str, str, str], ...]  # (option, wanted, got)
    unknown: tuple[str, ...]  # options this kernel's Kconfig does not define

    @property
    def ok(self) -> bool:
        return not self.dropped


def requested_options(fragments: Iterable[str]) -> dict[str, str]:
    """What the fragments ask for, in merge order (a later fragment wins)."""
    wanted: dict[str, str] = {}
    for text in fragments:
        wanted.update(parse_values(text))
    return wanted


def verify_config(wanted: Mapping[str, str], final: Mapping[str, str],
                  known: set[str]) -> Verification:
    """Compare the fragments' requests with the final .config.

    An option set to ``n`` (``# CONFIG_X is not set``) is satisfied when it
    is absent or ``n``; anything else must match exactly.  Options not in
    ``known`` cannot be set by this kernel and are only reported.
    """
    dropped: list[tuple[str, str, str]] = []
    unknown: list[str] = []
    for name, value in wanted.items():
        if name not in known:
            unknown.append(name)
            continue
        got = final.get(name, "n")
        if got != value:
            dropped.append((name, value, got))
    return Verification(tuple(dropped), tuple(unknown))


def describe_dropped(dropped: Sequence[tuple[str, str, str]],
                     explanations: Mapping[str, str] | None = None) -> str:
    lines = []
    for name, want, got in dropped:
        why = (explanations or {}).get(name)
        lines.append(f"  CONFIG_{name}: wanted {want}, got {got}" + (f" ({why})" if why else ""))
    return "\n".join(lines)


def default_fragments(auto_online: bool = False) -> list[Path]:
    frags = [kconfigs_dir() / "memhp.config"]
    if auto_online:
        frags.append(kconfigs_dir() / "auto-online.config")
    return frags


def read_fragment(path: Path) -> str:
    from harness.files import read_small_file

    try:
        text = read_small_file(path, "config fragment", "give a file of CONFIG_X=y lines "
                               "(see kconfigs/)", max_bytes=1 << 20).decode()
    except FileNotFoundError as exc:
        raise UsageError(f"config fragment {str(path)!r} does not exist", value=path,
                         fix="give a file of CONFIG_X=y lines (see kconfigs/)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config fragment {str(path)!r}: {exc}",
                         value=path) from exc
    if not parse_values(text):
        raise UsageError(f"{str(path)!r} has no CONFIG_ lines", value=path,
                         fix="a fragment is lines like CONFIG_X=y or # CONFIG_X is not set")
    return text
