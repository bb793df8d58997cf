"""The cache key of each training step: a hash of exactly what the step reads.

DVC keys the data stages by the params and code each one lists; training follows the same rule:

- pretrain = data version + the ``model`` and ``train`` sections + a mixture's shares
  (``data.sources`` weights, which no data stage reads) (a ``model.init_from``
  checkpoint by the hash of its weights); the ``launch`` section (device, processes) is in no
  key: the global batch is the same whatever the world (:mod:`gpt.distributed`);
- fine-tune = the pretrain key + the ``finetune`` section + the content of its task files;
- SFT = the pretrain key + the training fields of ``sft`` + the content of its pairs file;
- evaluation = the model's key + what that evaluation reads (``evaluate`` for perplexity, the
  generation fields of ``sft`` for SFT, the benchmark settings and the content of the benchmark
  task folders for both; the classifier's test split is in its own key);
- every key also holds the content hash of the source files its step executes (:data:`CODE`,
  like ``deps:`` in ``dvc.yaml``), so an edit of ``gpt/model.py`` trains again, and everything
  downstream with it, while an edit of the README, the CLI or the registry code does not.

So changing ``finetune.lr`` fine-tunes again on the same base, and changing
``evaluate.ppl_batches`` only re-evaluates. Paths are not hashed, contents are: moving a task
file (or the project) changes nothing, editing it changes its key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.config import Params
from gpt.kinds import BASE, SFT, SFT_TASK_METRICS, TASK, named

#: SFT fields only the evaluation reads (the rest of the section shapes training).
SFT_EVAL_FIELDS = ("max_new_tokens", "task_type")
#: Fields that name a file: the key holds the file's content hash instead of its path.
_FILE_FIELDS = ("task_path", "test_path")


@dataclass(frozen=True)
class StepKey:
    """One step's key: which step, the hash, and what went into it (for logs and key.json)."""

    step: str
    digest: str
    reads: dict[str, Any]

    @property
    def short(self) -> str:
        return self.digest[:8]

    @property
    def code_hash(self) -> str:
        """16 hex digits over the step's own source files (the ``code_hash`` tag)."""
        return digest_of(self.reads.get("code", {}))


