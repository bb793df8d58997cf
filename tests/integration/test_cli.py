"""The CLI as a user types it: usage errors, --version, early input errors, lazy start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GPTOPS = str(Path(sys.executable).parent / "gptops")


def gptops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([GPTOPS, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("args, error", [
    (["run", "--max-step", "5"], "No such option: --max-step"),
    (["promote"], "Missing argument"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_error_prints_usage_and_one_line_with_status_2(tmp_path, args, error):
    out = gptops(*args, cwd=tmp_path)
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: gptops")
    assert lines[-1].startswith(f"Error: {error}")
    assert len(lines) <= 4


def test_version():
    from importlib.metadata import version

    out = gptops("--version", cwd=Path.cwd())
    assert out.returncode == 0
    assert out.stdout.strip() == f"gptops {version('gptops')}"


def test_unknown_profile_fails_before_anything_starts(tmp_path):
    out = gptops("run", "-w", str(tmp_path), "--profile", "nope", cwd=tmp_path)
    assert out.returncode == 2
    text = (out.stdout + out.stderr).strip()
    assert text == "error: unknown profile 'nope' (known: gpt2-124m, gpt2-continue, tiny)"
    assert not (tmp_path / ".gptops").exists()  # no Prefect server, no DVC repo, nothing


def test_unreachable_tracking_server_is_an_input_error(tmp_path):
    out = gptops("run", "-w", str(tmp_path), "--set",
                 "registry.tracking_uri=http://127.0.0.1:9/", cwd=tmp_path)
    assert out.returncode == 2
    assert "registry.tracking_uri 'http://127.0.0.1:9/': nothing answers" in out.stdout
    out = gptops("run", "-w", str(tmp_path), "--set", "registry.tracking_uri=mlfow://x",
                 cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown scheme 'mlfow'" in out.stdout


def test_help_and_doctor_do_not_import_the_heavy_stack(tmp_path):
    """`--help` and `doctor` answer without importing torch, mlflow or prefect (fast start)."""
    code = ("import sys, runpy; sys.argv = ['gptops', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('flows.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'prefect', 'transformers') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    for args in (["--help"], ["run", "--help"], ["doctor", "-w", str(tmp_path)]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert "HEAVY []" in out.stdout, (args, out.stdout[-500:], out.stderr[-500:])
