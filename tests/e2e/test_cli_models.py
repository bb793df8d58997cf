"""Using registered models from the CLI and from Python, as a user would after `gptops run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

GPTOPS = str(Path(sys.executable).parent / "gptops")
LONG = "the connection pool of a server " * 700  # ~5,000 words, far past block_size


def gptops(*args: str, cwd: Path, stdin: str | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([GPTOPS, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, input=stdin, env={**environ, **env})


def test_evaluate_prints_a_table_and_json_on_request(pipeline_run):
    from tests.conftest import RUN_OVERRIDES

    ws, first, _ = pipeline_run
    # the same run values as the flow's (its overrides were one-off, not kept in params.yaml)
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    out = gptops("evaluate", "-w", str(ws), *sets, cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "val_ppl" in out.stdout and "macro_f1" in out.stdout and "rouge_l" in out.stdout
    assert len(out.stdout.splitlines()) < 40
    out = gptops("evaluate", "-w", str(ws), *sets, "--json", cwd=ws)
    data = json.loads(out.stdout)
    assert data["task"]["labels"] == first["evaluation"]["task"]["labels"]
    # Another sft.task_type re-evaluates the SFT model alone, with that type's metrics.
    out = gptops("evaluate", "-w", str(ws), *sets, "--set", "sft.task_type=translate", "--json",
                 cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads(out.stdout)
    sft = again["sft"]["metrics"]
    assert {k for k in sft if not k.startswith(("bench.", "baseline_"))} == {
        "chrf", "bleu", "exact_match", "token_f1"}
    assert 0 <= sft["chrf"] <= 100 and "baseline_chrf" in sft
    assert again["sft"]["key"] != data["sft"]["key"]
    assert again["task"] == data["task"] and again["base"]["key"] == data["base"]["key"]


def test_predict_with_the_registered_classifier_handles_long_inputs(pipeline_run):
    ws, first, _ = pipeline_run
    out = gptops("predict", "-w", str(ws), "--json", "Run an asyncio event loop", LONG,
                 cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["label"] in first["evaluation"]["task"]["labels"] for r in rows] == [True, True]
    assert all(0 < r["score"] <= 1 for r in rows)


def test_generate_refuses_a_classifier_and_takes_a_version(pipeline_run):
    ws, *_ = pipeline_run
    out = gptops("generate", "hi", "-w", str(ws), "--model", "gptops-package-clf", cwd=ws)
    assert out.returncode == 2
    assert "is a text-classification model, not text-generation" in out.stdout
    out = gptops("generate", "Return the", "-n", "8", "--version", "1", "-w", str(ws), cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("Return the")
    out = gptops("generate", "x", "--version", "9", "-w", str(ws), cwd=ws)
    assert out.returncode == 2 and "has no version '9'" in out.stdout


def test_export_gives_a_folder_transformers_pipelines_load(pipeline_run, tmp_path):
    from transformers import pipeline

    ws, first, _ = pipeline_run
    clf_dir, lm_dir = tmp_path / "clf", tmp_path / "lm"
    out = gptops("export", str(clf_dir), "--model", "gptops-package-clf", "-w", str(ws), cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    label = pipeline("text-classification", model=str(clf_dir), truncation=True)(LONG)[0]
    assert label["label"] in first["evaluation"]["task"]["labels"]
    assert gptops("export", str(lm_dir), "-w", str(ws), cwd=ws).returncode == 0
    text = pipeline("text-generation", model=str(lm_dir))("Return the", max_new_tokens=8,
                                                           do_sample=False)
    assert text[0]["generated_text"].startswith("Return the")
    again = gptops("export", str(lm_dir), "-w", str(ws), cwd=ws)  # never overwrites
    assert again.returncode == 2 and "is not empty" in again.stdout


def test_models_shows_whole_names_at_80_columns(pipeline_run):
    ws, *_ = pipeline_run
    out = gptops("models", "-w", str(ws), cwd=ws, COLUMNS="80")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gptops-package-clf" in out.stdout and "…" not in out.stdout


def test_readme_python_snippet_loads_the_champion(pipeline_run):
    """The README's "Use a model from Python" snippet, run as written (from another folder)."""
    ws, *_ = pipeline_run
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = readme.split("<!-- python-snippet -->")[1].split("```python")[1].split("```")[0]
    code = snippet.replace("/path/to/workspace", str(ws))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ws.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()
    assert not (ws.parent / "mlflow.db").exists()  # no stray empty store next to the user


