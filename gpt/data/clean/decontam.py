"""Decontamination: training documents that share a word n-gram with an evaluation item.

As in GPT-3 (Brown et al. 2020, appendix C), a document is contaminated when it shares a word
``n``-gram (``clean.decontaminate_ngram``, 13 by default) with an item of an evaluation set; an
item shorter than ``n`` words counts when it occurs whole. Words are runs of word characters
(``\\w``), ASCII letters lowercased: punctuation, spacing and case do not hide a copy.

The evaluation sets are what the evaluations score that is not built from the corpus itself:

- ``bench:<task>``: the JSON/JSONL data of the lm-eval tasks in ``evaluate.benchmark_dirs``
  (each record's strings, joined);
- ``finetune_test``: the classifier's test rows when it trains on a file (``finetune.test_path``,
  else the test split of ``finetune.task_path``);
- ``sft_test``: the held-out prompt/completion pairs when SFT trains on a file
  (``sft.task_path``).

The built-in benchmark items are built later, from validation documents only, and those sharing
an ``n``-gram with a training document are left out there (``gpt.data.ngrams.seen_in``, the same
words and ``n``, from ``gpt.benchmarks.build_items``); the built-in fine-tuning tasks are built
from the cleaned corpus itself. Neither can be checked here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt.config import Params
from gpt.data.ngrams import eval_words
from gpt.errors import DataError

#: Multiplier of the n-gram hashes (odd: a bijection modulo 2**64).
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class EvalSets:
    """The evaluation sets' n-grams, ready to look documents up in.

    Attributes:
        n: words per n-gram (``clean.decontaminate_ngram``).
        names: the sets, in the order a document's set is chosen by (see ``EvalSets.find``).
        vocab: every word of every item, to its id.
        grams: per n-gram (of word ids; shorter for an item shorter than ``n`` words), the
            first set that has it.
        digest: a hash of the sets' items (part of the clean stage's fingerprint).
        hashes: per n-gram length, the sorted hashes of those n-grams.
    """

    n: int
    names: tuple[str, ...]
    vocab: dict[str, int]
    grams: dict[tuple[int, ...], int]
    digest: str
    hashes: dict[int, np.ndarray]

    @property
    def sizes(self) -> list[int]:
        """The n-gram lengths there are, longest first."""
        return sorted({len(g) for g in self.grams}, reverse=True)

    def find(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, the set of its first n-gram (leftmost; the longest there) that an item
        has, as an index into ``names``; -1 where there is none.

        Words are looked up in ``vocab`` text by text; the n-grams of the whole batch are then
        hashed at once (numpy) and only the few hashes some item also has are checked exactly.
        """
        out = np.full(len(texts), -1, dtype=np.int64)
        if not self.grams or not len(texts):
            return out
        ids, doc = [], []
        for i, text in enumerate(texts):
            w = [self.vocab.get(x, -1) for x in eval_words(text)]
            ids += w
            doc += [i] * len(w)
        word = np.asarray(ids, dtype=np.int64)
        owner = np.asarray(doc, dtype=np.int64)
        unknown = np.r_[0, np.cumsum(word < 0)]
        best = np.full(len(texts), np.iinfo(np.int64).max)
        for k in self.sizes:
            starts = np.arange(max(len(word) - k + 1, 0))
            ok = (unknown[starts + k] == unknown[starts]) & (owner[starts] == owner[starts + k - 1])
            starts = starts[ok]
            if not len(starts):
                continue
            h = _hash(word[starts[:, None] + np.arange(k)])
            hit = starts[np.isin(h, self.hashes[k])]
            for p in hit.tolist():
                d = int(owner[p])
                if p < best[d] and tuple(word[p:p + k].tolist()) in self.grams:
                    best[d] = p
                    out[d] = self.grams[tuple(word[p:p + k].tolist())]
        return out



