"""Hostile or careless input at the command line: one line, exit 2, before any work.

- ``--set`` with a YAML tag (``!!python/object/apply:os.system``) was refused safely but as a
  ``ConstructorError`` traceback;
- ``gptops generate -n -5`` / ``-t nan`` gave ``RuntimeError`` tracebacks after loading the model;
- a task file with 10,000 distinct labels gave one 89 KB error line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability


def _gptops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(PROJECT_ROOT)})


def _lines(r: subprocess.CompletedProcess) -> list[str]:
    text = r.stdout + r.stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_a_yaml_tag_in_an_override_is_one_line_and_runs_nothing(tmp_path):
    ws = tmp_path / "ws"
    marker = tmp_path / "PWNED"
    r = _gptops("run", "-w", str(ws), "--set",
                f'train.lr=!!python/object/apply:os.system ["touch {marker}"]', cwd=tmp_path)
    assert r.returncode == 2
    lines = _lines(r)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: bad override 'train.lr': the value ")
    assert "could not determine a constructor for the tag" in lines[0] and "no !! tags" in lines[0]
    assert not marker.exists() and not ws.exists()  # nothing ran, nothing was written


@pytest.mark.timeout(120)
@pytest.mark.parametrize("option, value, shown, valid", [
    ("-n", "-5", "'--max-new-tokens' / '-n': -5", "a finite number >= 1"),
    ("-t", "nan", "'--temperature' / '-t': nan", "a finite number >= 0 (0 = greedy)"),
    ("--top-p", "1.5", "'--top-p': 1.5", "a finite number > 0 and <= 1"),
])
def test_generate_refuses_options_out_of_range_as_usage_errors(tmp_path, option, value, shown,
                                                              valid):
    # No workspace and no model at all: the options are refused before anything is loaded.
    r = _gptops("generate", "hello", "-w", str(tmp_path), option, value, cwd=tmp_path)
    assert r.returncode == 2
    lines = _lines(r)
    assert lines[0].startswith("Usage: ") and len(lines) <= 4, lines
    assert lines[-1] == f"Error: Invalid value for {shown} is not in the valid range: {valid}"


@pytest.mark.timeout(120)
def test_ten_thousand_labels_give_a_short_line(tmp_path):
    task = tmp_path / "task.csv"
    task.write_text("text,label\n" + "".join(f"document number {i},label{i:05d}\n"
                                             for i in range(10_000)))
    r = _gptops("run", "-w", str(tmp_path / "ws"), "--set", "finetune.task=file", "--set",
                f"finetune.task_path={task}", cwd=tmp_path)
    assert r.returncode == 2
    lines = _lines(r)
    assert len(lines) == 1 and len(lines[0]) < 1000, (len(lines), len(lines[0]))
    assert "10000 of 10000 labels have fewer than 4 examples (label00000, label00001," in lines[0]
    assert "label00019, ... and 9980 more); add examples or drop those labels" in lines[0]
