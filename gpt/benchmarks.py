"""Benchmarks through EleutherAI's lm-evaluation-harness (lm-eval), as litgpt's ``evaluate`` does.

A language model is scored in place by ``lm_eval.simple_evaluate`` through gptops' own lm-eval
model, :class:`gpt.harness.GPTLM` (no export round-trip; contexts encoded once, the output layer
only where a token is scored, batched generation with the KV cache). lm-eval builds the requests
and computes the metrics; ``GPTLM`` answers the requests exactly as lm-eval's ``HFLM`` does on the
model's Hugging Face export (:func:`gpt.harness.export_lm_folder`, the conversion every registered
version gets),
which tests/integration/test_harness_parity.py checks.

Three kinds of tasks:

- the **built-in offline suite** (``evaluate.builtin_benchmarks``): task YAMLs shipped in
  ``gpt/bench_tasks/`` whose items :func:`build_items` makes deterministically from documents of
  the **validation split only** (never trained on): ``gptops_cloze``, a LAMBADA-style last-word
  cloze (``loglikelihood``: acc = the word is the greedy continuation, perplexity), and
  ``gptops_choice``, a HellaSwag-style choice of the true continuation among 4 (the other 3
  from other validation documents; acc, acc_norm; chance = 0.25);
- lm-eval task names (``evaluate.benchmarks``: ``lambada_openai``, ``hellaswag``...), read from
  the HF datasets cache when offline (:func:`check_hub_tasks` says which one is missing);
- folders of the user's own task YAMLs (``evaluate.benchmark_dirs``).

Metrics are named ``bench.<task>.<metric>`` (lm-eval's name without its ``,none`` filter
suffix); their direction is lm-eval's ``higher_is_better``. lm-eval is imported only here, and
only when benchmarks run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: The shipped YAMLs of the built-in suite (their items are written next to a copy).
BUILTIN_TASKS = Path(__file__).parent / "bench_tasks"
CLOZE, CHOICE = "gptops_cloze", "gptops_choice"
BUILTIN = (CLOZE, CHOICE)
#: Bumped when item building changes: part of the evaluation key and the evaluation set's hash.
ITEMS_VERSION = 4
#: Words of context before a cloze target / choice ending, and words per ending.
CONTEXT_WORDS, MIN_CONTEXT_WORDS, ENDING_WORDS, CHOICES = 32, 12, 10, 4
#: Chance level of the built-in multiple-choice task (its trivial baseline).
CHANCE = {f"bench.{CHOICE}.acc": 1 / CHOICES, f"bench.{CHOICE}.acc_norm": 1 / CHOICES}

_WORD = re.compile(r"\S+")
_TARGET = re.compile(r"[A-Za-z]{3,}")


@dataclass
class Suite:
    """What one evaluation scores: task names and the folders that define the local ones."""

    tasks: list[str]
    include: list[Path] = field(default_factory=list)
    limit: int | None = None  #: items per hub/user task (None = all)
    hub: bool = False  #: any task outside the built-in suite and the user's folders


# --- the built-in suite's items -------------------------------------------------------------


def _order(doc_id: str, seed: int, what: str) -> str:
    return hashlib.sha256(f"{seed}:{what}:{doc_id}".encode()).hexdigest()


def _words(text: str) -> list[re.Match[str]]:
    return list(_WORD.finditer(text))


def cloze_item(doc_id: str, text: str, seed: int) -> dict[str, str] | None:
    """A passage of ``text`` and the word that ends it (None: no usable passage).

    The target is an alphabetic word of 3+ letters after a single space, at least
    ``MIN_CONTEXT_WORDS`` words in; which one is seeded by the document's id.
    """
    words = _words(text)
    spots = [i for i in range(MIN_CONTEXT_WORDS, len(words))
             if _TARGET.fullmatch(words[i].group())
             and text[words[i - 1].end():words[i].start()] == " "]
    if not spots:
        return None
    i = random.Random(_order(doc_id, seed, "cloze-spot")).choice(spots)
    start = words[max(0, i - CONTEXT_WORDS)].start()
    return {"doc_id": doc_id, "context": text[start:words[i - 1].end()],
            "target": words[i].group()}


def _choice_part(doc_id: str, text: str, seed: int) -> tuple[str, str] | None:
    """(context, true ending) of one document, or None when it is too short."""
    words = _words(text)
    need = MIN_CONTEXT_WORDS + ENDING_WORDS
    if len(words) < need:
        return None
    rng = random.Random(_order(doc_id, seed, "choice-spot"))
    cut = rng.randrange(MIN_CONTEXT_WORDS, len(words) - ENDING_WORDS + 1)
    start = words[max(0, cut - CONTEXT_WORDS)].start()
    ending = " ".join(w.group() for w in words[cut:cut + ENDING_WORDS])
    return text[start:words[cut - 1].end()], ending


#: An ending is cut to fit a small model's context, but never below this many words.
MIN_ENDING_WORDS = 3


def _fitted(ending: str, fits: Callable[[str], bool]) -> str:
    """``ending``, or its longest start of at least ``MIN_ENDING_WORDS`` words that fits
    (``""``: none does)."""
    words = ending.split(" ")
    while len(words) >= MIN_ENDING_WORDS:
        if fits(" " + " ".join(words)):
            return " ".join(words)
        words.pop()
    return ""


def build_items(docs: Iterable[tuple[str, str]], limit: int, seed: int,
                train_texts: Iterable[str] = (),
                fits: Callable[[str], bool] = lambda _text: True, ngram: int = 0,
                ) -> dict[str, list[dict[str, Any]]]:
    """The built-in suite's items from validation documents ``(doc_id, text)``.

    Deterministic: documents are taken in an order seeded by ``seed`` and their ids (not by
    their position in the corpus), at most one item per document and task, ``limit`` per task
    (0 = one per usable document). A choice item's 3 wrong endings are true endings of other
    validation documents, so every word of every item is held-out text. A passage that shares a
    word ``ngram``-gram (``clean.decontaminate_ngram``; 0: none is checked) with any of
    ``train_texts`` (the training split: documents can quote each other) is left out, the words
    compared as decontamination compares them (``gpt.data.ngrams.seen_in``). An ending
    that does not ``fit`` (the model's context must hold a continuation: lm-eval refuses a
    longer one) is cut to the words that do, and a cloze target that does not fit leaves its
    item out.
    """
    docs = list(docs)
    cloze_all = [c for doc_id, text in sorted(docs, key=lambda d: _order(d[0], seed, "cloze"))
                 if (c := cloze_item(doc_id, text, seed)) is not None
                 and fits(" " + c["target"])]
    parts_all = [(doc_id, p[0], ending) for doc_id, text in
                 sorted(docs, key=lambda d: _order(d[0], seed, "choice"))
                 if (p := _choice_part(doc_id, text, seed)) is not None
                 and (ending := _fitted(p[1], fits))]
    texts = ([f"{c['context']} {c['target']}" for c in cloze_all]
             + [f"{context} {ending}" for _, context, ending in parts_all])
    from gpt.data.ngrams import seen_in

    leaked = seen_in(train_texts, texts, ngram)
    cloze = [c for i, c in enumerate(cloze_all) if i not in leaked][:limit or None]
    parts = [p for i, p in enumerate(parts_all) if len(cloze_all) + i not in leaked]
    if len(parts) < CHOICES:
        raise DataError(f"the built-in benchmark needs {CHOICES} validation documents of "
                        f"{MIN_CONTEXT_WORDS + ENDING_WORDS}+ words and found {len(parts)}; "
                        "add documents or set evaluate.builtin_benchmarks=false")
    choice: list[dict[str, Any]] = []
    for k, (doc_id, context, ending) in enumerate(parts[:limit or None]):
        rng = random.Random(_order(doc_id, seed, "choice-distractors"))
        others = [p[2] for j, p in enumerate(parts) if j != k and p[2] != ending]
        endings = rng.sample(others, CHOICES - 1)
        label = rng.randrange(CHOICES)
        endings.insert(label, ending)
        choice.append({"doc_id": doc_id, "context": context, "endings": endings,
                       "label": label})
    if not cloze:
        raise DataError("no validation document has a passage for the built-in cloze task; "
                        "add documents or set evaluate.builtin_benchmarks=false")
    return {CLOZE: cloze, CHOICE: choice}


def split_docs(clean_dir: Path, val_fraction: float, seed: int, val: bool = True,
               ) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` of the clean documents the tokenize stage put in the validation split
    (``val=False``: the training split), by the same rule: :func:`gpt.data.loader.is_val_doc`
    with the split's fraction and seed. Shard by shard."""
    from gpt.data.loader import is_val_doc
    from gpt.data.shards import parts, read_part

    for f in parts(clean_dir):
        frame = read_part(f, "clean", ["doc_id", "text"])
        for d, t in zip(frame["doc_id"].tolist(), frame["text"].tolist(), strict=True):
            if is_val_doc(d, val_fraction, seed) == val:
                yield d, t


