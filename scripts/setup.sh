#!/usr/bin/env bash
# Set up .venv with everything gptops needs (idempotent; fast when nothing changed).
# CPU machines get the CPU build of torch 2.13.0; machines with an NVIDIA driver get CUDA torch.
# One line per step; pip's own output goes to .venv/setup.log (shown when a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LOG=.venv/setup.log

say() { echo "setup: $*"; }
# Run a step quietly; on failure show the end of its log and stop.
step() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 30 "$LOG" >&2
    echo "setup: the whole log is $LOG" >&2
    return 1
  fi
}

if [ -x .venv/bin/python ]; then
  say "venv .venv ($(.venv/bin/python --version 2>&1)): present"
else
  say "venv .venv: creating with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
: >"$LOG"
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# A new venv has the interpreter's bundled pip (23.x here, with known advisories): upgrade it once.
if ! .venv/bin/python -c "import pip, sys; sys.exit(int(pip.__version__.split('.')[0]) < 25)"; then
  say "pip: upgrading to >= 25"
  step "${PIP[@]}" install --upgrade "pip>=25" \
    || say "warning: could not upgrade pip in .venv (offline?); continuing"
fi
if .venv/bin/python -c "import torch" 2>/dev/null; then
  say "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'): present"
elif command -v nvidia-smi >/dev/null 2>&1; then
  say "torch: installing a CUDA build (an NVIDIA driver is present; a few GB)"
  step "${PIP[@]}" install "torch>=2.10"
else
  say "torch: installing the CPU build 2.13.0 (no NVIDIA driver)"
  # On this kind of machine pip finds the small CPU wheel on disk; elsewhere use PyTorch's CPU index.
  step "${PIP[@]}" install "torch==2.13.0" \
    || step "${PIP[@]}" install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
stamp=.venv/.gptops-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "gptops and its dependencies: up to date"
else
  extras=dev
  command -v nvidia-smi >/dev/null 2>&1 && extras=dev,gpu  # GPU system metrics (NVML)
  say "gptops and its dependencies: installing (editable, extras: $extras, versions pinned by constraints.txt; a few minutes)"
  step "${PIP[@]}" install -c constraints.txt -e ".[$extras]"
  echo "$want" > "$stamp"
fi
say "Prefect and MLflow: empty databases for new workspaces (so their first run need not migrate them)"
step .venv/bin/python -c "from flows.server import make_blank_database as m; assert m()" \
  || say "warning: could not prepare Prefect's; each new workspace's first run migrates its own"
step .venv/bin/python -c "from gpt.registry.tracking import make_blank_store as m; assert m()" \
  || say "warning: could not prepare MLflow's; each new workspace's first run migrates its own"
say "done in $((SECONDS - start)) s; run .venv/bin/gptops, or source .venv/bin/activate first"
