"""Document sources: the built-in offline corpus, local files and ``datasets`` datasets.

Every reader returns a DataFrame with the document schema ``DOC_COLUMNS``:

- ``doc_id``: stable id (source + name/path + offset), kept through every stage;
- ``source``: ``builtin`` or the file path;
- ``name``: a human label (a stdlib object's qualified name, a topic, or ``path:line``);
- ``text``: the document text.

The built-in corpus is Python's own documentation read from the running interpreter's files
(``pydoc_data.topics`` plus the module/class/function docstrings of the stdlib's source, parsed
with ``ast``, never imported; ``gpt.data.builtin``). It is generated at ingest time and never
committed; every patch release of a Python version with a manifest gives the same corpus, in any
environment.

Local files: ``.txt``/``.md`` (one document per file), ``.jsonl`` (one per line, ``text_field``),
``.csv``/``.parquet`` (one per row, column ``text_field``); all but ``.parquet`` may be ``.gz`` or
``.zst`` (with ``zstandard`` installed) compressed. ``.warc``/``.wet`` (optionally ``.gz``):
web crawl records (``gpt.data.web``), with the ``WEB_COLUMNS`` too. Text is decoded as UTF-8
with the BOM dropped and undecodable bytes replaced by U+FFFD, so the cleaner can reject such
documents by reason (``invalid_utf8``) instead of the reader failing. ``hf:<folder or name>``
reads a dataset with ``datasets`` (the optional ``hf`` extra).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from gpt.config import HF_PREFIX, DataConfig
from gpt.data.builtin import builtin_docs
from gpt.data.records import DOC_COLUMNS, WEB_COLUMNS, BadRecords
from gpt.data.web import WEB_SUFFIXES, iter_web
from gpt.data.workers import default_workers, ignore_ctrl_c
from gpt.errors import DataError


def read_builtin() -> pd.DataFrame:
    """Read the whole built-in corpus (:func:`gpt.data.builtin.builtin_docs`: Python's
    documentation, the documents of the Python version's manifest; ``data.max_docs`` is
    applied by :func:`iter_source`, as for any source)."""
    return pd.DataFrame(builtin_docs(), columns=DOC_COLUMNS)


#: Local formats read as one document per file (.jsonl, .csv, .parquet: see ``_read_one``).
TEXT_SUFFIXES = (".txt", ".md")
#: Compressions of local files (any format but .parquet).
COMPRESSED_SUFFIXES = (".gz", ".zst")


def _split_suffix(path: Path) -> tuple[str, str]:
    """``(format, compression)`` of a file name: ``a.jsonl.gz`` -> ``(".jsonl", ".gz")``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""




def _open_binary(path: Path, compression: str) -> BinaryIO:
    """The file's bytes as a stream, decompressed on the fly; a clear error when unreadable."""
    try:
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - returned open
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the path and its "
                        "permissions") from exc
    if compression == ".gz":
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    if compression == ".zst":
        try:
            import zstandard
        except ImportError as exc:
            fh.close()
            raise DataError(f"{path} is zstd-compressed but the 'zstandard' package is not "
                            "installed; pip install zstandard (or decompress the file)") from exc
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True))
    return fh


@contextlib.contextmanager
def _decompress_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot decompress {path}: {exc}; the gzip file is corrupt or "
                        "truncated") from exc
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            raise DataError(f"cannot decompress {path}: {exc}; the zstd file is corrupt or "
                            "truncated") from exc
        raise


def _read_bytes(path: Path, compression: str) -> bytes:
    """The file's bytes, decompressed; a clear DataError when the file cannot be read."""
    with _decompress_errors(path), _open_binary(path, compression) as fh:
        return fh.read()


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Invalid bytes become U+FFFD instead of crashing; the cleaner rejects documents full of them.
    return raw.decode("utf-8", errors="replace")


