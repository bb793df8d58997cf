"""Near-duplicate detection: MinHash signatures over word n-gram shingles, banded LSH.

Signatures are computed with numpy in chunks; candidate pairs whose estimate is near the
threshold are confirmed on exact shingle-set Jaccard. The first document of a group is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

_MINHASH_SEED = 1
_SHINGLES_PER_CHUNK = 1 << 18
_MIX_MULT = np.uint64(0x9E3779B97F4A7C15)


def _perm_params(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_MINHASH_SEED)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place): spreads shingle hashes over all 64 bits."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def minhash_signatures(texts: list[str], num_perm: int, ngram: int) -> np.ndarray:
    """MinHash signatures of lower-cased word ``ngram`` shingles, vectorised with numpy.

    Word hashes come from ``pandas.util.hash_array`` (keyed SipHash, the same in every process),
    so signatures computed in different worker processes are comparable. A text with fewer than
    ``ngram`` words has one shingle (its words padded).

    Args:
        texts: the documents.
        num_perm: signature length.
        ngram: words per shingle.

    Returns:
        ``(len(texts), num_perm)`` ``uint32`` array; the fraction of equal entries of two rows
        estimates the Jaccard similarity of the two shingle sets.
    """
    a, b = _perm_params(num_perm)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    start = 0
    while start < len(texts):
        words: list[str] = []
        counts: list[int] = []
        stop = start
        while stop < len(texts) and (len(words) < _SHINGLES_PER_CHUNK or stop == start):
            toks = texts[stop].lower().split()
            words.extend(toks)
            counts.append(len(toks))
            stop += 1
        out[start:stop] = _chunk_signatures(words, np.asarray(counts, dtype=np.int64), ngram, a, b)
        start = stop
    return out


def _chunk_signatures(words: list[str], counts: np.ndarray, ngram: int, a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    hashes = (pd.util.hash_array(np.asarray(words, dtype=object)) if words
              else np.empty(0, dtype=np.uint64))
    pad = ngram - 1
    # Lay each document's word hashes out followed by ``pad`` zeros, so a window never crosses
    # into the next document and short documents still have one (padded) shingle.
    padded_len = counts + pad
    padded_off = np.cumsum(padded_len) - padded_len
    word_off = np.cumsum(counts) - counts
    padded = np.zeros(int(padded_len.sum()) + pad, dtype=np.uint64)
    padded[np.repeat(padded_off - word_off, counts) + np.arange(len(hashes))] = hashes
    windows = len(padded) - pad
    shingle = padded[:windows].copy()
    for m in range(1, ngram):
        shingle *= _MIX_MULT
        shingle += padded[m:m + windows]
    n_shingles = np.maximum(counts - pad, 1)
    seg = np.cumsum(n_shingles) - n_shingles
    starts = np.repeat(padded_off - seg, n_shingles) + np.arange(int(n_shingles.sum()))
    values = _mix64(shingle[starts])
    # One permutation at a time on a reused 1-D buffer: much faster than a 2-D block (reduceat
    # along axis 0 of a 2-D array is slow and the temporaries do not fit in cache).
    sig = np.empty((len(a), len(counts)), dtype=np.uint64)
    buf = np.empty_like(values)
    for p in range(len(a)):
        np.multiply(values, a[p], out=buf)
        np.add(buf, b[p], out=buf)
        sig[p] = np.minimum.reduceat(buf, seg)
    # The top 32 bits of the minimum are the minimum of the top 32 bits.
    return (sig >> np.uint64(32)).astype(np.uint32).T


#: Weight of false candidates against missed pairs when choosing LSH bands. Low, because
#: candidates are verified on the full signature: with 128 permutations at threshold 0.8 this
#: gives 16 bands of 8 rows (a pair at similarity 0.85 becomes a candidate 99.4% of the time).
_LSH_FP_WEIGHT = 0.05


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows per band for LSH at ``threshold``.

    Minimises a weighted sum of the probability mass of missed pairs above the threshold and of
    candidate pairs below it (as datasketch does), weighted towards recall: candidates are
    verified on the full signature afterwards, so extra candidates cost time, not precision.
    """
    s = np.linspace(0.0, 1.0, 401)
    below, above = s <= threshold, s >= threshold
    best: tuple[float, int, int] = (float("inf"), 1, num_perm)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = np.trapezoid(p[below], s[below])
            fn = np.trapezoid(1.0 - p[above], s[above])
            err = _LSH_FP_WEIGHT * fp + (1.0 - _LSH_FP_WEIGHT) * fn
            if err < best[0]:
                best = (err, bands, rows)
    return best[1], best[2]


def _shingle_set(text: str, ngram: int) -> set[int]:
    """Hashes of the lower-cased word ``ngram`` shingles (as ``minhash_signatures`` sees them)."""
    words = text.lower().split()
    if len(words) <= ngram:
        return {hash(tuple(words))}
    return {hash(tuple(words[i:i + ngram])) for i in range(len(words) - ngram + 1)}


