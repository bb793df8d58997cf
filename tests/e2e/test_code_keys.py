"""Keys see the code: an edit of ``gpt/model.py`` trains everything again, an edit of the README
or the CLI trains nothing.

A copy of the project (its code imported from there, as from a fresh checkout elsewhere) runs
``gptops run`` on a copy of the pipeline fixture's workspace: first after appending a comment to
``README.md`` and ``gpt/cli.py`` (every step reused: the copy's keys are the original's), then to
``gpt/model.py`` (pretraining and everything downstream run again and register new versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = pytest.mark.slow

STEPS = ("pretrain", "finetune", "sft", "evaluate-base", "evaluate-task", "evaluate-sft")
#: What is not the project's source (the copy is what a clone holds, plus untracked sources).
NOT_SOURCE = {".git", ".venv", "data", ".gptops", ".dvc", "site", "mlruns", "mlartifacts",
              "test-artifacts", "metrics", ".pytest_cache", ".ruff_cache"}


def copy_project(dst: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skip | (NOT_SOURCE & set(names) if Path(folder) == PROJECT_ROOT else set())

    shutil.copytree(PROJECT_ROOT, dst, ignore=ignore, symlinks=True)
    return dst


def append_comment(path: Path) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("# an edit that changes nothing it computes\n")


def run(project: Path, ws: Path, api: str) -> str:
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets],
                         cwd=ws, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(project), "PREFECT_API_URL": api})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout + out.stderr


def step_dirs(ws: Path) -> dict[str, set[str]]:
    runs = ws / ".gptops" / "runs"
    return {s: {p.name for p in (runs / s).iterdir() if (p / "result.json").is_file()}
            for s in STEPS}


def versions(ws: Path) -> dict[str, list[dict]]:
    from gpt.registry import list_versions

    out: dict[str, list[dict]] = {}
    for v in list_versions(f"sqlite:///{ws / '.gptops' / 'mlflow.db'}"):
        out.setdefault(v["name"], []).append(v)
    return out


@pytest.fixture(scope="module")
def copies(pipeline_run, tmp_path_factory, prefect_server):
    ws, _, _ = pipeline_run
    base = tmp_path_factory.mktemp("code-keys")
    dst = base / "ws"
    shutil.copytree(ws, dst, symlinks=True)
    return copy_project(base / "project"), dst, prefect_server


def test_an_edit_of_the_readme_or_the_cli_retrains_nothing(copies):
    project, ws, api = copies
    before, registered = step_dirs(ws), versions(ws)
    append_comment(project / "README.md")
    append_comment(project / "gpt" / "cli.py")
    out = run(project, ws, api)
    for says in ("pretrain: reused", "finetune: reused", "sft: reused", "evaluate base: reused",
                 "evaluate task: reused", "evaluate sft: reused", "gptops-base: reused v",
                 "gptops-package-clf: reused v", "gptops-sft: reused v"):
        assert says in out, out[-3000:]
    assert step_dirs(ws) == before
    assert {n: len(v) for n, v in versions(ws).items()} == \
        {n: len(v) for n, v in registered.items()}


def test_an_edit_of_the_model_code_trains_everything_again(copies):
    from gpt.pipeline.keys import digest_of

    project, ws, api = copies
    before, registered = step_dirs(ws), versions(ws)
    append_comment(project / "gpt" / "model.py")
    out = run(project, ws, api)
    assert "pretrain: reused" not in out and "evaluate sft: reused" not in out
    after = step_dirs(ws)
    new = {s: after[s] - before[s] for s in STEPS}
    assert all(len(keys) == 1 for keys in new.values()), new  # one new key per step
    edited = hashlib.sha256((project / "gpt" / "model.py").read_bytes()).hexdigest()
    runs = ws / ".gptops" / "runs"
    code = {}
    for step in ("pretrain", "finetune", "sft"):
        reads = json.loads((runs / step / next(iter(new[step])) / "key.json").read_text())
        assert reads["code"]["gpt/model.py"] == edited  # key.json lists each file's hash
        code[step] = digest_of(reads["code"])
    now = versions(ws)
    for name, step in (("gptops-base", "pretrain"), ("gptops-package-clf", "finetune"),
                       ("gptops-sft", "sft")):
        assert len(now[name]) == len(registered[name]) + 1, name
        newest, first = now[name][-1]["tags"], registered[name][0]["tags"]
        assert newest["model_key"] in new[step]
        assert newest["code_hash"] == code[step] != first["code_hash"]
        assert newest["git_dirty"] == "unknown"  # the copy is not a git checkout
