"""The workspace's layout is stated once (gpt/layout.py), and its names on disk never change.

A renamed path would orphan every existing workspace's stores, locks and step outputs, so each
relative name is pinned here; and no other module of gpt/ or flows/ joins a ``.gptops`` path by
hand (docstrings and comments may still name the paths).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.layout import PROJECT_ROOT, Workspace
from gpt.pipeline.keys import StepKey
from gpt.pipeline.paths import RunPaths
from tests.conftest import PROJECT_ROOT as TESTS_PROJECT_ROOT

#: Every path of a workspace, relative to its root, as existing workspaces have it on disk.
PINNED = {
    "params_yaml": "params.yaml",
    "dvc_yaml": "dvc.yaml",
    "dvc_lock": "dvc.lock",
    "dvc_dir": ".dvc",
    "metrics": "metrics",
    "data": "data",
    "raw": "data/raw",
    "clean": "data/clean",
    "clean_report": "data/clean/report.md",
    "clean_stats": "data/clean_stats.json",
    "tokens": "data/tokens",
    "tokenizer": "data/tokens/tokenizer.json",
    "token_meta": "data/tokens/meta.json",
    "state": ".gptops",
    "mlflow_db": ".gptops/mlflow.db",
    "mlartifacts": ".gptops/mlartifacts",
    "prefect_db": ".gptops/prefect.db",
    "prefect_home": ".gptops/prefect-home",
    "prefect_server_log": ".gptops/prefect-server.log",
    "prefect_start_lock": ".gptops/prefect-server.start.lock",
    "serve_file": ".gptops/serve.json",
    "logs": ".gptops/logs",
    "optuna_db": ".gptops/optuna.db",
    "watch_state": ".gptops/watch.json",
    "ingest_state": ".gptops/ingested.json",
    "lock_file": ".gptops/workspace.lock",
    "live_runs": ".gptops/live-runs",
    "params_backup": ".gptops/params.before-run.yaml",
    "dvc_remote": ".gptops/dvc-remote",
    "pushed_mark": ".gptops/dvc-remote.pushed",
    "runs": ".gptops/runs",
}


def _properties() -> set[str]:
    return {n for n, v in vars(Workspace).items() if isinstance(v, property)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_path_keeps_its_name_on_disk(name, tmp_path):
    ws = Workspace(tmp_path)
    assert getattr(ws, name) == tmp_path / PINNED[name]
    assert getattr(Workspace.relative(), name) == Path(PINNED[name])


def test_every_path_of_the_layout_is_pinned():
    assert _properties() == set(PINNED), "pin the new path's name in PINNED"


def test_paths_by_name_and_the_steps_paths_by_key(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.live_run("abc") == tmp_path / ".gptops/live-runs/abc.lock"
    assert ws.stage_error("clean") == tmp_path / ".gptops/clean.error"
    assert ws.step_dir("pretrain", "d1") == tmp_path / ".gptops/runs/pretrain/d1"
    paths = RunPaths(tmp_path)
    key = StepKey("finetune", "d2", {})
    assert paths.step(key) == tmp_path / ".gptops/runs/finetune/d2"
    assert paths.weights(key) == tmp_path / ".gptops/runs/finetune/d2/model.safetensors"
    assert paths.result(key) == tmp_path / ".gptops/runs/finetune/d2/result.json"
    assert paths.mlflow_db == ws.mlflow_db  # RunPaths is the layout, plus the steps' outputs


def test_the_project_is_the_folder_holding_gpt():
    assert PROJECT_ROOT == TESTS_PROJECT_ROOT
    assert Workspace(PROJECT_ROOT).params_yaml.is_file()
    assert Workspace(PROJECT_ROOT).dvc_yaml.is_file()


def test_the_layout_imports_nothing_of_gpt():
    code = "import sys, gpt.layout; print(sorted(m for m in sys.modules if m.startswith('gpt')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "['gpt', 'gpt.layout']"


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


#: The data stages' outputs, which only the layout (and dvc.yaml) name.
DATA_OUTS = ("data/raw", "data/clean", "data/tokens", "data/clean_stats.json")


def _builds_a_path(node: ast.Constant) -> bool:
    """A string that is (or starts) a ``.gptops`` or data output path, not a message that
    names one."""
    text = node.value
    return (text == ".gptops" or text.startswith((".gptops/", "/.gptops"))
            or ("/.gptops/" in text and " " not in text)
            or text in DATA_OUTS or text.startswith(tuple(f"{d}/" for d in DATA_OUTS)))


def test_no_module_but_the_layout_builds_a_workspace_path():
    sources = sorted(p for top in ("gpt", "flows") for p in (PROJECT_ROOT / top).rglob("*.py"))
    offenders = []
    for path in sources:
        if path == PROJECT_ROOT / "gpt" / "layout.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _strings_outside_docstrings(tree):
            if _builds_a_path(node):
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: "
                                 f"{node.value!r}")
    assert not offenders, ("build these paths with gpt.layout.Workspace: "
                           + "; ".join(offenders))
