"""Scenario 1: a process killed between creating a model version and gating it.

The registering process dies (``os._exit``) right after MLflow's ``create_model_version``: the
version exists with its tags but no decision and no alias. The re-run must gate that version
(decision recorded, aliases right), not call it "reused" and not register a duplicate.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability

SCRIPT = """
import os, sys
from pathlib import Path
from mlflow import MlflowClient
from tests.integration.test_registry import register, tiny_hf

uri, name, die = sys.argv[1], sys.argv[2], sys.argv[3] == "die"
if die:
    real = MlflowClient.create_model_version
    def create_then_die(self, *a, **kw):
        real(self, *a, **kw)
        os._exit(9)  # the fault: the process is gone before the gate
    MlflowClient.create_model_version = create_then_die
model, tok = tiny_hf(Path(sys.argv[4]))
r = register(uri, name, model, tok, 10.0)
print("RESULT", r.version, r.champion, r.reused)
"""


def _register(uri: str, tmp_path, die: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, uri, "m", "die" if die else "live",
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def test_a_version_left_ungated_by_a_crash_is_gated_on_the_rerun(tmp_path):
    from gpt import registry

    uri = registry.default_tracking_uri(tmp_path)
    crashed = _register(uri, tmp_path, die=True)
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    cl = registry.client(uri)
    (v,) = cl.search_model_versions("name='m'")
    assert "promotion_decision" not in v.tags and not cl.get_model_version("m", "1").aliases

    rerun = _register(uri, tmp_path, die=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "RESULT 1 True False" in rerun.stdout  # v1 itself, gated now: the first champion
    assert "was registered but never gated" in rerun.stderr
    versions = cl.search_model_versions("name='m'")
    assert [str(x.version) for x in versions] == ["1"]  # no duplicate
    v1 = cl.get_model_version("m", "1")
    assert v1.tags["promotion_decision"].startswith("first version")
    assert "champion" in v1.aliases

    again = _register(uri, tmp_path, die=False)
    assert "RESULT 1 True True" in again.stdout  # now an ordinary reuse
