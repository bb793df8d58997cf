"""PII scrubbing of a batch: a vectorised pre-filter picks the few candidates for ``scrub_pii``.

``gpt.data.pii`` holds the patterns; here, one pass of all the kinds' RE2 pre-filters over the
texts that passed the filters finds the rows where some pattern could match, and only those
rows (with only the kinds that could) go through Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import mask, pick
from gpt.data.pii import PII_PREFILTERS, scrub_pii


def pii_candidates(arr: pa.Array, kinds: tuple[str, ...],
                   rows: np.ndarray) -> dict[int, tuple[str, ...]]:
    """For each of ``rows`` where a PII pattern could match, the kinds that could.

    One pass of all the kinds' pre-filters over the rows, then each kind's pre-filter over the
    few that matched; ``scrub_pii`` decides.

    Args:
        arr: normalised texts.
        kinds: the PII kinds to look for (``CleanConfig.pii``).
        rows: increasing indexes into ``arr`` to look at.

    Returns:
        Row index -> the kinds whose pre-filter matched there (rows without any are left out).
    """
    if not kinds or not len(rows):
        return {}
    pattern = "|".join(f"(?:{PII_PREFILTERS[k]})" for k in kinds)
    hit = pc.match_substring_regex(pick(arr, rows), pattern).to_numpy(
        zero_copy_only=False)
    rows = rows[hit]
    if not len(rows):
        return {}
    sub = pick(arr, rows)
    found: dict[int, list[str]] = {}
    for kind in kinds:
        match = pc.match_substring_regex(sub, PII_PREFILTERS[kind]).to_numpy(zero_copy_only=False)
        for i in rows[match].tolist():
            found.setdefault(i, []).append(kind)
    return {i: tuple(ks) for i, ks in found.items()}


def scrub_batch(arr: pa.Array, kinds: tuple[str, ...],
                rows: np.ndarray) -> tuple[pa.Array, dict[int, dict[str, int]]]:
    """Replace the PII in ``arr[rows]`` with placeholders.

    Args:
        arr: normalised texts (``large_string``).
        kinds: the PII kinds to replace (``CleanConfig.pii``).
        rows: increasing indexes of the texts to scrub (those that passed the filters).

    Returns:
        The texts with PII replaced (``arr`` itself when none was found), and per row index
        with replacements, kind -> placeholders written.
    """
    candidates = pii_candidates(arr, kinds, rows)
    counts_at: dict[int, dict[str, int]] = {}
    if not candidates:
        return arr, counts_at
    picked = sorted(candidates)
    scrubbed = []
    for i in picked:
        text, counts = scrub_pii(arr[i].as_py(), candidates[i])
        scrubbed.append(text)
        if counts:
            counts_at[i] = counts
    arr = pc.replace_with_mask(arr, mask(len(arr), np.array(picked)),
                               pa.array(scrubbed, type=pa.large_string()))
    return arr, counts_at
