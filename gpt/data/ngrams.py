"""Word n-grams as decontamination compares them: one home for the words and the check.

Words are runs of word characters (``\\w``), ASCII letters lowercased, so punctuation, spacing
and case do not hide a copy. Cleaning's decontamination (``gpt.data.clean.decontam``) looks
training documents up against the evaluation sets with these words; the built-in benchmark
(``gpt.benchmarks.build_items``) leaves out items that share an n-gram with the training split
(``seen_in``). A module of its own, outside the clean package, so that the benchmark step's code
(``gpt.pipeline.keys.CODE``) is this file and not the whole cleaning engine.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"\w+")
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def eval_words(text: str) -> list[str]:
    """The words the check compares: runs of ``\\w``, ASCII letters lowercased."""
    return _WORD.findall(text.translate(_LOWER))


def seen_in(texts: Iterable[str], candidates: Sequence[str], n: int) -> set[int]:
    """Indexes of ``candidates`` sharing a word ``n``-gram (``eval_words``; a candidate shorter
    than ``n`` words: occurring whole) with any of ``texts``; none when ``n`` is 0 (off). One
    pass over ``texts`` (the built-in benchmark's check of its items against the training split,
    ``gpt.benchmarks.build_items``)."""
    if n <= 0:
        return set()
    wanted: dict[tuple[str, ...], list[int]] = {}
    for i, text in enumerate(candidates):
        words = eval_words(text)
        for j in range(max(1, len(words) - n + 1)):
            wanted.setdefault(tuple(words[j:j + n]), []).append(i)
    sizes = {len(g) for g in wanted}
    hit: set[int] = set()
    for text in texts:
        words = eval_words(text)
        for k in sizes:
            for j in range(len(words) - k + 1):
                found = wanted.get(tuple(words[j:j + k]))
                if found:
                    hit.update(found)
    return hit
