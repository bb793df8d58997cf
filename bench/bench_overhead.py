"""Where the default run's wall time goes: training, evaluation, data, and everything else.

Runs ``gptops run`` (the README's command 1) on a new workspace, then again with nothing
changed, each in a new process as a user would, and splits the first run's wall time using
what the run itself recorded:

- training: the training loops' own seconds (``result.json`` of pretrain, fine-tune, SFT);
- evaluation: the ``evaluate`` task (Prefect task run, from the workspace's Prefect database),
  split into its parts by the final progress line of each ``evaluate: ...`` phase in the run's
  log (perplexity, benchmark items and benchmarks, samples, classifier test, SFT and base-model
  completions; the rest: loading models and libraries);
- data: the ``ingest``, ``clean`` and ``tokenize`` tasks (DVC stages);
- everything else: the rest of the wall time (interpreter and library start-up, the Prefect
  server, MLflow set-up, the training steps' model building, registration, the summary).

Usage: ``python bench/bench_overhead.py [--set k=v ...] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.layout import Workspace  # noqa: E402

TRAINING = ("pretrain", "finetune", "sft")
DATA = ("ingest", "clean", "tokenize")


def run(ws: Path, sets: list[str]) -> float:
    """Wall seconds of one `gptops run` in a new process (fails loudly)."""
    cmd = [str(Path(sys.executable).parent / "gptops"), "run", "-w", str(ws),
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "GPTOPS_PROGRESS": "plain", "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ws.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (ws.parent / "run.log").open("a").write(out.stdout + out.stderr)
    if out.returncode != 0:
        sys.exit(f"gptops run failed ({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return wall


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def task_seconds(ws: Path) -> dict[str, float]:
    """Seconds of each task of the workspace's latest flow run (its Prefect database)."""
    con = sqlite3.connect(f"file:{Workspace(ws).prefect_db}?mode=ro", uri=True)
    try:
        (flow_run,) = con.execute("SELECT id FROM flow_run ORDER BY start_time DESC "
                                  "LIMIT 1").fetchone()
        rows = con.execute("SELECT name, start_time, end_time FROM task_run WHERE "
                           "flow_run_id = ? AND end_time IS NOT NULL", (flow_run,)).fetchall()
    finally:
        con.close()
    out: dict[str, float] = {}
    for name, start, end in rows:
        out[name] = out.get(name, 0.0) + (_stamp(end) - _stamp(start)).total_seconds()
    return out


_ELAPSED = re.compile(r"elapsed ((?:\d+[hms] ?)+)")
_UNIT = {"h": 3600, "m": 60, "s": 1}


def _phase_seconds(line: str) -> tuple[str, float] | None:
    """(phase, seconds) of a phase's final progress line, e.g. ``evaluate: perplexity: batch
    50/50 (100%) | elapsed 1m 02s | done`` (the name without its parenthesis); else None."""
    found = _ELAPSED.search(line)
    if not line.endswith("| done") or found is None:
        return None
    name = re.sub(r" \(.*\)$", "", line.split(" | ")[0].rsplit(":", 1)[0])
    seconds = sum(int(n) * _UNIT[u] for n, u in re.findall(r"(\d+)([hms])", found.group(1)))
    return name, float(seconds)


def eval_parts(ws: Path) -> dict[str, float]:
    """Seconds of each ``evaluate: ...`` phase (summed over models) of the latest flow run's
    ``evaluate`` task, from its log in the workspace's Prefect database."""
    con = sqlite3.connect(f"file:{ws / '.gptops' / 'prefect.db'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT log.message FROM log JOIN task_run ON log.task_run_id = task_run.id "
            "WHERE task_run.name = 'evaluate' AND task_run.flow_run_id = (SELECT id FROM "
            "flow_run ORDER BY start_time DESC LIMIT 1) AND log.name = 'gpt.progress'"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, float] = {}
    for (message,) in rows:
        part = _phase_seconds(message) if message.startswith("evaluate") else None
        if part is not None:
            out[part[0]] = out.get(part[0], 0.0) + part[1]
    return out


def loop_seconds(ws: Path) -> dict[str, float]:
    """The training loops' own seconds, per step (their result.json)."""
    out = {}
    for step in TRAINING:
        for result in Workspace(ws).runs.joinpath(step).glob("*/result.json"):
            out[step] = out.get(step, 0.0) + float(json.loads(result.read_text())["seconds"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="an override for both runs, e.g. train.max_steps=100")
    ap.add_argument("--keep", type=Path, help="keep the workspace here (default: a temp folder)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="gptops-overhead-"))
    base.mkdir(parents=True, exist_ok=True)
    ws = base / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    first = run(ws, args.sets)
    tasks, loops, parts = task_seconds(ws), loop_seconds(ws), eval_parts(ws)
    second = run(ws, args.sets)
    training = sum(loops.values())
    evaluation = tasks.get("evaluate", 0.0)
    data = sum(tasks.get(s, 0.0) for s in DATA)
    rest = first - training - evaluation - data
    rows = [("training loops (" + ", ".join(f"{k} {v:.0f} s" for k, v in loops.items()) + ")",
             training), ("evaluation (task)", evaluation), ("data stages (tasks)", data),
            ("everything else", rest)]
    print(f"first run: {first:.1f} s wall ({' '.join(args.sets) or 'defaults'})")
    for name, seconds in rows:
        print(f"  {name:<60} {seconds:7.1f} s  {100 * seconds / first:5.1f} %")
        if name.startswith("evaluation"):
            rest_of_task = evaluation - sum(parts.values())
            for part, sec in [*sorted(parts.items(), key=lambda kv: -kv[1]),
                              ("rest of the task (loading models, libraries)", rest_of_task)]:
                print(f"    {part:<58} {sec:7.1f} s  {100 * sec / first:5.1f} %")
    print("  training steps' tasks around their loops: "
          + ", ".join(f"{s} {tasks.get(s, 0) - loops.get(s, 0):.1f} s" for s in TRAINING))
    print(f"  register task: {tasks.get('register', 0):.1f} s")
    print(f"second run, nothing changed: {second:.1f} s = {100 * second / first:.1f} % of the "
          "first")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
