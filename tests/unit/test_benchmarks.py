"""The built-in benchmark's items: deterministic, from validation documents only; the harness's
results flattened into ``bench.<task>.<metric>``; the preflight of benchmarks and gate metrics."""

import random

import pytest

from gpt import benchmarks as bm
from gpt.config import load_params
from gpt.errors import ConfigError, DataError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda",
         "sigma", "omega", "river", "stone", "cloud", "garden", "window", "letter", "number",
         "module", "socket", "thread", "buffer"]


def doc(i: int, n: int = 60) -> tuple[str, str]:
    rng = random.Random(i)
    return f"doc-{i}", " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def test_items_are_deterministic_whatever_the_document_order():
    docs = [doc(i) for i in range(30)]
    a = bm.build_items(docs, limit=10, seed=7)
    b = bm.build_items(list(reversed(docs)), limit=10, seed=7)
    assert a == b
    assert len(a[bm.CLOZE]) == 10 and len(a[bm.CHOICE]) == 10
    assert bm.build_items(docs, limit=10, seed=8) != a  # the seed picks documents and spots


def test_items_are_well_formed():
    docs = dict(doc(i) for i in range(30))
    items = bm.build_items(docs.items(), limit=0, seed=1)  # 0 = one per usable document
    assert len(items[bm.CLOZE]) == 30 and len(items[bm.CHOICE]) == 30
    for it in items[bm.CLOZE]:
        # the passage and its last word are the document's own text, in order
        assert f"{it['context']} {it['target']}" in docs[it["doc_id"]]
        assert it["target"].isalpha() and len(it["target"]) >= 3
    for it in items[bm.CHOICE]:
        assert len(it["endings"]) == bm.CHOICES == len(set(it["endings"]))
        true = it["endings"][it["label"]]
        assert f"{it['context']} {true}" in docs[it["doc_id"]]
    labels = {it["label"] for it in items[bm.CHOICE]}
    assert len(labels) > 1  # the true ending is not always in the same place


def test_targets_and_endings_that_do_not_fit_the_context_are_left_out():
    """lm-eval refuses a continuation longer than the model's context (an assertion deep in
    HFLM): items whose target or ending does not fit are never written."""
    docs = dict(doc(i) for i in range(40))
    fits = lambda text: len(text) <= 30  # noqa: E731 - a small model's context, in characters
    items = bm.build_items(docs.items(), limit=0, seed=1, fits=fits)
    assert items[bm.CHOICE] and items[bm.CLOZE]
    endings = [e for it in items[bm.CHOICE] for e in it["endings"]]
    assert all(fits(" " + e) for e in endings)
    assert all(len(e.split()) >= bm.MIN_ENDING_WORDS for e in endings)
    for it in items[bm.CHOICE]:  # a cut ending is still the start of the true continuation
        assert f"{it['context']} {it['endings'][it['label']]}" in docs[it["doc_id"]]
    assert all(fits(" " + it["target"]) for it in items[bm.CLOZE])
    everything = bm.build_items(docs.items(), limit=0, seed=1)
    assert max(len(e) for it in everything[bm.CHOICE] for e in it["endings"]) > 30


def test_a_passage_the_training_split_quotes_is_left_out():
    docs = [doc(i) for i in range(30)]
    items = bm.build_items(docs, limit=0, seed=3)
    quoted = items[bm.CLOZE][0]
    train = ["Some training text. " + quoted["context"][-80:] + " " + quoted["target"] + " more"]
    ngram = load_params("params.yaml").clean.decontaminate_ngram
    assert ngram == 13
    clean = bm.build_items(docs, limit=0, seed=3, train_texts=train, ngram=ngram)
    ids = {it["doc_id"] for it in clean[bm.CLOZE]}
    assert quoted["doc_id"] not in ids and len(ids) == len(items[bm.CLOZE]) - 1
    # 12 shared words are not a 13-gram: nothing is dropped for them
    twelve = " ".join(f"{quoted['context']} {quoted['target']}".split()[-12:])
    assert bm.build_items(docs, limit=0, seed=3, train_texts=[twelve], ngram=ngram) == items
    assert bm.build_items(docs, limit=0, seed=3, train_texts=train, ngram=0) == items  # off


