"""Scenario 11 (URIs): an odd, unreachable or missing tracking store fails in seconds with one
line (exit 2), from the commands that take ``--tracking-uri`` and from a pipeline run. Before:
66-215-line tracebacks, 105 s for a missing PostgreSQL database, over 150 s for a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability

URIS = {
    "http://127.0.0.1:1": "nothing answers at 127.0.0.1:1",
    "postgresql://root@127.0.0.1:5432/gptops_no_such_db": 'database "gptops_no_such_db" does '
                                                          "not exist",
    "weird://x": "unknown scheme 'weird'",
    "sqlite:////gptops-no-such-dir/x/mlflow.db": "folder /gptops-no-such-dir/x does not exist",
    "postgresql://root@127.0.0.1:notaport/db": "registry.tracking_uri",
    # MLflow 3 refuses its file store: before, a 30-line MlflowException traceback
    "file:///gptops-no-such-dir/mlruns": "MLflow's file store is in maintenance mode",
}


@pytest.mark.parametrize("uri", sorted(URIS))
@pytest.mark.parametrize("command", ["models", "run"])
def test_a_bad_tracking_uri_fails_fast_in_one_line(uri, command, tmp_path):
    args = (["models", "--tracking-uri", uri] if command == "models" else
            ["run", "-w", str(tmp_path / "ws"), "--set", f"registry.tracking_uri={uri}"])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path,
                       env={**{k: v for k, v in os.environ.items()
                               if k != "MLFLOW_ALLOW_FILE_STORE"}, "PYTHONPATH": str(PROJECT_ROOT),
                            "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / ".prefect")})
    elapsed = time.perf_counter() - t0
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, out
    assert elapsed < 15, elapsed
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert URIS[uri] in out, out
    assert not os.path.exists("/gptops-no-such-dir")
