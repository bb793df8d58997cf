"""Issue 23 item 6: ``gptops promote`` of a version the gate rejected.

Before: ``gptops promote MODEL V`` of a version tagged ``rejected`` (worse than its trivial
baseline) made it the champion with no word. Now it is refused in one line naming the gate's
reason, exit 2; with ``--force`` it is promoted with a warning, and the champion history keeps the
override (``gptops models --history`` shows it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability


def _gptops(*args: str, cwd) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                       text=True, timeout=120, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "250"})
    return r.returncode, (r.stdout + r.stderr).strip(), time.perf_counter() - t0


@pytest.mark.timeout(300)
def test_promoting_a_rejected_version_needs_force_and_is_recorded(tmp_path):
    from gpt import registry
    from gpt.registry import gate

    uri = registry.default_tracking_uri(tmp_path)
    client = registry.client(uri)
    client.create_registered_model("m")
    spec = gate.GateSpec("val_ppl", higher_is_better=False, baseline=100.0)
    for value in (50.0, 3.5e4):  # v1 beats the baseline (champion), v2 does not (rejected)
        v = client.create_model_version("m", f"file:///nowhere/{value}").version
        gate.apply(client, "m", str(v), spec, {"val_ppl": value}, "e1")
    rejection = client.get_model_version("m", "2").tags[gate.REJECTED]
    assert rejection.startswith("rejected: val_ppl 3.5e+04 does not beat the trivial baseline")

    rc, out, elapsed = _gptops("promote", "m", "2", "-r", "looks fine", "--tracking-uri", uri,
                               cwd=tmp_path)
    assert rc == 2 and elapsed < 60, (rc, elapsed, out)
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert "version 2 was rejected by the gate (val_ppl 3.5e+04 does not beat the trivial" in out
    assert "--force" in out, out
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"

    rc, out, _ = _gptops("promote", "m", "2", "-r", "baseline is stale", "--force",
                         "--tracking-uri", uri, cwd=tmp_path)
    assert rc == 0, out
    assert "warning: m v2 was rejected by the gate (val_ppl 3.5e+04" in out, out
    assert "v1 -> v2" in out, out
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    last = json.loads(client.get_registered_model("m").tags[registry.HISTORY_TAG])[-1]
    assert last["action"] == "promote" and last["reason"] == "baseline is stale"
    assert last["overrode"].startswith("val_ppl 3.5e+04 does not beat"), last
    assert "--force over the gate's rejection" in (
        client.get_model_version("m", "2").tags["promotion_decision"])

    rc, out, _ = _gptops("models", "--history", "--tracking-uri", uri, cwd=tmp_path)
    assert rc == 0 and "promote --force" in out and "overrode the gate's rejection" in out, out
    # A version the gate did not reject is promoted as before, without --force.
    rc, out, _ = _gptops("promote", "m", "1", "-r", "back", "--tracking-uri", uri, cwd=tmp_path)
    assert rc == 0 and "warning" not in out and "v2 -> v1" in out, out