def test_too_few_documents_is_one_clear_error():
    with pytest.raises(DataError, match="builtin_benchmarks=false"):
        bm.build_items([doc(i) for i in range(3)], limit=10, seed=1)
    with pytest.raises(DataError, match="builtin_benchmarks=false"):
        bm.build_items([doc(i, n=5) for i in range(10)], limit=10, seed=1)


def test_results_flatten_to_bench_names_without_filter_suffix_or_stderr():
    results = {"results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.3,
                                         "acc_stderr,none": "N/A", "acc_norm,none": 0.31}},
               "higher_is_better": {"hellaswag": {"acc": True, "acc_norm": True}}}
    metrics, better = bm.flatten(results)
    assert metrics == {"bench.hellaswag.acc": 0.3, "bench.hellaswag.acc_norm": 0.31}
    assert better == {"bench.hellaswag.acc": True, "bench.hellaswag.acc_norm": True}


def _params(*overrides: str):
    return load_params("params.yaml", "tiny", list(overrides))


def test_the_task_folder_digest_follows_content_not_path(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "t.yaml").write_text("task: mine\n")
    assert bm.dirs_digest([str(tmp_path / "a")]) == bm.dirs_digest([str(tmp_path / "b")])
    (tmp_path / "b" / "t.yaml").write_text("task: mine2\n")
    assert bm.dirs_digest([str(tmp_path / "a")]) != bm.dirs_digest([str(tmp_path / "b")])


def test_evaluation_keys_follow_benchmark_settings_and_task_files(tmp_path):
    from gpt.pipeline import keys

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "t.yaml").write_text("task: mine\n")
    p = _params(f"evaluate.benchmark_dirs=[{folder}]")
    for kind in ("base", "sft"):
        k = keys.evaluation(kind, p, "v1").digest
        assert keys.evaluation(kind, _params("evaluate.max_items=7"), "v1").digest != \
            keys.evaluation(kind, _params(), "v1").digest
        (folder / "t.yaml").write_text("task: mine\nnum_fewshot: 1\n")
        assert keys.evaluation(kind, p, "v1").digest != k
        (folder / "t.yaml").write_text("task: mine\n")
    # the classifier is not benchmarked: its evaluation key ignores them
    assert keys.evaluation("task", p, "v1") == keys.evaluation("task", _params(), "v1")


def test_preflight_names_a_missing_folder_and_an_unknown_gate_metric(tmp_path):
    from gpt.preflight import check_benchmarks

    check_benchmarks(_params())  # the defaults pass without importing lm-eval
    with pytest.raises(ConfigError, match="benchmark_dirs.*not a folder"):
        check_benchmarks(_params(f"evaluate.benchmark_dirs=[{tmp_path / 'nope'}]"))
    with pytest.raises(ConfigError, match="registry.gate.base lists 'bench.hellaswag.acc'"):
        check_benchmarks(_params("registry.gate.base=[bench.hellaswag.acc]"))
    with pytest.raises(ConfigError, match="registry.gate.task lists 'bench.gptops_choice.acc'"):
        check_benchmarks(_params("registry.gate.task=[bench.gptops_choice.acc]"))
    check_benchmarks(_params("registry.gate.base=[bench.gptops_choice.acc_norm, val_ppl]"))


@pytest.mark.timeout(120)
def test_an_uncached_hub_task_offline_is_named_with_how_to_cache_it(tmp_path, monkeypatch):
    from gpt.preflight import check_benchmarks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ConfigError) as err:
        check_benchmarks(_params("evaluate.benchmarks=[hellaswag]"))
    line = str(err.value)
    assert "'hellaswag'" in line and "load_dataset(" in line and "\n" not in line
    with pytest.raises(ConfigError, match="'no_such_task' is not an lm-eval task"):
        check_benchmarks(_params("evaluate.benchmarks=[no_such_task]"))
