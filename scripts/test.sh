#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: unit, integration, e2e, browser.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
    || echo "warning: could not install chromium; browser tests will fail" >&2
fi
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
