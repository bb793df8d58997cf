"""Arrow string arrays as flat UTF-8 bytes: the helpers every columnar cleaning step shares.

A batch's texts are one (large) string array; ``raw`` is their UTF-8 bytes back to back and
``byte_offsets`` says where each text starts in it, so per-document counts are segment sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def mask(n: int, rows: np.ndarray) -> pa.Array:
    """A boolean Arrow mask of length ``n``, true at ``rows``."""
    out = np.zeros(n, dtype=bool)
    out[rows] = True
    return pa.array(out)


def on_rows(arr: pa.Array, where: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``arr`` with ``fn`` applied to the rows where ``where`` is true (the others untouched)."""
    if not pc.any(where).as_py():
        return arr
    return pc.replace_with_mask(arr, where, fn(arr.filter(where)))


def raw_bytes(arr: pa.Array) -> bytes:
    """The UTF-8 bytes of all of ``arr``'s texts, back to back (``byte_offsets`` index into it)."""
    bounds = _buffer_offsets(arr)
    start, stop = int(bounds[0]), int(bounds[-1])
    data = arr.buffers()[2]
    return b"" if data is None or start == stop else memoryview(data)[start:stop].tobytes()


def _buffer_offsets(arr: pa.Array) -> np.ndarray:
    """``len(arr) + 1`` byte offsets of a (large) string array's values in its data buffer."""
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    width = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr) + 1,
                         offset=arr.offset * width).astype(np.int64)


def byte_offsets(arr: pa.Array) -> np.ndarray:
    """Where each text starts in ``raw_bytes(arr)``, and (last entry) where the last one ends."""
    bounds = _buffer_offsets(arr)
    return bounds - bounds[0]


def text_at(starts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The text each byte position (in ``raw_bytes``) falls in, given ``byte_offsets``."""
    return np.searchsorted(starts, positions, "right") - 1


def pick(arr: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """``arr[rows]`` for increasing ``rows`` (a filter: Arrow's take is slow on strings)."""
    return arr if len(rows) == len(arr) else arr.filter(mask(len(arr), rows))


def chunked(column: pd.Series) -> pa.ChunkedArray:
    """A validated string column as Arrow ``large_string`` chunks (no copy when possible)."""
    arr = pa.array(column, type=pa.large_string())
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def utf8_bytes(texts: pa.Array | pa.ChunkedArray) -> int:
    """Total UTF-8 size of a string array."""
    return int(pc.sum(pc.binary_length(texts)).as_py() or 0) if len(texts) else 0


def str_series(arr: pa.Array | pa.ChunkedArray) -> pd.Series:
    """A string array as a pandas ``str`` series."""
    return pd.Series(arr.cast(pa.large_string()), dtype="str")


@contextmanager
def system_allocator() -> Iterator[None]:
    """Allocate Arrow memory with malloc while cleaning.

    The batches allocate and free many short-lived buffers of a few MB. Arrow's default
    allocator (mimalloc) hands their pages back to the kernel soon after each free and faults
    them in again for the next batch: measured here, that was 0.3 to 0.9 s of system time per
    33 MB (up to 40 % of the work). With malloc it was about 0.1 s.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
