"""README.md: its Python examples run, its two commands exist, and CI runs the test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    cmds = [b.strip() for b in _blocks("bash")]
    assert len(cmds) == 2
    demo, tests = cmds
    assert "safedispatch demo" in demo and "torch==2.13.0" in demo
    assert "pytest" in tests and "torch==2.13.0" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


@pytest.mark.parametrize("k", range(len(_blocks("python"))))
def test_readme_python_examples_run(k, capsys):
    code = _blocks("python")[k]
    exec(compile(code, f"README.md python block {k}", "exec"), {})
    out = capsys.readouterr().out
    for line in code.splitlines():
        m = re.match(r"# (losses .*)", line.strip())
        if m:  # a commented expected output must match what the block printed
            assert m.group(1) in out