def digest_of(reads: dict[str, Any]) -> str:
    """16 hex digits of sha256 over ``reads`` as canonical JSON."""
    blob = json.dumps(reads, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _key(step: str, reads: dict[str, Any]) -> StepKey:
    return StepKey(step, digest_of(reads), reads)


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (``""`` for no file); a missing file is left to preflight."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return f"missing:{path}"
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: The project folder (the one holding ``gpt/``): code paths are relative to it, so a copied
#: project or a fresh clone gives the same keys.
CODE_ROOT = Path(__file__).resolve().parents[2]

_MODEL = ("gpt/model.py", "gpt/loss.py", "gpt/checkpoint.py")
_LOOP = ("gpt/train.py", "gpt/distributed.py", "gpt/data/loader.py", "gpt/data/tokenizer.py")
_TUNE = (*_MODEL, *_LOOP, "gpt/finetune.py", "gpt/lora.py", "gpt/data/shards.py")
#: The source files each step executes (``dvc.yaml``'s ``deps:`` for training), by content.
#: A folder (``.../``) stands for every file in it. ``hf`` is added where a checkpoint goes
#: through the conversion: pretraining from ``model.init_from``, tuning a registered base.
#: An evaluation's key holds its model's key, so its own files are the evaluation code only.
#: tests/unit/test_keys.py holds each step's imports to this table and :data:`NOT_COMPUTING`.
CODE: dict[str, tuple[str, ...]] = {
    BASE.step: (*_MODEL, *_LOOP),
    TASK.step: _TUNE,
    SFT.step: _TUNE,
    "evaluate": ("gpt/evaluate.py",),
    "benchmarks": ("gpt/benchmarks.py", "gpt/data/ngrams.py", "gpt/harness.py",
                   "gpt/data/shards.py", "gpt/bench_tasks/"),
    "hf": ("gpt/hf.py",),
}
#: Library files the steps import that no key hashes: how a step runs, not what it computes.
NOT_COMPUTING = {
    "gpt/__init__.py": "package marker",
    "gpt/data/__init__.py": "package marker",
    "gpt/config.py": "the params schema: the values it yields are in the key",
    "gpt/defaults.py": "the default profile's name (its values are in the key), serve's ports",
    "gpt/errors.py": "error messages",
    "gpt/kinds.py": "the names of the model kinds (labels, the keys messages name)",
    "gpt/layout.py": "where a workspace keeps its files (the files' contents are in the key)",
    "gpt/progress.py": "progress lines",
    "gpt/stopping.py": "signal handling",
    "gpt/launch.py": "starting the processes (like the launch section, in no key)",
}


def code(*parts: str) -> dict[str, str]:
    """``{relative path: sha256}`` of the files :data:`CODE` lists under ``parts``."""
    out: dict[str, str] = {}
    for name in dict.fromkeys(f for part in parts for f in CODE[part]):
        path = CODE_ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc") \
            if name.endswith("/") else [path]
        for f in files:
            out[f.relative_to(CODE_ROOT).as_posix()] = file_digest(str(f))
    return out


def _section(params: Params, name: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    values = params.model_dump(mode="json")[name]
    out = {k: v for k, v in values.items() if k not in drop and k not in _FILE_FIELDS}
    for k in _FILE_FIELDS:
        if k in values and k not in drop:
            out[k] = file_digest(values[k])
    return out


#: ``model`` fields at these values are left out of the pretrain key: they mean "feature off",
#: so a run keeps the key it had before the field existed.
_MODEL_NEUTRAL = {"init_from": "", "vocab_multiple": 1}
#: ``train`` fields that watch pretraining without changing its weights (the benchmark curve:
#: its scoring keeps the random state): in no key.
TRAIN_WATCH_FIELDS = ("bench_interval", "bench_limit")


def pretrain(params: Params, data_version: str) -> StepKey:
    """Data version + ``model`` + ``train``; with ``model.init_from``, the checkpoint's content
    hash (:func:`gpt.hf.checkpoint_digest`) instead of its name or path."""
    model = {k: v for k, v in _section(params, "model").items()
             if not (k in _MODEL_NEUTRAL and v == _MODEL_NEUTRAL[k])}
    reads: dict[str, Any] = {"data_version": data_version, "model": model,
                             "train": _section(params, "train", TRAIN_WATCH_FIELDS),
                             # a mixture's shares: what pretraining draws from each source
                             # (the data stages never read them); absent for one source
                             **({"mixture": [list(m) for m in params.data.mixture]}
                                if params.data.sources else {}),
                             "code": code(BASE.step, *(("hf",) if params.model.init_from
                                                        else ()))}
    if params.model.init_from:
        from gpt.hf import checkpoint_digest

        model["init_from"] = checkpoint_digest(params.model.init_from)
    return _key(BASE.step, reads)


def _tuned(step: str, params: Params, data_version: str, base: str | None,
           section: dict[str, Any]) -> StepKey:
    """A step tuning a base: the base's digest (default: this run's pretraining), the step's
    section and its code (with the conversion of a registered base's checkpoint)."""
    here = pretrain(params, data_version).digest
    start = base or here
    return _key(step, {"pretrain": start, step: section,
                       "code": code(step, *(("hf",) if start != here else ()))})


def finetune(params: Params, data_version: str, base: str | None = None) -> StepKey:
    """``base``: the digest of a registered base (:mod:`gpt.pipeline.base`), else pretraining."""
    return _tuned(TASK.step, params, data_version, base, _section(params, "finetune"))


def sft(params: Params, data_version: str, base: str | None = None) -> StepKey:
    return _tuned(SFT.step, params, data_version, base,
                  _section(params, "sft", ("enabled", *SFT_EVAL_FIELDS)))


#: ``evaluate`` fields of the benchmarks (the SFT evaluation reads these and no others).
BENCH_FIELDS = ("builtin_benchmarks", "max_items", "benchmarks", "benchmark_dirs")


def benchmarks(params: Params) -> dict[str, Any]:
    """What the benchmarks read: their settings, the task folders by content (not path) and the
    version of the built-in items' recipe; ``{}`` when no benchmark runs (keys stay as they were
    before benchmarks existed)."""
    e = params.evaluate
    if not e.any_benchmarks:
        return {}
    from gpt.benchmarks import ITEMS_VERSION, dirs_digest

    reads = {k: getattr(e, k) for k in BENCH_FIELDS if k != "benchmark_dirs"}
    reads["benchmark_files"] = dirs_digest(e.benchmark_dirs) if e.benchmark_dirs else ""
    if e.builtin_benchmarks:  # the items fit the model's context (gpt.benchmarks.build_items)
        reads["items_version"] = ITEMS_VERSION
        reads["items_block_size"] = params.model.block_size
        reads["items_ngram"] = params.clean.decontaminate_ngram
    return reads


def evaluation(kind: str, params: Params, data_version: str,
               base: str | None = None) -> StepKey:
    """The key of one model's evaluation (``kind``: a :mod:`gpt.kinds` name).

    Raises:
        KeyError: an unknown kind.
    """
    which = named(kind)
    bench = benchmarks(params)
    with_bench = {"benchmarks": bench, "code": code("evaluate", "benchmarks")} if bench \
        else {"code": code("evaluate")}
    if which is BASE:
        evaluate = {k: v for k, v in _section(params, "evaluate").items()
                    if k not in BENCH_FIELDS}
        return _key("evaluate-base", {"model": pretrain(params, data_version).digest,
                                      "evaluate": evaluate, **with_bench})
    if which is TASK:
        return _key("evaluate-task", {"model": finetune(params, data_version, base).digest,
                                      "code": code("evaluate")})
    sft_reads = {**{k: getattr(params.sft, k) for k in SFT_EVAL_FIELDS},
                 "max_items": params.evaluate.max_items}  # the pairs generated
    # the metrics its task type computes (gpt/kinds.py, a file no key hashes, holds the table)
    metrics = list(SFT_TASK_METRICS[params.sft.task_type])
    return _key("evaluate-sft", {"model": sft(params, data_version, base).digest,
                                 "sft": sft_reads, "metrics": metrics, **with_bench})


def model(kind: str, params: Params, data_version: str, base: str | None = None) -> StepKey:
    """The key of the training step behind a model kind (a :mod:`gpt.kinds` name).

    Raises:
        KeyError: an unknown kind.
    """
    which = named(kind)
    if which is BASE:
        return pretrain(params, data_version)
    return (finetune if which is TASK else sft)(params, data_version, base)
