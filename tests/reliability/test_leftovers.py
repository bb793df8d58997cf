"""Scenario 12: what killed or hostile runs leave behind.

- a clean killed with SIGKILL leaves ``data/.clean.tmp-<pid>``: the next stage run removes it
  (a live process's temp folder is left alone);
- a checkpoint whose state file is a malicious pickle (manifest hashes forged to match) is
  refused in one warning line, never executed, and training resumes from the previous valid
  checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability


def test_a_killed_stage_leaves_no_temp_folder_for_the_next_run(tmp_path):
    from gpt.data.stages import atomic_dir

    final = tmp_path / "data" / "clean"
    final.parent.mkdir()
    code = ("import sys, time; from pathlib import Path; from gpt.data.stages import atomic_dir\n"
            f"with atomic_dir(Path({str(final)!r})) as t:\n"
            "    (t / 'docs.parquet').write_bytes(b'half'); print('in', flush=True)\n"
            "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.stdout.readline().strip() == "in"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stale = final.parent / f".clean.tmp-{proc.pid}"
    assert stale.is_dir()  # the fault is real: the killed process left its folder
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = final.parent / f".clean.tmp-{live.pid}"
    busy.mkdir()
    try:
        with atomic_dir(final) as tmp:
            (tmp / "docs.parquet").write_bytes(b"complete")
        assert not stale.exists()
        assert busy.is_dir()  # another live run's folder is not ours to remove
        assert (final / "docs.parquet").read_bytes() == b"complete"
    finally:
        live.kill()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['GPTOPS_PWNED']}",))


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_malicious_checkpoint_is_refused_and_training_falls_back(tmp_path, monkeypatch):
    from tests.integration.pretrain_worker import build_shards

    tokens = build_shards(tmp_path / "tokens")
    worker = PROJECT_ROOT / "tests" / "integration" / "pretrain_worker.py"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"

    def train(steps: int, report: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(worker), str(tokens), str(out),
                               str(tmp_path / report), "--max-steps", str(steps)],
                              capture_output=True, text=True, timeout=300, env=env)

    assert train(20, "r1").returncode == 0  # checkpoints at steps 10 and 20
    newest = out / "checkpoints" / "ckpt-00000020"
    marker = tmp_path / "pwned"
    monkeypatch.setenv("GPTOPS_PWNED", str(marker))
    (newest / "state.pt").write_bytes(pickle.dumps({"optimizer": _Payload()}))
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["state.pt"] = _sha256(newest / "state.pt")  # forged to pass the hashes
    (newest / "manifest.json").write_text(json.dumps(manifest))

    t0 = time.perf_counter()
    resumed = train(30, "r2")
    assert resumed.returncode == 0, resumed.stderr
    assert not marker.exists(), "the pickle ran"
    warnings = [line for line in resumed.stderr.splitlines() if "skipping checkpoint" in line]
    assert len(warnings) == 1 and "state.pt holds more than tensors and plain values, " \
        "refused" in warnings[0], resumed.stderr
    assert "Traceback" not in resumed.stderr
    report = json.loads((tmp_path / "r2" / "rank0.json").read_text())
    assert report["resumed_from"] == 10  # the previous valid checkpoint
    assert time.perf_counter() - t0 < 120
