"""The built-in fine-tuning task without the data it is built from fails before any training.

Before: a custom corpus with the default ``finetune.task=package``, or ``data.max_docs=300``
(100 since the built-in corpus is read with ``ast``: too few docstrings of some package),
failed only after pretraining had run. Now a custom
corpus is refused by the preflight (before the data stages), and too few documents right after
the data stages, each in one line naming the setting and the fix, with no pretraining started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability


def _run(ws: Path, *sets: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess:
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", "-w", str(ws),
                           "--max-steps", "5", *args], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                                            "GPTOPS_PROGRESS": "plain", **(env or {})})


def _error_line(r: subprocess.CompletedProcess) -> str:
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    (line,) = [ln for ln in r.stdout.splitlines() if ln.strip()]  # stdout: the one line
    return line


@pytest.mark.timeout(120)
def test_a_custom_corpus_with_the_package_task_is_refused_before_the_data_stages(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Plain sentence number {i} about the garden "
                                                  "and the weather, written for a test."}) + "\n"
                              for i in range(50)))
    ws = tmp_path / "ws"
    line = _error_line(_run(ws, f"data.source={corpus}", "sft.enabled=false"))
    assert line == (f"error: finetune.task=package needs the built-in corpus (data.source="
                    f"builtin), not data.source '{corpus}'; set finetune.task=file and "
                    "finetune.task_path=<a .csv/.jsonl/.parquet with columns text,label>")
    assert not (ws / "data").exists() and not (ws / ".gptops" / "runs").exists()


@pytest.mark.timeout(420)
def test_too_few_documents_for_the_package_task_stop_right_after_the_data_stages(
        tmp_path, prefect_server):
    ws = tmp_path / "ws"
    r = _run(ws, "data.max_docs=100", "tokenizer.vocab_size=512",
             env={"PREFECT_API_URL": prefect_server})
    line = _error_line(r)
    assert line.startswith("error: finetune.task=package cannot be built from data.max_docs=100 "
                           "documents: too few documents for "), line
    assert line.endswith("; raise data.max_docs (0 = all documents), or set finetune.task=file "
                         "and finetune.task_path=<a .csv/.jsonl/.parquet with columns "
                         "text,label>"), line
    assert (ws / "data" / "tokens").is_dir()  # the data stages ran and are kept (DVC) ...
    assert not (ws / ".gptops" / "runs").exists()  # ... and no training step started
