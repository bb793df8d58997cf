"""Scenario 12: what killed or hostile runs leave behind.

- a stage killed with SIGKILL leaves half-written temp files: the next stage run removes them
  (a live process's are left alone) and resumes (``tests/integration/test_data_scale.py``);
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


def test_a_killed_stage_leaves_no_temp_files_for_the_next_run(tmp_path):
    """A process SIGKILLed while writing a shard leaves its half-written temp file (and, from
    before shards, a ``.clean.tmp-<pid>`` folder): the next run removes both and never takes
    the half-written shard for a finished one; a live process's temp folder is left alone."""
    from gpt.data.stages import _output

    final = tmp_path / "data" / "clean"
    partial = final.with_name(".clean.partial")
    code = ("import os, time; from pathlib import Path\n"
            f"p = Path({str(partial)!r}); p.mkdir(parents=True)\n"
            f"(p / '.fingerprint').write_text('v1')\n"
            f"old = Path({str(final.parent)!r}) / f'.clean.tmp-{{os.getpid()}}'; old.mkdir()\n"
            "(p / f'.part-00000.parquet.tmp-{os.getpid()}').write_bytes(b'half')\n"
            "print('in', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    half = partial / f".part-00000.parquet.tmp-{proc.pid}"
    stale = final.parent / f".clean.tmp-{proc.pid}"
    assert half.is_file() and stale.is_dir()  # the fault is real: the killed process left them
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = final.parent / f".clean.tmp-{live.pid}"
    busy.mkdir()
    try:
        with _output(final, "clean", "v1") as out:
            assert not half.exists() and not stale.exists()
            assert not out.done("part-00000.parquet")
            (out.path / "part-00000.parquet").write_bytes(b"complete")
            out.complete("part-00000.parquet")
        assert busy.is_dir()  # another live process's folder is not ours to remove
        assert (final / "part-00000.parquet").read_bytes() == b"complete"
        assert sorted(p.name for p in final.iterdir()) == ["part-00000.parquet"]
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