def test_readme_mlflow_models_serve_example_answers(pipeline_run):
    """`mlflow models serve` as the README shows it, queried over HTTP, then stopped."""
    import signal
    import time
    import urllib.request

    from tests.serving import free_port

    ws, first, _ = pipeline_run
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"MLFLOW_TRACKING_URI": first["tracking_uri"],
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    proc = subprocess.Popen(["mlflow", "models", "serve", "-m",
                             "models:/gptops-package-clf@champion", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=ws, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(1)
        body = json.dumps({"inputs": ["Run an asyncio event loop", "Parse an e-mail header"]})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        labels = [row["label"] for row in answer["predictions"]]
        assert len(labels) == 2 and set(labels) <= set(first["evaluation"]["task"]["labels"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_models_reads_the_registry_as_mlflow_does(pipeline_run):
    """The light SQLite read behind `gptops models` gives MlflowClient's rows and histories."""
    from gpt.registry import champion_history, client, list_versions, resolve_tracking_uri
    from gpt.registry.governance import HISTORY_TAG
    from gpt.registry.listing import read_model_tags, read_versions, sqlite_path

    ws, *_ = pipeline_run
    uri = resolve_tracking_uri("", ws)
    path = sqlite_path(uri)
    assert path is not None and path.is_file()
    mlflow_client = client(uri)
    expected, histories = [], []
    for rm in mlflow_client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in mlflow_client.search_model_versions(f"name='{rm.name}'"):
            expected.append({"name": rm.name, "version": str(mv.version),
                             "aliases": sorted(aliases.get(str(mv.version), [])),
                             "run_id": mv.run_id, "tags": dict(mv.tags)})
        assert read_model_tags(path)[rm.name].get(HISTORY_TAG) == rm.tags.get(HISTORY_TAG)
        histories.append(champion_history(uri, rm.name))
    expected.sort(key=lambda r: (r["name"], int(r["version"])))
    assert len(expected) >= 3 and any(histories)
    assert read_versions(path) == expected == list_versions(uri)
    assert read_versions(path, "gptops-base") == [r for r in expected
                                                  if r["name"] == "gptops-base"]


def test_models_json_and_status_columns(pipeline_run):
    ws, *_ = pipeline_run
    out = gptops("models", "-w", str(ws), "--json", cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    base = [r for r in data["versions"] if r["name"] == "gptops-base"]
    assert base and "champion" in base[0]["aliases"]
    table = gptops("models", "-w", str(ws), cwd=ws, COLUMNS="80").stdout
    assert "parent" in table and "gptops-base/1" in table  # tuned models name their base
    assert base[0]["tags"]["code_hash"][:8] in table  # the code column
    # metrics with 4 significant digits, never 7
    import re

    values = re.findall(r"(?:val_ppl|macro_f1|rouge_l)=([0-9.e+-]+)", table)
    assert values and all(len(v.replace(".", "").lstrip("0")) <= 4 for v in values), values
    unknown = gptops("models", "-w", str(ws), "--name", "nope", cwd=ws)
    assert unknown.returncode == 2 and "registered models: gptops-base" in unknown.stdout


@pytest.mark.parametrize("args, says", [
    (["--alias", "nope"], "has no alias 'nope'"), (["--version", "9"], "has no version '9'"),
    (["--model", "nope"], "no registered model 'nope'")])
def test_a_mistyped_reference_is_refused_before_mlflow_or_torch_load(pipeline_run, args, says):
    """A wrong alias, version or model of the workspace's registry is one line, read straight
    from its SQLite file: neither MLflow nor torch is imported for it."""
    ws, *_ = pipeline_run
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", "generate",
                          "hi", "-w", str(ws), *args], capture_output=True, text=True,
                         timeout=120, cwd=ws)
    assert out.returncode == 2 and says in out.stdout, out.stdout + out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mlflow" not in imported and "torch" not in imported
