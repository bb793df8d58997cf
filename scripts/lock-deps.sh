#!/usr/bin/env bash
# Refresh constraints.txt: upgrade .venv to the newest versions pyproject.toml allows, then pin
# them all (torch excepted: scripts/setup.sh picks its build). Afterwards run the tests and
# `bash scripts/lock-data.sh`: new pandas/pyarrow versions write other parquet bytes, so dvc.lock
# (and the default run's data version) change with them; commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade --upgrade-strategy eager -e ".[dev]"
head -n 4 constraints.txt >constraints.txt.new
"${PIP[@]}" freeze --exclude-editable | grep -v '^torch==' >>constraints.txt.new
mv constraints.txt.new constraints.txt
cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1 >.venv/.gptops-installed
git diff --stat -- constraints.txt
