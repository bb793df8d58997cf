#!/usr/bin/env bash
# Set up .venv with everything gptops needs (idempotent; fast when nothing changed).
# CPU machines get the CPU build of torch 2.13.0; machines with an NVIDIA driver get CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# A new venv has the interpreter's bundled pip (23.x here, with known advisories): upgrade it once.
.venv/bin/python -c "import pip, sys; sys.exit(int(pip.__version__.split('.')[0]) < 25)" \
  || "${PIP[@]}" install --upgrade "pip>=25" \
  || echo "warning: could not upgrade pip in .venv (offline?); continuing with $(.venv/bin/python -m pip --version)" >&2
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install "torch>=2.10"
  else
    # On this kind of machine pip finds the small CPU wheel on disk; elsewhere use PyTorch's CPU index.
    "${PIP[@]}" install "torch==2.13.0" 2>/dev/null \
      || "${PIP[@]}" install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=.venv/.gptops-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "${PIP[@]}" install -e '.[dev]'
  echo "$want" > "$stamp"
fi