def _band_mult(rows: int) -> np.ndarray:
    rng = np.random.default_rng(_MINHASH_SEED + 1)
    return rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)


def band_keys(sigs: np.ndarray, threshold: float, num_perm: int) -> np.ndarray:
    """LSH bucket keys: ``(bands, n)`` ``uint64``, one per band of ``rows`` signature entries.

    Two rows share a band's key when their signatures agree on that band (up to 64-bit hash
    collisions), so keys computed shard by shard are compared across shards.
    """
    bands, rows = lsh_bands(threshold, num_perm)
    mult = _band_mult(rows)
    out = np.empty((bands, len(sigs)), dtype=np.uint64)
    for band in range(bands):
        cols = sigs[:, band * rows:(band + 1) * rows].astype(np.uint64)
        out[band] = _mix64((cols * mult).sum(axis=1, dtype=np.uint64))
    return out


#: ``keys(band)``: every row's key in that band; ``take(rows)``: those rows' signatures.
BandKeys = Callable[[int], np.ndarray]
TakeSignatures = Callable[[np.ndarray], np.ndarray]


def near_duplicates(sigs: np.ndarray, threshold: float, texts: Sequence[str] | None = None,
                    ngram: int = 5) -> np.ndarray:
    """For each row, the index of the first earlier kept row it near-duplicates, else -1.

    Rows are processed in order; a row is compared only with earlier rows that are themselves
    kept, so the first of a group survives. Candidates come from LSH banding; a candidate pair
    counts when the estimated Jaccard similarity (equal signature entries) reaches
    ``threshold``; with ``texts``, pairs whose estimate is too close to the threshold to call
    get the exact similarity of their shingle sets instead.

    Args:
        sigs: ``(n, num_perm)`` signatures from ``minhash_signatures``.
        threshold: Jaccard similarity from which a row is a near duplicate.
        texts: the rows' texts, for the exact check (None: estimates only); only the texts of
            pairs near the threshold are read.
        ngram: words per shingle (as for the signatures).

    Returns:
        ``int64`` array of length ``n``.
    """
    n, num_perm = sigs.shape
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    keys = band_keys(sigs, threshold, num_perm)
    return near_duplicates_banded(keys.__getitem__, len(keys), n, sigs.__getitem__, threshold,
                                  num_perm, texts, ngram)


def near_duplicates_banded(keys: BandKeys, bands: int, n: int, take: TakeSignatures,
                           threshold: float, num_perm: int,
                           texts: Sequence[str] | None = None, ngram: int = 5) -> np.ndarray:
    """``near_duplicates`` over band keys and signatures held elsewhere (e.g. shard files).

    Memory: one band's keys (8 bytes a row) at a time, plus the candidate pairs and their
    signatures; the whole signature matrix is never loaded.

    Args:
        keys: ``keys(band)`` -> ``(n,)`` ``uint64`` (see ``band_keys``).
        bands: how many bands.
        n: rows.
        take: ``take(rows)`` -> ``(len(rows), num_perm)`` signatures of those rows.
        threshold, num_perm, texts, ngram: as for ``near_duplicates``.
    """
    of = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return of
    firsts, seconds = [], []
    idx = np.arange(n, dtype=np.int64)
    for band in range(bands):
        key = keys(band)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        same = ks[1:] == ks[:-1]
        if not same.any():
            continue
        # In each bucket (sorted by row), pair every row with the bucket's first row and with
        # its predecessor: linear in the bucket size, unlike all pairs.
        head = np.maximum.accumulate(np.where(np.r_[True, ~same], idx, 0))
        j = order[1:][same]
        firsts += [order[head[1:][same]], order[:-1][same]]
        seconds += [j, j]
    if not firsts:
        return of
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    rows, inverse = np.unique(pairs, return_inverse=True)
    sig_rows = take(rows)
    inverse = inverse.reshape(pairs.shape)
    sim = (sig_rows[inverse[:, 0]] == sig_rows[inverse[:, 1]]).mean(axis=1)
    if texts is None:
        pairs = pairs[sim >= threshold]
    else:
        # The estimate has a standard deviation of sqrt(t(1-t)/num_perm) (0.035 at t=0.8 with
        # 128 permutations): pairs within 3 of those of the threshold get the exact similarity.
        margin = 3.0 * (threshold * (1.0 - threshold) / num_perm) ** 0.5
        sure = sim >= threshold + margin
        unsure = np.flatnonzero((sim >= threshold - margin) & ~sure)
        shingles: dict[int, set[int]] = {}
        for k in unsure.tolist():
            a, b = pairs[k].tolist()
            sa = shingles.get(a) or shingles.setdefault(a, _shingle_set(texts[a], ngram))
            sb = shingles.get(b) or shingles.setdefault(b, _shingle_set(texts[b], ngram))
            sure[k] = len(sa & sb) >= threshold * len(sa | sb)
        pairs = pairs[sure]
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
    for i, j in pairs.tolist():
        if of[j] == -1 and of[i] == -1:
            of[j] = i
    return of
