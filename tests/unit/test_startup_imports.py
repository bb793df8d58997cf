"""What a command imports before its work starts (issue 27 item 3: overhead of a run).

``gptops run`` checks every input before it starts its Prefect server, and the flow's own
imports (Prefect's engine, the steps' torch, MLflow's store) then run while that server boots;
the flow module itself imports neither torch nor pandas. The checks of a default run import no
torch (it cost 2.7 s before the server started), and no process that imports the model pays for
``torch._dynamo`` (1.2 s) unless it compiles the model. The data stages' commands (``gptops data
ingest|clean|tokenize``, a process each, started by DVC) import no torch either: it cost each of
them 1.2-1.4 s, ~4 s of every run that prepares its data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, make_workspace


def _modules_after(code: str) -> set[str]:
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, timeout=120, check=True)
    return set(out.stdout.split())


def test_the_checks_of_a_default_run_import_no_torch(tmp_path):
    mods = _modules_after(
        "from pathlib import Path\nimport flows.cli\n"
        "from gpt.pipeline.context import prepare_run\n"
        f"prepare_run(Path({str(tmp_path / 'new-ws')!r}), 'tiny', ['train.lr=0.001'], '')")
    assert "torch" not in mods and "pandas" not in mods and "mlflow" not in mods


def test_the_flow_and_its_tasks_import_no_torch_or_pandas():
    """Importing the flow (``gptops serve``'s deployment runner does, and runs each flow run in
    a process of its own) leaves torch and pandas to the first task that runs a step."""
    mods = _modules_after("import flows.pipeline, flows.tasks, flows.deploy")
    assert "prefect" in mods and "flows.tasks" in mods
    assert "torch" not in mods and "pandas" not in mods


def test_importing_the_model_and_its_loss_leaves_torch_dynamo_out():
    mods = _modules_after("import gpt.model, gpt.loss, gpt.train")
    assert "torch" in mods and "torch._dynamo" not in mods


def test_before_compile_keeps_the_loss_out_of_a_graph_and_computes_the_same():
    from gpt import loss

    logits = torch.randn(6, 11)
    targets = torch.tensor([1, 2, -1, 4, 5, 0])
    eager = loss.cross_entropy(logits, targets)
    loss.before_compile()
    loss.before_compile()  # twice: wrapped once
    assert getattr(loss._nll_sum, "_gptops_not_compiled", False)
    assert torch.equal(loss.cross_entropy(logits, targets), eager)


def test_the_data_stage_commands_import_no_torch(tmp_path):
    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    for stage in ("ingest", "clean", "tokenize"):
        code = ("import atexit, sys\n"
                "atexit.register(lambda: print('MODULES', ' '.join(sys.modules)))\n"
                f"sys.argv = ['gptops', 'data', {stage!r}]\n"
                "from flows.cli import main\nmain()")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ws, timeout=300, env={**os.environ,
                                                        "PYTHONPATH": str(PROJECT_ROOT)})
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        mods = set(out.stdout.split("MODULES", 1)[1].split())
        assert "pandas" in mods  # it did its work
        assert "torch" not in mods, f"gptops data {stage} imported torch"


def test_the_warm_up_imports_what_training_needs_once_in_the_background():
    mods = _modules_after(
        "import threading\nfrom gpt import warmup\n"
        "assert warmup.training_imports_soon(only_if_idle=False)\n"
        "assert warmup.training_imports_soon()\n"
        "assert len(warmup._started) == 1 and warmup._started[0].daemon\n"
        "warmup._started[0].join(timeout=100)\n"
        "assert not warmup._started[0].is_alive()\n"
        "from mlflow.utils import requirements_utils as r\n"
        "assert r._PACKAGES_TO_MODULES, 'the package map was not built'")
    assert set(warmup_modules()) <= mods


def warmup_modules() -> tuple[str, ...]:
    from gpt.warmup import MODULES

    return MODULES


def test_the_warm_up_waits_for_an_idle_core(monkeypatch):
    from gpt import warmup

    monkeypatch.setattr(warmup, "_started", [])
    monkeypatch.setattr(warmup, "_marked", [])  # no window measured: the load average decides
    monkeypatch.setattr(warmup.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(warmup.os, "getloadavg", lambda: (2.4, 2.0, 1.5))  # the suite's load
    assert not warmup.idle_core() and not warmup.training_imports_soon()
    assert warmup._started == []
    monkeypatch.setattr(warmup.os, "getloadavg", lambda: (0.6, 0.3, 0.2))
    assert warmup.idle_core()


def test_idle_is_measured_over_the_window_since_the_mark_not_the_load_average(monkeypatch):
    """After a busy minute the load average stays high (the README's first run comes right after
    scripts/setup.sh) while a core is idle now; and the other way round."""
    from gpt import warmup

    monkeypatch.setattr(warmup, "_marked", [])
    monkeypatch.setattr(warmup.os, "cpu_count", lambda: 2)
    clock, idle = [100.0], [5000.0]
    monkeypatch.setattr(warmup.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(warmup, "_idle_seconds", lambda: idle[0])
    monkeypatch.setattr(warmup.os, "getloadavg", lambda: (2.4, 2.0, 1.5))  # a busy minute ago
    warmup.mark()
    clock[0] += 0.2
    assert not warmup.idle_core()  # too short a window: the load average decides
    clock[0] += 1.8
    idle[0] += 1.9  # a core idle over 2 s: free now, whatever the average says
    assert warmup.idle_core()
    monkeypatch.setattr(warmup.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    warmup.mark()
    clock[0] += 2.0
    idle[0] += 0.4  # 0.2 of a core idle: both busy now
    assert not warmup.idle_core()


def test_two_busy_cores_since_the_mark_are_no_idle_core():
    """The real counters: every core spinning since the mark leaves none idle."""
    from gpt import warmup

    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)
        warmup.mark()
        time.sleep(1.0)
        assert not warmup.idle_core()
    finally:
        for p in procs:
            p.wait(timeout=30)
