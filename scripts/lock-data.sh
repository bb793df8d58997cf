#!/usr/bin/env bash
# Regenerate the committed dvc.lock after an edit of a data stage's code or params (what the
# dvc.lock tests ask for): runs the data stages at the project root as `gptops run` does, with the
# committed params.yaml; DVC re-runs only the stages whose deps or params changed. Then commit
# dvc.lock. PYTHON picks the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! git diff --quiet -- params.yaml dvc.yaml; then
  echo "lock-data: params.yaml or dvc.yaml has uncommitted changes; dvc.lock must record the" \
    "committed ones (commit or stash them first)" >&2
  exit 2
fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY'
from pathlib import Path

from gpt.dvc_repo import STAGES, ensure_workspace, run_stage

ws = ensure_workspace(Path("."))
for stage in STAGES:
    print(f"lock-data: {stage}: {'ran' if run_stage(ws, stage).ran else 'unchanged'}")
PY
git diff --stat -- dvc.lock
