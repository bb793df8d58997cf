"""`--help` reads as plain help: no `<bool>` after flags, no literal double backticks, usage
lines name arguments as `MODEL VERSION`, not typer's `{model} {version}`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

COMMANDS = [[], ["run"], ["export"], ["promote"], ["generate"], ["data", "clean"], ["serve"],
            ["register-checkpoint"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gptops")
def test_help_is_plain(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "flows.cli", *command, "--help"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Usage: " in text
    assert "<bool>" not in text
    assert "``" not in text
    assert not re.search(r"\{[a-z_]+\}", text), text
