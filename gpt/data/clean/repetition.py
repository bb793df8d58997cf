"""Gopher's n-gram repetition over a batch's tokens: the top n-gram and duplicated n-grams.

For a text of tokens ``w`` (``words.tokenize``), Gopher (as datatrove states it) measures:

- the top ``n``-gram's characters: the most frequent ``n``-gram (among equally frequent ones,
  the one seen first), its length as ``" ".join`` times its count;
- the duplicated ``n``-grams' characters: walking the text, an ``n``-gram seen before adds its
  characters (``"".join``) and the walk jumps past it; otherwise it is remembered and the walk
  moves one token.

Both are divided by the text's characters. n-grams are compared as token sequences (datatrove
compares the joined strings, which differ only when tokens of different lengths join into the
same characters). Every n-gram of the batch gets an exact integer code (n-grams of different
texts differ): ``(code of its first n-1 tokens, code of its last token)`` numbered by pandas'
hash table, in the order they are first seen, so "seen before" is "its code is not new".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Tokens:
    """A batch's tokens in text order (``words.Words.stream``), for the covered texts.

    Attributes:
        ids: per token, its id (equal tokens, equal ids).
        lengths: per token, its characters.
        doc: per token, its text (non-decreasing, ``0..n_docs-1``).
        n_docs: covered texts.
        rows: the batch rows of the covered texts.
    """

    ids: np.ndarray
    lengths: np.ndarray
    doc: np.ndarray
    n_docs: int
    rows: np.ndarray

    def __post_init__(self) -> None:
        self.cum = np.r_[0, np.cumsum(self.lengths)]
        self.doc_start = np.searchsorted(self.doc, np.arange(self.n_docs + 1), "left")
        self._codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def codes(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per ``n``-gram start position (whose ``n`` tokens are in one text): its start and
        code; positions whose ``n``-gram can only be unique (its first ``n``-1 tokens are) are
        left out."""
        if n in self._codes:
            return self._codes[n]
        if n == 1:
            key = self.ids * np.int64(self.n_docs) + self.doc
            out = (np.arange(len(self.ids)), pd.factorize(key)[0].astype(np.int64))
        else:
            pos, prev = self.codes(n - 1)
            repeated = np.bincount(prev)[prev] > 1 if len(prev) else np.zeros(0, bool)
            end = pos + n - 1
            ok = repeated & (end < len(self.doc))
            pos, prev, end = pos[ok], prev[ok], end[ok]
            same = self.doc[end] == self.doc[pos]
            pos, prev, end = pos[same], prev[same], end[same]
            last = self.codes(1)[1][end]
            key = prev * np.int64(len(self.ids) + 1) + last
            out = (pos, pd.factorize(key)[0].astype(np.int64))
        self._codes[n] = out
        return out

    def ngram_chars(self, pos: np.ndarray, n: int) -> np.ndarray:
        """Characters of the ``n``-grams starting at ``pos``, their tokens joined without spaces."""
        return self.cum[pos + n] - self.cum[pos]

    def top_ngram_chars(self, n: int) -> np.ndarray:
        """Per text: the top ``n``-gram's ``" ".join`` length times its count (0: fewer than
        ``n`` tokens)."""
        out = np.zeros(self.n_docs, dtype=np.int64)
        sizes = np.diff(self.doc_start)
        has = np.flatnonzero(sizes >= n)
        # Texts whose n-grams are all unique: their first n-gram, once.
        first = self.doc_start[has]
        out[has] = self.ngram_chars(first, n) + n - 1
        pos, code = self.codes(n)
        if not len(pos):
            return out
        count = np.bincount(code)[code]
        rep = count > 1
        pos, code, count = pos[rep], code[rep], count[rep]
        if not len(pos):
            return out
        doc = self.doc[pos]
        top = np.zeros(self.n_docs, dtype=np.int64)
        np.maximum.at(top, doc, count)
        best = count == top[doc]
        # Among the most frequent, the first seen: its earliest position (positions ascend).
        pos, doc, count = pos[best], doc[best], count[best]
        lead = np.r_[True, doc[1:] != doc[:-1]]
        out[doc[lead]] = (self.ngram_chars(pos[lead], n) + n - 1) * count[lead]
        return out

    def duplicate_ngrams_over(self, n: int, fraction: float, chars: np.ndarray) -> np.ndarray:
        """Per text: whether Gopher's duplicated ``n``-gram characters exceed ``fraction`` of
        its ``chars``.

        First an upper bound, the characters covered by n-grams seen before (every n-gram the
        walk counts is one); only texts over the limit by the bound are walked.
        """
        out = np.zeros(self.n_docs, dtype=bool)
        pos, code = self.codes(n)
        if not len(pos):
            return out
        seen = code <= np.maximum.accumulate(np.r_[-1, code[:-1]])  # not new: seen before
        starts = pos[seen]
        if not len(starts):
            return out
        cover = np.zeros(len(self.ids) + 1, dtype=np.int64)
        np.add.at(cover, starts, 1)
        np.add.at(cover, starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        bound = np.bincount(self.doc[covered], weights=self.lengths[covered],
                            minlength=self.n_docs)
        with np.errstate(divide="ignore", invalid="ignore"):
            for d in np.flatnonzero(bound / chars > fraction).tolist():
                out[d] = self._walk(d, n) / chars[d] > fraction
        return out

    def _walk(self, d: int, n: int) -> int:
        """Gopher's walk over text ``d``'s n-grams (positions whose code is unknown are new)."""
        lo, hi = int(self.doc_start[d]), int(self.doc_start[d + 1])
        pos, code = self.codes(n)
        a, b = np.searchsorted(pos, [lo, hi])
        known = dict(zip(pos[a:b].tolist(), code[a:b].tolist(), strict=True))
        seen: set[int] = set()
        chars, i = 0, lo
        while i < hi - n + 1:
            c = known.get(i)
            if c is not None and c in seen:
                chars += int(self.cum[i + n] - self.cum[i])
                i += n
            else:
                if c is not None:
                    seen.add(c)
                i += 1
        return chars