def _hash(grams: np.ndarray) -> np.ndarray:
    """Per row of word ids, its n-gram hash (as ``EvalSets.find`` computes it)."""
    h = np.zeros(len(grams), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(grams.shape[1]):
            h = h * _MIX + grams[:, j].astype(np.uint64)
    return h


def build(sets: Sequence[tuple[str, Sequence[str]]], n: int) -> EvalSets:
    """The lookup for ``(name, items)`` sets (a gram in several sets: the first listed)."""
    vocab: dict[str, int] = {}
    grams: dict[tuple[int, ...], int] = {}
    h = hashlib.sha256(str(n).encode())
    for s, (name, items) in enumerate(sets):
        h.update(b"\0set\0" + name.encode())
        for item in items:
            h.update(b"\0" + item.encode("utf-8", "surrogatepass"))
            ids = [vocab.setdefault(w, len(vocab)) for w in eval_words(item)]
            if not ids:
                continue
            k = min(n, len(ids))
            for j in range(len(ids) - k + 1):
                grams.setdefault(tuple(ids[j:j + k]), s)
    hashes = {}
    for k in {len(g) for g in grams}:
        hashes[k] = np.unique(_hash(np.array([g for g in grams if len(g) == k], dtype=np.int64)))
    return EvalSets(n, tuple(name for name, _ in sets), vocab, grams, h.hexdigest()[:16], hashes)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _records(path: Path) -> list[str]:
    """Each record's strings, joined (a ``.json`` file: one list of records, or one per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"evaluation data '{path}' cannot be read ({exc}); fix the task's "
                        "data_files or remove the task from evaluate.benchmark_dirs") from exc
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"evaluation data '{path}' is neither JSON lines nor JSON ({exc}); "
                            "fix the file") from exc
        rows = rows if isinstance(rows, list) else [rows]
    return [" ".join(_strings(r)) for r in rows]


def _data_files(spec: dict[str, Any], yaml_path: Path) -> list[Path]:
    """The local JSON data files a task YAML names (``dataset_kwargs.data_files``)."""
    files = (spec.get("dataset_kwargs") or {}).get("data_files") if isinstance(
        spec.get("dataset_kwargs"), dict) else None
    paths = _strings(files)
    out = []
    for p in paths:
        path = Path(p).expanduser()
        path = path if path.is_absolute() else yaml_path.parent / path
        if path.suffix in (".json", ".jsonl") and path.is_file():
            out.append(path)
    return out


def benchmark_sets(dirs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``(bench:<task>, items)`` for the JSON data of the task folders' YAMLs (a file several
    tasks read: under the first task by name), and ``bench:<file>`` for the folders' other
    JSON files."""
    from gpt.benchmarks import lenient_yaml, yaml_files

    owner: dict[Path, str] = {}
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise DataError(f"evaluate.benchmark_dirs: {d} is not a folder; give a folder of "
                            "lm-eval task YAMLs")
        found = []
        for y in yaml_files(root):
            spec = lenient_yaml(y.read_text(encoding="utf-8"))
            if isinstance(spec.get("task"), str):
                found += [(spec["task"], f.resolve()) for f in _data_files(spec, y)]
        for task, f in sorted(found):
            owner.setdefault(f, task)
        for f in sorted(root.rglob("*.json*")):
            if f.suffix in (".json", ".jsonl"):
                owner.setdefault(f.resolve(), f.stem)
    sets: dict[str, list[str]] = {}
    for f, name in sorted(owner.items(), key=lambda kv: (kv[1], str(kv[0]))):
        sets.setdefault(f"bench:{name}", []).extend(_records(f))
    return sorted(sets.items())


def eval_sets(params: Params) -> list[tuple[str, list[str]]]:
    """Every evaluation set the configured evaluations score that files provide."""
    sets = benchmark_sets(params.evaluate.benchmark_dirs)
    ft, sft = params.finetune, params.sft
    if ft.task == "file" or (sft.enabled and sft.task == "file"):
        from gpt import finetune

        if ft.task == "file":
            task = finetune.build_file_task(finetune.read_task_file(ft.task_path), ft.task_path,
                                            ft.test_fraction, ft.seed)
            if ft.test_path:
                task = finetune.with_test_file(task, finetune.read_table(
                    ft.test_path, ("text", "label"), "finetune.test_path"), ft.test_path)
            sets.append(("finetune_test", task.test["text"].tolist()))
        if sft.enabled and sft.task == "file":
            pairs = finetune.build_sft_file_task(sft.task_path, sft.test_fraction, sft.seed)
            sets.append(("sft_test", [f"{p}\n{c}" for p, c in pairs.test]))
    return sets


def load(params: Params) -> EvalSets | None:
    """The evaluation sets of ``params`` (``None``: decontamination off or nothing to check)."""
    n = params.clean.decontaminate_ngram
    if n <= 0:
        return None
    sets = [(name, items) for name, items in eval_sets(params) if items]
    return build(sets, n) if sets else None
