"""Bad input to the CLI: exit 2, a message naming the value, no traceback,
no VM started (these run in-process and would hang or fail if one were)."""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import UsageError
from harness.scenario import load_scenario


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--add", "dimm0:0@1"], "zero"),
        (["--add", "dimm0:-1G@1"], "negative"),
        (["--add", "dimm0:1.5G@1"], "fractional"),
        (["--add", "dimm0:10Q@1"], "not a size"),
        (["--add", "dimm0:99999999999999999999999G@1"], "too large"),
        (["--add", ":1G@1"], "not a valid QEMU id"),
        (["--add", "a b:1G@1"], "not a valid QEMU id"),
        (["--add", "a;rm:1G@1"], "not a valid QEMU id"),
        (["--add", "$(id):1G@1"], "not a valid QEMU id"),
        (["--add", "'q':1G@1"], "not a valid QEMU id"),
        (["--add", "d:1G@-1"], "node"),
        (["--add", "d:1G@7"], "node 7 does not exist"),
        (["--add", "d:1G", "--add", "d:1G"], "already in use"),
        (["--memory", "6G,slots=2,maxmem=7G", "--add", "d:2G"], "exceeds maxmem"),
        (["--numa", "1G,1G"], "do not add up"),
        (["--kernel", "/nonexistent/bzImage"], "does not exist"),
        (["--kernel", "/tmp"], "is a directory"),
        (["--disk", "/nonexistent.qcow2"], "does not exist"),
        (["--scenario", "/nonexistent.toml"], "does not exist"),
        (["--qemu-version", "seven"], "MAJOR.MINOR"),
        (["--map", "/nonexistent/dir/map.svg"], "does not exist"),
        (["--map", "/tmp"], "is a directory"),
    ],
)
def test_run_refuses_bad_input(args: list[str], needle: str, capsys) -> None:
    assert main(["run", "--accel", "tcg", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", ["", "not a key\n", "ssh-ed25519 !!notbase64!!\n",
                                     "ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQABAAABAQ== x\n"])
def test_disk_host_key_must_be_an_openssh_public_key(tmp_path: Path, content: str,
                                                      capsys) -> None:
    """The last one is base64 of a key blob whose type is not the type named."""
    disk, key, pub = tmp_path / "d.img", tmp_path / "k", tmp_path / "host.pub"
    disk.write_bytes(b"\0" * 512)
    key.write_text("x")
    pub.write_text(content)
    assert main(["run", "--accel", "tcg", "--disk", str(disk), "--ssh-key", str(key),
                 "--ssh-host-key", str(pub)]) == 2
    err = capsys.readouterr().err
    assert "is not an OpenSSH public key" in err and "ssh_host_ed25519_key.pub" in err


def test_not_a_kernel(tmp_path: Path, capsys) -> None:
    fake = tmp_path / "bzImage"
    fake.write_bytes(b"\x7fELF" + b"\0" * 4096)
    assert main(["run", "--accel", "tcg", "--kernel", str(fake)]) == 2
    assert "not an x86 bzImage" in capsys.readouterr().err


def test_refused_plan_json(capsys) -> None:
    assert main(["run", "--json", "--memory", "2G,slots=1,maxmem=4G", "--numa", "1G,1G",
                 "--add", "a:128M", "--add", "b:128M"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["kind"] == "slots-exhausted"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name = [", "not valid TOML"),
        ("bogus = 1\n[[step]]\nadd='d:1G@1'", "unknown key"),
        ("[machine]\nsmp = 'two'\n[[step]]\nadd='d:1G@1'", "must be a int"),
        ("[machine]\ncolour = 'red'\n[[step]]\nadd='d:1G@1'", "unknown key"),
        ("name='x'", "no \\[\\[step"),
        ("[[step]]\nadd='d:1G@1'\nonline='d'", "exactly one"),
        ("[[step]]\nonline='ghost'", "no earlier step adds"),
        ("[[step]]\nadd='d:1G@1'\n[[step]]\nonline='d'\npolicy='sideways'", "policy"),
        ("[[step]]\nadd=5", "must be a str"),
    ],
)
def test_bad_scenarios(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=needle):
        load_scenario(path)


def test_good_scenario(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[machine]\ntype="q35"\n[[step]]\nadd="d:1G@1"\n[[step]]\nonline="d"\n'
                    'policy="online_kernel"\n[[step]]\nremove="d"\n')
    sc = load_scenario(path)
    assert [s.action for s in sc.steps] == ["add", "online", "remove"]
    assert sc.machine.machine == "q35"


toml_values = st.one_of(st.text(max_size=12), st.integers(), st.booleans(),
                        st.lists(st.text(max_size=5), max_size=3))
keys = st.sampled_from(["name", "machine", "guest", "step", "exec", "type", "memory", "add",
                        "online", "policy", "numa", "smp", "reset", "bogus"])


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(keys, toml_values), max_size=5),
       st.text(alphabet=string.printable, max_size=40))
def test_scenario_loader_fuzz(tmp_path_factory, pairs, noise: str) -> None:
    """Random tables and random garbage: UsageError or a Scenario, nothing else."""
    path = tmp_path_factory.mktemp("fuzz") / "s.toml"
    lines = [f"{k} = {_toml_value(v)}" for k, v in dict(pairs).items()]
    for body in ("\n".join(lines) + "\n[[step]]\nadd = \"d:1G@1\"\n", noise):
        path.write_text(body)
        with contextlib.suppress(UsageError):
            load_scenario(path)
