"""Seconds a user waits for `gptops generate`, `predict`, `export` and a refused alias.

Each repeat runs, alternately, the command as it is (``gptops ...``, a new process) and the
path it replaced (the same work through MLflow: ``mlflow.transformers.load_model`` of
``models:/<name>@champion``, then the same generation, classification or ``save_pretrained``),
also in a new process. ``generate`` is timed to its first generated character on stdout; the
others to their exit. The table gives medians.

Run on a workspace after `gptops run`:
``.venv/bin/python bench/bench_cli.py -w WORKSPACE`` (``--repeats 3``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Return the"
#: The replaced path: MLflow loads the components, then the same work as the command.
OLD = r'''
import logging, sys, torch, mlflow
from gpt.cli import _params, _tracking_uri
from gpt.pipeline.candidates import model_name
from gpt.registry.tracking import global_uri
what, ws, arg = sys.argv[1:4]
params = _params(ws)
uri = _tracking_uri(ws, params)
name = model_name("task" if what == "predict" else "base", params)
with global_uri(uri):
    comps = mlflow.transformers.load_model(f"models:/{name}@champion", return_type="components")
if what == "generate":
    from gpt.hf import from_hf_lm
    model, tok = from_hf_lm(comps["model"]), comps["tokenizer"]
    x = torch.tensor([tok(arg)["input_ids"]])
    sys.stdout.write(arg)
    for t in model.generate_stream(x, 20, temperature=0.8, top_k=50, top_p=0.95):
        sys.stdout.write(tok.decode([int(t[0, 0])]) or "?")
        sys.stdout.flush()
elif what == "predict":
    from gpt.registry import classify
    print(classify(comps, [arg]))
else:
    comps["model"].save_pretrained(arg)
    comps["tokenizer"].save_pretrained(arg)
'''


def first_output(cmd: list[str], after: int) -> float:
    """Seconds until ``cmd`` has written more than ``after`` bytes to stdout (then waits)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got, seconds = b"", float("nan")
    while len(got) <= after:
        chunk = proc.stdout.read(1)
        if not chunk:
            break
        got += chunk
    else:
        seconds = time.perf_counter() - t0
    proc.stdout.read()
    proc.wait()
    return seconds


def to_exit(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-w", "--workdir", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ws = str(args.workdir.resolve())
    gptops = str(Path(sys.executable).parent / "gptops")
    old = [sys.executable, "-c", OLD]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    times: dict[str, list[float]] = {}
    n = len(PROMPT.encode())

    def out(i: int) -> str:
        path = tmp / f"export-{i}-{len(times.get('export now', []))}"
        shutil.rmtree(path, ignore_errors=True)
        return str(path)

    cases = {
        "generate: first token": (
            lambda: first_output([gptops, "generate", PROMPT, "-w", ws, "-n", "20"], n),
            lambda: first_output([*old, "generate", ws, PROMPT], n)),
        "predict": (lambda: to_exit([gptops, "predict", "import os", "-w", ws]),
                    lambda: to_exit([*old, "predict", ws, "import os"])),
        "export": (lambda: to_exit([gptops, "export", out(0), "-w", ws]),
                   lambda: to_exit([*old, "export", ws, out(1)])),
        "refused alias": (lambda: to_exit([gptops, "generate", "x", "-w", ws, "--alias", "nope"]),
                          None),
    }
    for r in range(args.repeats):
        for label, (now, before) in cases.items():
            pair = [("now", now), ("before", before)]
            for side, fn in pair if r % 2 == 0 else pair[::-1]:
                if fn is not None:
                    times.setdefault(f"{label} {side}", []).append(fn())
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats, medians (s)")
    print("| command | now | before (MLflow path) |\n|---|---|---|")
    for label in cases:
        now = statistics.median(times[f"{label} now"])
        before = times.get(f"{label} before")
        print(f"| {label} | {now:.2f} | {statistics.median(before):.2f} |" if before
              else f"| {label} | {now:.2f} | |")


if __name__ == "__main__":
    main()