def validation_docs(clean_dir: Path, val_fraction: float, seed: int) -> list[tuple[str, str]]:
    """``(doc_id, text)`` of the validation split's clean documents."""
    return list(split_docs(clean_dir, val_fraction, seed))


def write_builtin(items: dict[str, list[dict[str, Any]]], out: Path,
                  final: Path | None = None) -> Path:
    """The built-in tasks' items as JSONL and their YAMLs pointing at them, in ``out``
    (``final``: where ``out`` will be renamed to; the YAMLs name absolute paths)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for task, rows in items.items():
        data = out / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = yaml.safe_load((BUILTIN_TASKS / f"{task}.yaml").read_text())
        where = (Path(final) if final else out).resolve() / data.name
        spec["dataset_kwargs"] = {"data_files": {"test": str(where)}}
        (out / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


# --- the user's task folders and hub tasks -----------------------------------------------------


def yaml_files(folder: Path) -> list[Path]:
    """The task YAMLs under ``folder``, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in (".yaml", ".yml"))


def dirs_digest(dirs: Sequence[str]) -> str:
    """sha256 over every file in the task folders (YAMLs and the data they ship), by relative
    path and content: editing a task re-evaluates, moving the folder does not."""
    h = hashlib.sha256()
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            h.update(f"missing:{d}".encode())
            continue
        for p in sorted(x for x in root.rglob("*") if x.is_file()):
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def task_names(folder: Path) -> list[str]:
    """The ``task:`` names the YAMLs of a folder define."""
    import yaml

    names = []
    for p in yaml_files(folder):
        try:
            spec = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:  # lm-eval's own tags (!function): read the name line only
            m = re.search(r"^task:\s*(\S+)", p.read_text(), re.M)
            spec = {"task": m.group(1)} if m else {}
        if isinstance(spec, dict) and isinstance(spec.get("task"), str):
            names.append(spec["task"])
    return names


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _cached(dataset: str) -> bool:
    """Whether the HF datasets cache (or hub cache) holds ``dataset``."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    flat = dataset.replace("/", "___")
    return ((datasets_cache / flat).is_dir() or (datasets_cache / dataset).is_dir()
            or (hub_cache / f"datasets--{dataset.replace('/', '--')}").is_dir())


def lenient_yaml(text: str) -> dict[str, Any]:
    """A task YAML as a dict, lm-eval's ``!function`` tags read as plain strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: None)
    try:
        spec = yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _task_datasets(name: str, roots: Sequence[Path]) -> list[str] | bool:
    """The HF datasets task ``name`` reads, from the YAML that defines it (and the one it
    includes); True when no YAML defines a task of that name but one names it (a group or
    tag), False when none does (unknown).

    A text scan of lm-eval's ~14,000 YAMLs takes ~2 s; indexing them with lm-eval's
    ``TaskManager`` takes ~40 s on 2 cores, too long for a preflight.
    """
    line = re.compile(rf"^task:\s*['\"]?{re.escape(name)}['\"]?\s*$", re.M)
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    named = False
    for root in roots:
        for path in sorted(Path(root).rglob("*.y*ml")):
            text = path.read_text(errors="replace")
            if not line.search(text):
                named = named or bool(word.search(text))
                continue
            spec = lenient_yaml(text)
            if "dataset_path" not in spec and isinstance(spec.get("include"), str):
                spec = {**lenient_yaml((path.parent / spec["include"]).read_text(
                    errors="replace")), **spec}
            ds = spec.get("dataset_path")
            return [] if not ds or ds in ("json", "csv", "parquet", "text", "arrow") else [ds]
    return named


