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
if [ "$#" -gt 0 ]; then  # a selection of your own: one plain pytest run
  exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
fi
# The suite in two phases. First everything else on one worker per core (each test file whole on
# one worker; one torch thread per worker), then the tests whose bounds are a few seconds
# (marker `serial`) alone, so that no other test's load decides whether they pass.
# One torch thread per process in both: the tests run training next to servers, workers and
# (browser tests) Chromium, and torch's threads, each waiting for the slowest at every
# operation, train up to 30x slower when another process takes one of their cores.
workers="${GPTOPS_TEST_WORKERS:-$(nproc)}"  # before the export: nproc honours OMP_NUM_THREADS
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
rc=0
.venv/bin/python -m pytest -q -ra --durations=30 -n "$workers" --dist loadfile -m "not serial" \
  || rc=$?
.venv/bin/python -m pytest -q -ra --durations=15 -m serial || rc=$((rc ? rc : $?))
exit "$rc"