def _iter_lines(path: Path, compression: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, streamed (one line in memory at a time)."""
    with _decompress_errors(path), _open_binary(path, compression) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw) if lineno == 1 else raw.decode("utf-8", errors="replace")
            yield lineno, line.rstrip("\r\n") if line.endswith("\n") else line


#: ``(doc_id, source, name, text)``, web rows with ``(url, date)`` too.
Row = tuple[str, ...]


def _iter_jsonl(path: Path, text_field: str, bad: BadRecords) -> Iterator[Row]:
    src = str(path)
    for lineno, line in _iter_lines(path, _split_suffix(path)[1]):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.add(path, lineno, "invalid_json")
            continue
        value = rec.get(text_field) if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or text_field not in rec or value is None:
            bad.add(path, lineno, f"no_field_{text_field}")
        elif not isinstance(value, str):
            bad.add(path, lineno, f"{text_field}_not_a_string")
        elif not value.strip():
            bad.add(path, lineno, f"empty_{text_field}")
        else:
            yield (f"{src}:{lineno}", src, f"{path.name}:{lineno}", value)


def _iter_table(path: Path, suffix: str, compression: str, text_field: str,
                bad: BadRecords) -> Iterator[Row]:
    """Rows of a parquet file (row group by row group) or a csv file (in chunks)."""
    import pyarrow.parquet as pq

    src = str(path)
    if suffix == ".parquet" and compression:
        raise DataError(f"{path}: compressed parquet is not supported (parquet compresses "
                        "internally); decompress the file")
    try:
        if suffix == ".parquet":
            pf = pq.ParquetFile(path)
            if text_field not in pf.schema_arrow.names:
                _no_column(path, text_field, pf.schema_arrow.names)
            chunks: Iterator[list] = (b.column(0).to_pylist() for b in
                                      pf.iter_batches(batch_size=4096, columns=[text_field]))
        else:
            chunks = _csv_chunks(path, compression, text_field)
        i = 0
        for values in chunks:
            for value in values:
                if value is None or (isinstance(value, float) and value != value):
                    bad.add(path, i, f"no_field_{text_field}")
                else:
                    text = value if isinstance(value, str) else str(value)
                    if text.strip():
                        yield (f"{src}:{i}", src, f"{path.name}:{i}", text)
                    else:
                        bad.add(path, i, f"empty_{text_field}")
                i += 1
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many types
        raise DataError(f"cannot read {path}: {exc}; the file is corrupt or not "
                        f"{suffix[1:]}") from exc


def _no_column(path: Path, text_field: str, columns: list[str]) -> None:
    raise DataError(f"{path} has no column '{text_field}' (columns: "
                    f"{', '.join(map(str, columns))}); set data.text_field")


def _csv_chunks(path: Path, compression: str, text_field: str) -> Iterator[list]:
    with _decompress_errors(path), _open_binary(path, compression) as fh:
        head = fh.peek(1) if hasattr(fh, "peek") else b"x"
        if not head.strip():
            return
        reader = pd.read_csv(fh, encoding="utf-8-sig", encoding_errors="replace",
                             chunksize=4096, dtype=object, keep_default_na=False,
                             na_values=[])
        for chunk in reader:
            if text_field not in chunk.columns:
                _no_column(path, text_field, list(chunk.columns))
            yield chunk[text_field].tolist()


def _iter_file(path: Path, text_field: str, bad: BadRecords) -> Iterator[Row]:
    suffix, compression = _split_suffix(path)
    src = str(path)
    if suffix in TEXT_SUFFIXES:
        with _decompress_errors(path):
            text = _decode(_read_bytes(path, compression))
        yield (f"{src}:0", src, path.name, text)
    elif suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field, bad)
    elif suffix in {".parquet", ".csv"}:
        yield from _iter_table(path, suffix, compression, text_field, bad)
    elif suffix in WEB_SUFFIXES and compression != ".zst":
        yield from iter_web(path, bad, bad.skipped)
    else:
        raise DataError(f"unsupported file type {path} (use .txt, .md, .jsonl, .parquet, .csv, "
                        ".warc or .wet; all but .parquet may be .gz compressed, all but .parquet, "
                        ".warc and .wet .zst compressed)")
    bad.end_file(path)


def local_paths(pattern: str) -> list[Path]:
    """The files a glob names (directories are searched recursively, hidden files skipped)."""
    expanded = os.path.expanduser(pattern)
    paths: list[Path] = []
    for hit in sorted(glob.glob(expanded, recursive=True)):
        p = Path(hit)
        if p.is_dir():
            # Hidden files (.DS_Store, .gitignore ...) are not documents.
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and
                                not any(part.startswith(".") for part in q.relative_to(p).parts)))
        elif p.is_file():
            paths.append(p)
    if not paths:
        raise DataError(f"corpus path '{pattern}' matches no files; check the path or set "
                        "data.source=builtin")
    return paths


def _is_web(path: Path) -> bool:
    suffix, compression = _split_suffix(path)
    return suffix in WEB_SUFFIXES and compression != ".zst"


#: Web files smaller than this in all are read in this process: starting a pool (each worker
#: imports trafilatura) costs seconds, more than extracting a few MB of pages.
PARALLEL_WEB_BYTES = 16 * 2**20


def web_file(job: tuple[str, str]) -> tuple[list[Row], list[tuple[str, ...]], list[str],
                                            dict[str, int]]:
    """One WARC/WET file's documents, read whole (a pool worker's job; HTML extraction is
    CPU-bound). ``job``: ``(path, on_bad_record)``. Returns the rows, the bad records
    (``reject``) or the bad-record lines (``fail``), and the skipped records by kind."""
    path, mode = Path(job[0]), job[1]
    bad = BadRecords(mode)
    rows = list(iter_web(path, bad, bad.skipped))
    return rows, bad.rows, bad._file, bad.skipped


def _web_files(paths: list[Path], bad: BadRecords) -> Iterator[Row]:
    """The documents of several web files in file order, extracted on every core.

    A spawn pool (as cleaning's first pass) runs :func:`web_file` per file; results are taken
    in submission order, so the output is the same whatever the number of workers, and at
    most two files per worker are in flight, so memory follows the file size, not the count.
    """
    small = sum(p.stat().st_size for p in paths) < PARALLEL_WEB_BYTES
    workers = 1 if small else min(default_workers(), len(paths))
    jobs = [(str(p), bad.mode) for p in paths]
    if workers <= 1:
        results: Iterator[Any] = map(web_file, jobs)
        yield from _merge_web(paths, results, bad)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=ignore_ctrl_c) as pool:
        yield from _merge_web(paths, _bounded(pool, jobs, 2 * workers), bad)
        pool.close()
        pool.join()


def _bounded(pool: Any, jobs: list[tuple[str, str]], ahead: int) -> Iterator[Any]:
    """``pool.imap(web_file, jobs)`` in order, with at most ``ahead`` jobs submitted and not
    yet taken (``imap`` submits every job at once and buffers every result)."""
    pending: collections.deque = collections.deque()
    for job in jobs:
        pending.append(pool.apply_async(web_file, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _merge_web(paths: list[Path], results: Iterator[Any], bad: BadRecords) -> Iterator[Row]:
    for path, (rows, bad_rows, fail, skipped) in zip(paths, results, strict=True):
        yield from rows
        bad.rows.extend(bad_rows)
        bad._file.extend(fail)
        for kind, n in skipped.items():
            bad.skipped[kind] = bad.skipped.get(kind, 0) + n
        bad.end_file(path)


def _iter_local(pattern: str, text_field: str, bad: BadRecords) -> Iterator[Row]:
    paths = local_paths(pattern)
    i = 0
    while i < len(paths):
        # A run of web files (a crawl's WARC/WET files) is extracted in parallel, in order.
        j = i
        while j < len(paths) and _is_web(paths[j]):
            j += 1
        if j - i > 1:
            yield from _web_files(paths[i:j], bad)
            i = j
        else:
            yield from _iter_file(paths[i], text_field, bad)
            i += 1


def hf_dataset(spec: str) -> tuple[str, str, bool]:
    """``(name, split, local)`` of an ``hf:`` source (``spec`` without the prefix): a folder
    written by ``save_to_disk`` (``local``; ``~`` expanded, no split; it may not exist yet), or
    a hub dataset's name with an optional ``:split``."""
    name, _, split = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if not name:
        raise DataError("data.source 'hf:' names no dataset; write hf:<folder> or hf:<name>")
    folder = name.startswith(("/", "./", "../", "~"))
    name = os.path.expanduser(name) if name.startswith("~") else name
    return name, split, folder or Path(name).exists()


def _hf_parts(spec: str, text_field: str) -> list[tuple[str, str, object]]:
    """``(dataset name, split, dataset)``: local ``save_to_disk`` folders memory-mapped, hub
    datasets streamed."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"data.source 'hf:{spec}' needs the 'datasets' package; pip install "
                        "'gptops[hf]'") from exc
    name, split, local = hf_dataset(spec)
    if local and not Path(name).exists():
        raise DataError(f"dataset folder '{name}' does not exist; check the path in "
                        "data.source (hf:<folder written by save_to_disk>)")
    try:
        if local:
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as exc:  # noqa: BLE001 - datasets/fsspec/network raise many types
        raise DataError(f"cannot load dataset '{name}': {exc}; pass a folder written by "
                        "save_to_disk or a dataset name reachable from this machine") from exc
    parts = (sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict)
             else [(split or "train", loaded)])
    if split and isinstance(loaded, datasets.DatasetDict):
        parts = [(k, v) for k, v in parts if k == split]
    for split_name, ds in parts:
        columns = ds.column_names or []
        if columns and text_field not in columns:
            raise DataError(f"dataset '{name}' split '{split_name}' has no column '{text_field}' "
                            f"(columns: {', '.join(columns)}); set data.text_field")
    return [(name, s, ds) for s, ds in parts]


def _iter_hf(spec: str, text_field: str, bad: BadRecords) -> Iterator[Row]:
    for name, split_name, ds in _hf_parts(spec, text_field):
        origin = Path(f"{HF_PREFIX}{name}:{split_name}")
        for i, rec in enumerate(ds.select_columns([text_field]) if hasattr(ds, "select_columns")
                                else ds):
            t = rec.get(text_field)
            if t is None:
                bad.add(origin, i, f"no_field_{text_field}")
            elif not str(t).strip():
                bad.add(origin, i, f"empty_{text_field}")
            else:
                yield (f"{HF_PREFIX}{name}:{split_name}:{i}", f"{HF_PREFIX}{name}",
                       f"{split_name}:{i}", str(t))


@dataclass
class Batch:
    """Documents read (``DOC_COLUMNS``, and ``WEB_COLUMNS`` from web files), the bad records
    met since the last batch, and the records skipped since then by kind."""

    docs: pd.DataFrame
    bad: pd.DataFrame
    skipped: dict[str, int]


def _frame(rows: list[Row]) -> pd.DataFrame:
    """Rows as documents; with ``WEB_COLUMNS`` ("" for non-web rows) when any row is a web one."""
    if any(len(r) > len(DOC_COLUMNS) for r in rows):
        pad = ("",) * len(WEB_COLUMNS)
        return pd.DataFrame([r if len(r) > len(DOC_COLUMNS) else (*r, *pad) for r in rows],
                            columns=DOC_COLUMNS + WEB_COLUMNS)
    return pd.DataFrame(rows, columns=DOC_COLUMNS)


@functools.cache
def _builtin_rows() -> tuple[Row, ...]:
    """The built-in corpus as rows, read once per process (``data.max_docs`` counts them
    first, then picks)."""
    return tuple(builtin_docs())


def _rows(source: str, text_field: str, bad: BadRecords) -> Iterator[Row]:
    if not source or not source.strip():
        raise DataError("data.source is empty; set it to 'builtin', 'hf:<dataset>' or a glob of "
                        "local files")
    if source == "builtin":
        yield from _builtin_rows()
    elif source.startswith(HF_PREFIX):
        yield from _iter_hf(source.removeprefix(HF_PREFIX), text_field, bad)
    else:
        yield from _iter_local(source, text_field, bad)


def iter_source(data: DataConfig, batch_docs: int = 4096) -> Iterator[Batch]:
    """Stream the configured source in batches of documents (memory: one batch, one line).

    Args:
        data: the ``data`` section: ``source`` (``builtin``, ``hf:<folder or name>`` or a local
            glob: see the module), ``text_field`` (the field or column holding the text),
            ``max_docs`` (0 for all documents, else an evenly spread subset of this size: every
            k-th document in the stable order, so every large package of the built-in corpus
            stays represented; a first pass counts the documents) and ``on_bad_record``
            (``reject``: bad records come out in ``Batch.bad``; or ``fail``).
        batch_docs: documents per batch.

    Raises:
        DataError: the source names nothing, holds no documents, a file is unreadable, or
            (``fail``) a file has bad records.
    """
    source, text_field, max_docs = data.source, data.text_field, data.max_docs
    keep: Callable[[int], bool] = lambda _i: True  # noqa: E731
    if max_docs:
        total = sum(1 for _ in _rows(source, text_field, BadRecords(data.on_bad_record)))
        if total > max_docs:
            step = total / max_docs
            chosen = {int(i * step) for i in range(max_docs)}
            keep = chosen.__contains__
    bad = BadRecords(data.on_bad_record)
    rows: list[Row] = []
    seen = 0
    for i, row in enumerate(_rows(source, text_field, bad)):
        if keep(i):
            rows.append(row)
        if len(rows) >= batch_docs:
            seen += len(rows)
            yield Batch(_frame(rows), bad.take(), bad.take_skipped())
            rows = []
    seen += len(rows)
    if rows or bad.rows or bad.skipped:
        yield Batch(_frame(rows), bad.take(), bad.take_skipped())
    if not seen:
        raise DataError(f"data.source '{source}' holds no documents (all files are empty or "
                        "every record is bad)")


def read_source(data: DataConfig) -> pd.DataFrame:
    """The whole source as one frame of documents (bad records left out; see ``iter_source``)."""
    return pd.concat([b.docs for b in iter_source(data)], ignore_index=True)
