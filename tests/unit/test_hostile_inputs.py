"""Hostile inputs: each is refused with exit 2 (3 for a QEMU that is not
QEMU), a one-line message naming the value and the fix, before any VM starts,
and nothing is left in the temp dir.

The commands run in-process with ``--qemu`` pointing at a recorder: a
wrapper that answers ``--version`` with the real QEMU and logs any other
invocation (a VM launch) to a file, which must stay empty.  It is a real
QEMU for the one thing memhp asks before a VM, not a mock.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main

NON_ASCII_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}", re.ASCII)


@dataclass
class Sandbox:
    root: Path
    tmp: Path
    qemu: Path
    launches: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, args: list[str], *, code: int = 2, needle: str,
            fix: bool = True) -> str:
        """Run memhp with ``args``; check the exit code, the one-line message
        (``needle`` in it, with a fix), no VM launch and an empty temp dir."""
        argv = list(args)
        if argv[0] == "run":
            argv[1:1] = ["--accel", "tcg", "--qemu", str(self.qemu)]
        rc = main(argv)
        out, err = self.capsys.readouterr()
        assert rc == code, f"{args!r}: exit {rc}\n{err}"
        lines = [ln for ln in err.splitlines() if ln.startswith(("memhp", "Error:"))]
        assert len(lines) == 1, f"{args!r}: not one message line:\n{err}"
        assert needle in lines[0], f"{args!r}: {needle!r} not in {lines[0]!r}"
        if fix:
            assert "fix" in lines[0] or "Try" in err or "e.g." in lines[0], lines[0]
        assert "Traceback" not in err + out
        assert not self.launches.exists(), f"{args!r} launched QEMU: {self.launches.read_text()}"
        left = [p.name for p in self.tmp.iterdir()]
        assert left == [], f"{args!r} left {left} in the temp dir"
        return lines[0]


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Iterator[Sandbox]:
    tmp = Path(tempfile.mkdtemp(prefix="hostile-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    launches = tmp_path / "launches.log"
    qemu = tmp_path / "qemu-recorder"
    qemu.write_text('#!/bin/sh\nif [ "$1" = --version ]; then exec qemu-system-x86_64 '
                    f'--version; fi\necho "$@" >> {launches}\nexit 1\n')
    qemu.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    yield Sandbox(work, tmp, qemu, launches, capsys)
    os.rmdir(tmp)


def _fifo(root: Path) -> Path:
    path = root / "fifo"
    if not path.exists():
        os.mkfifo(path)
    return path


def _file(root: Path, name: str, text: str | bytes) -> Path:
    path = root / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"
MANY_STEPS = "".join(f'[[step]]\nadd = "d{i}:128M@0"\n' for i in range(1001))
NODES_192 = ",".join(["1G"] * 192)

# (argv with {fifo} {file:NAME:TEXT} placeholders resolved below, exit code, needle)
CASES: list[tuple[list[str], int, str]] = [
    # digits are ASCII only
    (["run", "--memory", "6G,slots=²,maxmem=32G"], 2, "slots='²'"),
    (["run", "--add", "dimm0:1G@²"], 2, "node '²'"),
    (["run", "--add", "dimm0:1G@١"], 2, "node '١'"),
    (["run", "--add", "dimm0:١G@1"], 2, "'١G'"),
    (["run", "--add", "d0:1G@1:0x١٢"], 2, "address"),
    (["run", "--numa", "٣G,3G"], 2, "'٣G'"),
    (["run", "--qemu-version", "٧.٢"], 2, "'٧.٢'"),
    (["run", "--qemu-version", "7"], 2, "MAJOR.MINOR"),
    (["run", "--qemu-version", "7.2beta"], 2, "MAJOR.MINOR"),
    (["model", "--add", "dimm0:1G@²"], 2, "node '²'"),
    (["model", "--memory", "6G,slots=²,maxmem=32G"], 2, "slots='²'"),
    # ids
    (["run", "--add", "dimm0\n:1G@1"], 2, "not a valid QEMU id"),
    (["run", "--add", "a" * 1000 + ":1G@1"], 2, "not a valid QEMU id"),
    (["run", "--add", "a" * 65 + ":1G@1"], 2, "not a valid QEMU id"),
    (["run", "--add", "d,x:1G@1"], 2, "not a valid QEMU id"),
    (["run", "--add", "d[/]:1G@1"], 2, "not a valid QEMU id"),
    (["run", "--add", "d0:1G@1", "--remove", "bad id"], 2, "not a valid QEMU id"),
    (["model", "--add", "d\x00:1G@1"], 2, "not a valid QEMU id"),
    # nodes, smp, block size
    (["run", "--memory", "192G,slots=2,maxmem=200G", "--numa", NODES_192], 2,
     "192 NUMA nodes exceed"),
    (["model", "--memory", "192G,slots=2,maxmem=200G", "--numa", NODES_192], 2,
     "192 NUMA nodes exceed"),
    (["run", "--smp", "100000"], 2, "100000"),
    (["run", "--smp", "0"], 2, "0"),
    (["model", "--block-size=1"], 2, "power of two of at least 128M"),
    (["model", "--block-size=4K"], 2, "power of two of at least 128M"),
    (["model", "--block-size=64M"], 2, "power of two of at least 128M"),
    (["model", "--block-size=384M"], 2, "power of two of at least 128M"),
    # timeouts
    (["run", "--timeout-scale", "nan"], 2, "nan"),
    (["run", "--timeout-scale", "inf"], 2, "inf"),
    (["run", "--timeout-scale", "-1"], 2, "-1"),
    (["run", "--timeout-scale", "0"], 2, "0"),
    # --modules only with --kernel
    (["run", "--modules", "/tmp"], 2, "--modules is only for --kernel"),
    # files: regular and bounded, never opened otherwise
    (["run", "--scenario", "{fifo}"], 2, "is a FIFO"),
    (["run", "--scenario", "/dev/zero"], 2, "is a device"),
    (["run", "--scenario", "/dev/null"], 2, "is a device"),
    (["run", "--scenario", "/"], 2, "is a directory"),
    (["run", "--scenario", "{file:big.toml:" + "#" * (2 << 20) + "}"], 2, "over the limit"),
    (["run", "--scenario", "{file:deep.toml:" + DEEP + "}"], 2, "nests too deeply"),
    (["run", "--scenario", "{file:steps.toml:" + MANY_STEPS + "}"], 2, "over the limit of 1000"),
    (["run", "--scenario", "{file:smp.toml:[machine]\nsmp = 100000\n[[step]]\nadd='d:1G@1'\n}"],
     2, "smp 100000"),
    (["run", "--scenario", "{file:smp0.toml:[machine]\nsmp = 0\n[[step]]\nadd='d:1G@1'\n}"],
     2, "smp 0"),
    (["run", "--scenario", "{file:name.toml:name = 'x[/]'\n[[step]]\nadd='d:1G@1'\n}"],
     2, "scenario name 'x[/]'"),
    (["run", "--scenario", "{file:nl.toml:name = \"a\\nb\"\n[[step]]\nadd='d:1G@1'\n}"],
     2, "scenario name 'a\\nb'"),
    (["run", "--scenario", "{file:comma.toml:name = 'a,b'\n[[step]]\nadd='d:1G@1'\n}"],
     2, "scenario name 'a,b'"),
    (["run", "--scenario", "{file:bin.toml:\xff\xfe}"], 2, "not UTF-8"),
    (["run", "--scenario", "{file:nodes.toml:[machine]\nnuma = '" + NODES_192 + "'\n"
      "memory = '192G,slots=2,maxmem=200G'\n[[step]]\nadd='d:1G@1'\n}"], 2, "192 NUMA nodes"),
    (["run", "--scenario", "{file:id.toml:[[step]]\nadd = \"d\\n:1G@1\"\n}"], 2,
     "not a valid QEMU id"),
    (["run", "--kernel", "{fifo}"], 2, "is a FIFO"),
    (["run", "--kernel", "/dev/zero"], 2, "is a device"),
    (["run", "--kernel", "/"], 2, "is a directory"),
    (["run", "--disk", "{fifo}", "--ssh-key", "/dev/null"], 2, "is a FIFO"),
    (["run", "--disk", "/dev/zero", "--ssh-key", "/dev/null"], 2, "is a device"),
    (["run", "--disk", "{file:d.img:x}", "--ssh-key", "{fifo}"], 2, "is a FIFO"),
    (["run", "--disk", "{file:d.img:x}", "--ssh-key", "{file:k:x}", "--ssh-host-key", "{fifo}"],
     2, "is a FIFO"),
    (["run", "--exec", "true", "--script", "{fifo}"], 2, "is a FIFO"),
    (["run", "--script", "/dev/zero"], 2, "is a device"),
    # --keep
    (["run", "--keep", "/dev/null"], 2, "exists and is not a directory"),
    (["run", "--keep", "{file:afile:x}"], 2, "exists and is not a directory"),
    (["run", "--keep", "{file:afile:x}/sub"], 2, "cannot be created"),
    # --online / --append
    (["run", "--append", "memhp_default_state=bogus"], 2, "memhp_default_state='bogus'"),
    (["run", "--online", "sideways"], 2, "sideways"),
    # a QEMU that is not QEMU: environment (3)
    (["run", "--accel", "tcg", "--qemu", "/bin/false"], 3, "is not QEMU"),
    (["run", "--accel", "tcg", "--qemu", "/bin/echo"], 3, "is not QEMU"),
    (["run", "--accel", "tcg", "--qemu", "/nonexistent/qemu"], 3, "not found"),
    # report inputs: regular files, JSON, the published schema
    (["report", "markdown", "{fifo}"], 2, "is a FIFO"),
    (["report", "markdown", "/dev/zero"], 2, "is a device"),
    (["report", "markdown", "{file:deep.json:" + "[" * 100000 + "}"], 2, "nests too deeply"),
    (["report", "markdown", "{file:noexp.json:" + json.dumps(
        {"schema": 1, "result": "pass", "steps": [{"action": "add", "observed": {}}]}) + "}"],
     2, "'expected' is a required property"),
    (["report", "markdown", "{file:strnum.json:" + json.dumps(
        {"schema": 1, "result": "pass", "steps": [{"action": "a", "expected": {
            "blocks": [{"number": "<script>"}]}, "observed": {}}]}) + "}"], 2, "steps/0/expected"),
    (["report", "markdown", "{file:badres.json:" + json.dumps(
        {"schema": 1, "result": "maybe", "steps": []}) + "}"], 2, "result"),
    (["report", "markdown", "{file:runs.json:" + json.dumps(
        {"schema": 1, "runs": "x"}) + "}"], 2, "runs"),
    (["report", "merge", "{file:list.json:[1,2]}"], 2, "not a memhp result document"),
    (["report", "map", "{file:node.json:" + json.dumps(
        {"schema": 1, "result": "pass", "layout": {"below_4g": 1, "above_4g": 0},
         "steps": [{"action": "a", "expected": {"dimms": [
             {"id": "d", "addr": 0, "size": 1, "node": "<script>"}]}, "observed": {}}]})
      + "}", "-o", "{root}/m.svg"], 2, "node"),
    # kconfig check
    (["kconfig", "check", "{fifo}"], 2, "is a FIFO"),
    (["kconfig", "check", "/dev/zero"], 2, "is a device"),
    (["kconfig", "check", "{file:c.config:CONFIG_X=y\n}", "--cmdline",
      "memhp_default_state=bogus"], 2, "memhp_default_state='bogus'"),
]


def _resolve(arg: str, root: Path) -> str:
    if arg == "{fifo}":
        return str(_fifo(root))
    if arg.startswith("{file:"):
        body, _, rest = arg[len("{file:"):].rpartition("}")
        name, _, text = body.partition(":")
        data = text.encode("latin-1") if name == "bin.toml" else text
        return str(_file(root, name, data)) + rest
    return arg.replace("{root}", str(root))


def _case_id(case: tuple[list[str], int, str]) -> str:
    text = " ".join(case[0])
    return re.sub(r"\s+", " ", text)[:60]


@pytest.mark.parametrize(("args", "code", "needle"), CASES, ids=[_case_id(c) for c in CASES])
def test_hostile_input_is_refused_cleanly(sandbox: Sandbox, args: list[str], code: int,
                                          needle: str) -> None:
    sandbox.run([_resolve(a, sandbox.root) for a in args], code=code, needle=needle,
                fix=code == 2 or "fix" in needle)


def test_the_fifo_was_never_opened(sandbox: Sandbox) -> None:
    """A FIFO with no writer blocks whoever opens it for reading: refused
    from stat alone, so this returns at once."""
    fifo = _fifo(sandbox.root)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    sandbox.run(["run", "--scenario", str(fifo)], needle="is a FIFO")


SLOW = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(NON_ASCII_DIGITS, st.sampled_from([
    ("run", "--add", "dimm0:1G@{}", "node"),
    ("run", "--memory", "6G,slots={},maxmem=32G", "slots="),
    ("run", "--add", "dimm0:{}G@1", "size"),
    ("model", "--add", "dimm0:1G@{}", "node"),
    ("run", "--qemu-version", "{}.2", "MAJOR.MINOR"),
]))
def test_non_ascii_digits_are_refused(sandbox: Sandbox, digit: str,
                                      template: tuple[str, str, str, str]) -> None:
    cmd, opt, value, needle = template
    sandbox.run([cmd, opt, value.format(digit)], needle=needle)


@SLOW
@given(st.text(alphabet=st.characters(blacklist_characters=":@"), min_size=0, max_size=80)
       .filter(lambda s: s == s.strip() and not ID_RE.fullmatch(s)))
def test_ids_outside_qemus_rules_are_refused(sandbox: Sandbox, dimm_id: str) -> None:
    sandbox.run(["run", "--add", f"{dimm_id}:1G@1"], needle="not a valid QEMU id")


@SLOW
@given(st.integers(min_value=129, max_value=400))
def test_more_than_128_nodes_are_refused(sandbox: Sandbox, n: int) -> None:
    sandbox.run(["model", "--memory", f"{n}G,slots=2,maxmem={n + 8}G", "--numa",
                 ",".join(["1G"] * n)], needle=f"{n} NUMA nodes exceed")


# -- issue 26: a scenario's file backend never touches what memhp did not make ----------

def _mem_path_scenario(root: Path, mem_path: str, extra: str = "") -> Path:
    return _file(root, "s.toml", f'[[step]]\nadd = "f0:128M@0"\nbackend = "file"\n'
                                 f'mem_path = "{mem_path}"\n{extra}')


@pytest.mark.parametrize("target", ["file", "empty-file", "symlink", "dir", "block-device",
                                    "fifo", "dotdot"])
def test_a_scenario_mem_path_outside_the_allowed_is_refused(sandbox: Sandbox,
                                                            target: str) -> None:
    """The crafted scenarios of issue 26 (existing file zeroed by
    share+discard_data, a symlink to one, a directory, a block device): exit 2
    naming the path, before any VM, the target untouched."""
    victim = _file(sandbox.root, "victim", "keep me")
    empty = _file(sandbox.root, "empty", "")
    link = sandbox.root / "link"
    link.symlink_to(victim)
    path = {"file": victim, "empty-file": empty, "symlink": link, "dir": sandbox.root,
            "block-device": Path("/dev/loop0"), "fifo": _fifo(sandbox.root),
            "dotdot": sandbox.root / ".." / "victim"}[target]
    scenario = _mem_path_scenario(sandbox.root, str(path), "share = true\ndiscard_data = true\n")
    line = sandbox.run(["run", "--scenario", str(scenario)], needle=str(path))
    assert "outside" in line or "'..'" in line
    assert victim.read_text() == "keep me" and empty.read_text() == ""


@pytest.mark.parametrize(("target", "needle"), [
    ("file", "exists and is a regular file"), ("empty-file", "exists and is a regular file"),
    ("symlink", "is a symlink"), ("fifo", "exists and is a FIFO"),
    ("missing-dir", "does not exist")])
def test_inside_an_allowed_dir_only_new_files_and_dirs_pass(sandbox: Sandbox, target: str,
                                                            needle: str) -> None:
    allowed = sandbox.root / "allowed"
    allowed.mkdir(exist_ok=True)
    victim = _file(allowed, "victim", "keep me")
    _file(allowed, "empty", "")
    (allowed / "link").symlink_to(victim)
    _fifo(allowed)
    path = {"file": victim, "empty-file": allowed / "empty", "symlink": allowed / "link",
            "fifo": allowed / "fifo", "missing-dir": allowed / "no" / "f"}[target]
    scenario = _mem_path_scenario(sandbox.root, str(path))
    sandbox.run(["run", "--allow-mem-path", str(allowed), "--scenario", str(scenario)],
                needle=needle)
    assert victim.read_text() == "keep me"


def test_allowed_paths_pass_the_check(tmp_path: Path) -> None:
    from harness.host.paths import allowed_dirs, check_mem_path

    allowed = allowed_dirs([tmp_path])
    check_mem_path(str(tmp_path), allowed)  # a directory: memhp makes its own file
    check_mem_path(str(tmp_path / "new-file"), allowed)  # QEMU creates, memhp removes
    with pytest.raises(Exception, match="not an existing directory"):
        allowed_dirs(["relative/dir"])


def test_bisect_aborts_on_bad_input_before_building(sandbox: Sandbox) -> None:
    """git bisect run reads exit 2 as "bad": bad input aborts (128) instead,
    and before --build-cmd runs."""
    built = sandbox.root / "BUILT"
    sandbox.run(["bisect", "--qemu", str(sandbox.qemu), "--memory", "1X", "--source",
                 str(sandbox.root), "--build-cmd", f"touch {built}"], code=128, needle="'1X'")
    assert not built.exists()
    assert main(["bisect", "--no-such-option"]) == 128
    sandbox.capsys.readouterr()


def test_pytest_boot_attempts_non_ascii_digit_is_a_usage_error() -> None:
    from harness.pytest_plugin.options import _parse_attempts

    with pytest.raises(pytest.UsageError, match="'²'"):
        _parse_attempts("²")
    assert _parse_attempts("3") == 3


@pytest.mark.parametrize(("steps", "needle"), [
    ([("w0", 5, "256M")], "node 5 does not exist"),
    ([("w0", 0, "256M"), ("w0", 1, "256M")], "used by an earlier workload"),
    ([("w0", 0, "64G")], "not below the 3072 MiB node 0 can hold"),
])
def test_workloads_are_checked_before_any_vm(steps: list[tuple[str, int, str]],
                                             needle: str) -> None:
    from harness.errors import UsageError
    from harness.scenario import add, build_scenario, workload

    with pytest.raises(UsageError, match=re.escape(needle)):
        build_scenario(name="w", machine="pc", memory="6G,slots=4,maxmem=16G", numa="3G,3G",
                       steps=[workload(*s) for s in steps])
    # a workload larger than the node's boot memory fits once a DIMM is added there
    build_scenario(name="w", machine="pc", memory="6G,slots=4,maxmem=16G", numa="3G,3G",
                   steps=[add("d0:1G@0"), workload("w0", 0, "3584M")])


# -- a matrix of bad sizes, nodes and addresses in every option that takes them --------
# Each must exit 2 with one line naming the value (its repr) and a fix, before any
# VM (the recorder QEMU stays unlaunched): 8 forms x 15 sizes, 4 x 8 nodes, 2 x 8
# addresses.

BAD_SIZES = ["", "-1G", "1.5G", "1 G", "１G", "99999999999999999999G", "0", "1Gi", "G",
             "0x1G", "1e3M", "+1G", "1G\n", "1\x1bG", "٣G"]
SIZE_FORMS = {
    "run-memory": ["run", "--memory", "{v},slots=4,maxmem=32G"],
    "model-memory": ["model", "--memory", "{v},slots=4,maxmem=32G"],
    "run-numa": ["run", "--numa", "{v},3G", "--memory", "6G,slots=4,maxmem=32G"],
    "model-numa": ["model", "--numa", "{v},3G", "--memory", "6G,slots=4,maxmem=32G"],
    "run-add": ["run", "--add", "d0:{v}@1"],
    "model-add": ["model", "--add", "d0:{v}@1"],
    "model-coldplug": ["model", "--coldplug", "c0:{v}@0"],
    "model-maxmem": ["model", "--memory", "6G,slots=4,maxmem={v}"],
}
BAD_NODES = ["-1", "1.0", "one", "1\n", "²", "0x1", "1 1", "99999999999999999999999"]
NODE_FORMS = {
    "run-add": ["run", "--add", "d0:1G@{v}"],
    "model-add": ["model", "--add", "d0:1G@{v}"],
    "model-coldplug": ["model", "--coldplug", "c0:1G@{v}"],
    "run-coldplug-free": ["model", "--add", "d0:1G@{v}:0x240000000"],
}
BAD_ADDRS = ["0x", "0xg", "-1", "1.5", "0x1\n", "0x10000000000000000", "١٢", "0b101"]
ADDR_FORMS = {
    "run-add": ["run", "--add", "d0:1G@1:{v}"],
    "model-add": ["model", "--add", "d0:1G@1:{v}"],
}


def _matrix(forms: dict[str, list[str]], values: list[str]) -> list[tuple[list[str], str]]:
    # "0" is a memory-less NUMA node, and maxmem=0 no maxmem: no bad input there
    return [([a.replace("{v}", v) for a in form], v) for name, form in forms.items()
            for v in values if not (v == "0" and name.endswith(("numa", "maxmem")))]


MATRIX = (_matrix(SIZE_FORMS, BAD_SIZES) + _matrix(NODE_FORMS, BAD_NODES)
          + _matrix(ADDR_FORMS, BAD_ADDRS))


@pytest.mark.parametrize(("args", "value"), MATRIX,
                         ids=[f"{a[0]}-{a[1]}-{v!r}" for a, v in MATRIX])
def test_bad_values_in_every_option_are_refused(sandbox: Sandbox, args: list[str],
                                                value: str) -> None:
    line = sandbox.run(args, needle="")
    shown = {repr(value), repr(value.strip(" "))}
    assert any(s.strip("'") in line or s in line for s in shown) or "not" in line, line
