"""TOML keys of the newer step kinds: workload, expect_splat, expect_refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.scenario import load_scenario


def load(tmp_path: Path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def test_workload_splats_and_refusals_parse(tmp_path: Path) -> None:
    s = load(tmp_path, '''
[machine]
memory = "4G,slots=2,maxmem=8G"
numa = "2G,2G"
[guest]
expect_splats = ["UBSAN: .*"]
[[step]]
add = "a:1G@1"
[[step]]
add = "b:1G@1"
[[step]]
add = "c:1G@1"
expect_refusal = "no free slots"
[[step]]
workload = "w0"
node = 1
size = "64M"
[[step]]
offline = "a"
expect_splat = ["page dumped because: unmovable page"]
''')
    assert s.expect_splats == ("UBSAN: .*",)
    assert [st.action for st in s.steps] == ["add", "add", "add", "workload", "offline"]
    assert s.steps[2].expect_refusal == "no free slots" and not s.steps[2].is_model_op
    assert s.steps[3].workload is not None and s.steps[3].workload.size == 64 << 20
    assert s.steps[4].expect_splat == ("page dumped because: unmovable page",)
    assert [op.id for op in s.model_ops()] == ["a", "b"]
    assert "no free slots" in s.expected_refusals()[2].qemu_message


@pytest.mark.parametrize("step, message", [
    ('workload = "w0"\nsize = "1000"', "multiple of 1M"),
    ('workload = "0w"', "workload id"),
    ('add = "a:1G@1"\nexpect_refusal = 3', "expect_refusal must be"),
    ('add = "a:1G@1"\nexpect_splat = "("', "not a regular expression"),
    ('offline = "a"\nexpect_refusal = true', "unknown key"),
])
def test_bad_keys_are_named(tmp_path: Path, step: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load(tmp_path, f'[[step]]\nadd = "a:1G@1"\n[[step]]\n{step}\n')


def test_backend_keys_are_the_issues() -> None:
    """Issue 20's vocabulary for add steps, exactly."""
    from harness.scenario import BACKEND_KEYS

    assert set(BACKEND_KEYS) == {
        "backend", "hugepages", "share", "prealloc", "prealloc_threads", "host_nodes",
        "policy", "mem_path", "discard_data", "reserve", "dump", "merge"}