def check_hub_tasks(benchmarks: Sequence[str], dirs: Sequence[str]) -> None:
    """Each ``evaluate.benchmarks`` name is a known task whose data can be read here.

    Raises:
        ConfigError: one line naming an unknown task, or a task whose dataset is neither in
            this machine's HF cache nor downloadable (offline), and how to cache it.
    """
    for d in dirs:
        if not Path(d).expanduser().is_dir():
            raise ConfigError(f"evaluate.benchmark_dirs: {d} is not a folder; give a folder "
                              "of lm-eval task YAMLs")
    local = {n for d in dirs for n in task_names(Path(d).expanduser())}
    hub = [t for t in benchmarks if t not in local and t not in BUILTIN]
    if not hub:
        return
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise ConfigError("evaluate.benchmarks needs lm-evaluation-harness: pip install "
                          "'lm-eval>=0.4.13' accelerate")
    roots = [Path(spec.origin).parent / "tasks"]
    for name in hub:
        datasets = _task_datasets(name, roots)
        unknown = ConfigError(f"evaluate.benchmarks: '{name}' is not an lm-eval task (see "
                              "`lm-eval ls tasks`) nor defined in evaluate.benchmark_dirs")
        if datasets is False:
            raise unknown
        if datasets is True:  # a group or tag: ask lm-eval itself (slow, but exact)
            from lm_eval.tasks import TaskManager

            if name not in TaskManager().all_tasks:
                raise unknown
            continue
        if not _offline():
            continue
        for dataset in datasets:
            if not _cached(dataset):
                raise ConfigError(
                    f"evaluate.benchmarks: task '{name}' needs dataset '{dataset}', which is "
                    "not in this machine's HF cache and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is "
                    "set; cache it on a connected machine with `python -c \"import datasets; "
                    f"datasets.load_dataset('{dataset}')\"` (copy ~/.cache/huggingface here), "
                    f"or drop '{name}' from evaluate.benchmarks")


