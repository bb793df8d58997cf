"""Benchmarks through lm-evaluation-harness in the real pipeline: the built-in suite's items come
from validation documents only, scores are logged to MLflow and shown, a user's task folder runs
through the same harness."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import RUN_OVERRIDES

pytestmark = pytest.mark.slow


def _ws_params(ws: Path, *extra: str):
    from gpt.config import load_params

    return load_params(ws / "params.yaml", "tiny", [*RUN_OVERRIDES, *extra])


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_no_item_text_occurs_in_the_training_split(pipeline_run):
    """Every item is built from a validation document, and no item's text (passage + answer,
    and each ending) occurs in any training document, the text the training tokens encode."""
    from gpt import benchmarks as bm
    from gpt.data.loader import is_val_doc
    from gpt.data.shards import read_parts
    from gpt.pipeline.paths import Inputs, RunPaths
    from gpt.pipeline.steps import bench_fits

    ws, *_ = pipeline_run
    meta = json.loads((ws / "data/tokens/meta.json").read_text())
    docs = read_parts(ws / "data/clean", "clean", columns=["doc_id", "text"])
    val = [is_val_doc(d, meta["val_fraction"], meta["seed"]) for d in docs["doc_id"]]
    train_text = "\n".join(_norm(t) for t, v in zip(docs["text"], val, strict=True) if not v)
    split = (ws / "data/clean", meta["val_fraction"], meta["seed"])
    params = _ws_params(ws)
    fits = bench_fits(Inputs(RunPaths(ws), params).hf_tokenizer, params.model.block_size)
    items = bm.build_items(bm.validation_docs(*split), 0, 1337,
                           (t for _, t in bm.split_docs(*split, val=False)), fits=fits,
                           ngram=params.clean.decontaminate_ngram)
    # the items this run scored are the first of these
    built = next((ws / ".gptops/runs/bench-items").iterdir())
    for task in bm.BUILTIN:
        rows = [json.loads(x) for x in (built / f"{task}.jsonl").read_text().splitlines()]
        assert rows == items[task][:len(rows)] and len(rows) == 8
    val_ids = {d for d, v in zip(docs["doc_id"], val, strict=True) if v}
    texts = [f"{it['context']} {it['target']}" for it in items[bm.CLOZE]]
    texts += [f"{it['context']} {e}" for it in items[bm.CHOICE] for e in it["endings"]]
    assert len(items[bm.CLOZE]) > 20 and len(texts) > 100
    assert {it["doc_id"] for t in bm.BUILTIN for it in items[t]} <= val_ids
    leaked = [t for t in texts if _norm(t) in train_text]
    assert not leaked, leaked[:3]
    # the check can fail: the same kind of passage cut from a training document is found
    train_doc = next(t for t, v in zip(docs["text"], val, strict=True) if not v
                     and len(t.split()) > 60)
    control = bm.cloze_item("train", train_doc, 1337)
    assert _norm(f"{control['context']} {control['target']}") in train_text


def test_benchmark_scores_are_logged_to_mlflow_and_printed(pipeline_run):
    from mlflow import MlflowClient

    from tests.e2e.test_pipeline import gptops

    ws, first, second = pipeline_run
    for kind in ("base", "sft"):
        e = first["evaluation"][kind]
        names = {k for k in e["metrics"] if k.startswith("bench.")}
        assert names == {"bench.gptops_cloze.acc", "bench.gptops_cloze.perplexity",
                         "bench.gptops_choice.acc", "bench.gptops_choice.acc_norm"}
        assert e["higher_is_better"]["bench.gptops_cloze.perplexity"] is False
        assert e["metrics"]["baseline_bench.gptops_choice.acc_norm"] == 0.25
        assert e["benchmarks"]["n-samples"]["gptops_choice"]["effective"] == 8  # the limit
        reg = first["registered"][kind]
        cl = MlflowClient(first["tracking_uri"])
        run = cl.get_run(reg["run_id"])
        assert names <= set(run.data.metrics)
        arts = {a.path for a in cl.list_artifacts(reg["run_id"], "eval")}
        assert {"eval/lm_eval_results.json", "eval/benchmarks.json"} <= arts
        mv = cl.get_model_version(reg["name"], reg["version"])
        assert "metric.bench.gptops_choice.acc_norm" in mv.tags
        assert "bench.gptops_choice.acc_norm" in mv.description  # the model card
    assert second["evaluation"] == first["evaluation"]  # reused, benchmarks included
    out = gptops("evaluate", *[a for o in RUN_OVERRIDES for a in ("--set", o)], cwd=ws)
    assert out.returncode == 0, out.stderr
    # (table cells are separated by box-drawing characters)
    assert re.search(r"base\W+bench\.gptops_choice\.acc_norm\W+[\d.]+\W+0\.25", out.stdout)
    assert "sft" in out.stdout and "bench.gptops_cloze.perplexity" in out.stdout


def test_a_user_task_folder_runs_through_the_real_harness(pipeline_run, tmp_path):
    """A folder of the user's own lm-eval YAMLs (a loglikelihood cloze and a multiple choice)
    scored on the run's base model: every metric comes back as bench.<task>.<metric>, and a
    task whose answer is always right scores 1.0 where one always wrong scores 0."""
    from gpt import benchmarks as bm
    from gpt.dvc_repo import data_version
    from gpt.pipeline import keys, steps
    from gpt.pipeline.paths import Inputs, RunPaths

    ws, *_ = pipeline_run
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"q": f"item {i}: the answer is", "choices": ["the", "the the the the the"],
             "label": i % 2} for i in range(6)]
    (tasks / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("my_choice", "my_pick"):
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {tasks / 'mine.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
            "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    (tasks / "my_cloze.yaml").write_text(
        f"task: my_cloze\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'mine.jsonl'}\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: ' the'\nmetric_list:\n  - metric: perplexity\n"
        "  - metric: acc\n")
    params = _ws_params(ws, "evaluate.builtin_benchmarks=false",
                        f"evaluate.benchmark_dirs=[{tasks}]")
    inputs = Inputs(RunPaths(ws), params)
    version = data_version(ws)
    model = inputs.language_model(keys.pretrain(params, version))
    t0 = time.perf_counter()
    out = steps._benchmarks(inputs, params, version, model)
    seconds = time.perf_counter() - t0
    m = out["metrics"]
    assert set(m) == {"bench.my_choice.acc", "bench.my_pick.acc", "bench.my_cloze.acc",
                      "bench.my_cloze.perplexity"}, m
    # a multiple choice between a likely and an unlikely continuation: the model picks the
    # same one for every item, so with labels alternating it scores exactly one half
    assert m["bench.my_choice.acc"] == m["bench.my_pick.acc"] == 0.5
    assert 0 <= m["bench.my_cloze.acc"] <= 1 and m["bench.my_cloze.perplexity"] > 1
    assert out["benchmarks"]["results"]["my_cloze"]["alias"] == "my_cloze"
    assert seconds < 120
    # the built-in YAMLs are scored from the same kind of folder
    assert sorted(bm.task_names(tasks)) == ["my_choice", "my_cloze", "my_pick"]