def suite(builtin_dir: Path | None, benchmarks: Sequence[str], dirs: Sequence[str],
          limit: int) -> Suite:
    """The tasks one evaluation scores (``builtin_dir``: where the built-in YAMLs were written,
    None = the built-in suite is off)."""
    include = [Path(d).expanduser().resolve() for d in dirs]
    local = {n for d in include for n in task_names(d)}
    tasks = [*(BUILTIN if builtin_dir else ()), *benchmarks]
    # A folder's tasks are all scored unless evaluate.benchmarks names some of them.
    tasks += [n for n in sorted(local) if n not in tasks and not (set(benchmarks) & local)]
    if builtin_dir:
        include.insert(0, builtin_dir)
    hub = any(t not in local and t not in BUILTIN for t in benchmarks)
    return Suite(list(dict.fromkeys(tasks)), include, limit or None, hub)


# --- scoring ------------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """The harness's answer, flattened for the registry."""

    metrics: dict[str, float]  #: ``bench.<task>.<metric>``
    higher_is_better: dict[str, bool]  #: same names
    results: dict[str, Any]  #: lm-eval's results JSON (without per-sample logs)
    seconds: float
    table: list[dict[str, Any]] = field(default_factory=list)


def flatten(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
    """``bench.<task>.<metric>`` values and directions from lm-eval's results dict
    (stderr and non-numeric entries left out)."""
    metrics: dict[str, float] = {}
    better: dict[str, bool] = {}
    hib = results.get("higher_is_better", {})
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric = key.split(",", 1)[0]
            if "," not in key or metric.endswith("_stderr") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            name = f"bench.{task}.{metric}"
            metrics[name] = float(value)
            if metric in hib.get(task, {}):
                better[name] = bool(hib[task][metric])
    return metrics, better


def _jsonable(obj: Any) -> Any:
    """lm-eval's results as plain JSON (it holds numpy numbers, callables, non-finite stderr)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, float)):
        return obj if not isinstance(obj, float) or math.isfinite(obj) else str(obj)
    try:
        return _jsonable(obj.item())
    except AttributeError:
        return str(obj)


def run_tasks(lm: Any, tasks: list[str], include: Sequence[Path | str], limit: int | None,
              seed: int, hub: bool = False) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``lm`` on ``tasks`` (task YAMLs in the ``include`` folders,
    and lm-eval's own tasks when ``hub``), seeded with ``seed`` everywhere, no samples kept, no
    bootstrap: what ``score`` runs, and what the parity test and the bench run on ``HFLM``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=[str(p) for p in include] or None, include_defaults=hub)
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), limit=limit, task_manager=tm, log_samples=False,
        bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed)


def score(model: Any, hf_tokenizer: Any, s: Suite, batch_size: int, device: str | None,
          seed: int) -> BenchResult:
    """Score ``model`` (a :class:`gpt.model.GPT`, moved to ``device`` unless None) with its
    tokenizer (a ``transformers`` fast tokenizer) on ``s``'s tasks through
    :class:`gpt.harness.GPTLM` (no downloads when offline). The random state of the caller
    (Python's, numpy's, torch's; lm-eval seeds them all) is as it was: scoring during
    pretraining changes no training result.

    Raises:
        ConfigError: lm-eval cannot load a task (naming it).
    """
    t0 = time.perf_counter()
    # lm-eval's and datasets' progress bars (tqdm) are not ours: the phase line is.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    from gpt.harness import GPTLM

    # lm-eval logs each request it truncates to the context window (a warning per item on a
    # small model) and every step at INFO: errors only, the summary line is ours.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence length is longer than ...": lm-eval truncates
    try:
        # What else lm-eval's children print (`git describe` outside a git repo: "fatal: not a
        # git repository") is kept aside and shown only with an error.
        with _stderr_aside() as aside, _random_state_kept():
            lm = GPTLM(model, hf_tokenizer, batch_size=batch_size, device=device)
            out = run_tasks(lm, s.tasks, s.include, s.limit, seed, hub=s.hub)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"lm-eval could not run the benchmarks {s.tasks}: {exc}; check "
                          "evaluate.benchmarks and the YAMLs in evaluate.benchmark_dirs"
                          f"{_tail(aside)}") from exc
    except BaseException:  # a stop or a crash: its own message, with what lm-eval printed
        if _tail(aside):
            log.warning("lm-eval stopped on %s%s", ", ".join(s.tasks), _tail(aside))
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    results = _jsonable({k: out[k] for k in ("results", "groups", "configs", "versions",
                                               "n-shot", "higher_is_better", "n-samples")
                         if k in out})
    metrics, better = flatten(results)
    table = [{"task": name.split(".")[1], "metric": name.split(".", 2)[2], "value": v,
              "higher_is_better": better.get(name)} for name, v in sorted(metrics.items())]
    return BenchResult(metrics, better, results, time.perf_counter() - t0, table)


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Python's, numpy's and torch's random states (CPU and CUDA) put back after the block."""
    import numpy as np
    import torch

    state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _stderr_aside() -> Iterator[list[str]]:
    """File descriptor 2 goes to a temp file for the block (child processes included); yields
    a list that holds what was written there once the block ends."""
    import tempfile

    sys.stderr.flush()
    kept: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept.append(tmp.read().decode(errors="replace"))


def _tail(aside: list[str]) -> str:
    text = "".join(aside).strip()
    return f" (its output: ...{text[-500:]})" if text else ""
