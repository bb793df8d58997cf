"""Document sources: the built-in offline corpus, local files and ``datasets`` datasets.

Every reader returns a DataFrame with the document schema ``DOC_COLUMNS``:

- ``doc_id``: stable id (source + name/path + offset), kept through every stage;
- ``source``: ``builtin`` or the file path;
- ``name``: a human label (a stdlib object's qualified name, a topic, or ``path:line``);
- ``text``: the document text.

The built-in corpus is Python's own documentation read from the running interpreter
(``pydoc_data.topics`` plus stdlib module/class/function docstrings). It is generated at ingest
time and never committed.

Local files: ``.txt``/``.md`` (one document per file), ``.jsonl`` (one per line, ``text_field``),
``.csv``/``.parquet`` (one per row, column ``text_field``); all but ``.parquet`` may be ``.gz`` or
``.zst`` (with ``zstandard`` installed) compressed. Text is decoded as UTF-8 with the BOM dropped
and undecodable bytes replaced by U+FFFD, so the cleaner can reject such documents by reason
(``invalid_utf8``) instead of the reader failing. ``hf:<folder or name>`` reads a dataset with
``datasets`` (the optional ``hf`` extra).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import importlib
import inspect
import io
import json
import os
import pkgutil
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from gpt.errors import DataError

DOC_COLUMNS = ["doc_id", "source", "name", "text"]

# Modules that print, open windows, run tests or are platform-only when imported.
_SKIP_TOP = {
    "__main__", "antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "turtle",
    "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "winreg", "winsound", "_winapi",
    "msvcrt", "nt", "_msi", "_overlapped", "_wmi",
}
_SKIP_PARTS = {"__main__", "test", "tests", "idle_test"}
_MIN_DOC_CHARS = 40


def _iter_module_names() -> Iterator[str]:
    """Yield importable stdlib module names (top-level and submodules), sorted."""
    for top in sorted(sys.stdlib_module_names):
        if top in _SKIP_TOP or top.startswith("_"):
            continue
        yield top
        spec = importlib.util.find_spec(top) if _safe_find(top) else None
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in sorted(pkgutil.walk_packages(spec.submodule_search_locations, top + ".",
                                                 onerror=lambda _name: None),
                           key=lambda i: i.name):
            parts = info.name.split(".")
            if any(p in _SKIP_PARTS or p.startswith("_") for p in parts[1:]):
                continue
            yield info.name


def _safe_find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import_quietly(name: str) -> object | None:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a stdlib module may raise anything on import
            return None


def _docstring_docs(module: object, seen: set[int]) -> Iterator[tuple[str, str]]:
    """Yield (qualified name, docstring) for a module and the objects it defines."""
    mod_name = getattr(module, "__name__", "")
    objects: list[tuple[str, object]] = [(mod_name, module)]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_"):
            continue
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and \
                getattr(obj, "__module__", None) == mod_name:
            objects.append((f"{mod_name}.{attr}", obj))
            if inspect.isclass(obj):
                for m_name, member in sorted(vars(obj).items()):
                    if m_name.startswith("_") and m_name != "__init__":
                        continue
                    if inspect.isroutine(member) or isinstance(member, property):
                        objects.append((f"{mod_name}.{attr}.{m_name}", member))
    for qualname, obj in objects:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc and len(doc.strip()) >= _MIN_DOC_CHARS:
            yield qualname, inspect.cleandoc(doc)


def read_builtin(max_docs: int = 0) -> pd.DataFrame:
    """Read the built-in corpus: ``pydoc_data.topics`` then stdlib docstrings.

    Args:
        max_docs: 0 for all documents, else keep an evenly spread subset of this size (every
            k-th document in the stable order, so every large package stays represented).
    """
    from pydoc_data.topics import topics

    rows: list[tuple[str, str, str, str]] = [
        (f"builtin:topic:{key}", "builtin", f"topic:{key}", text) for key, text in
        sorted(topics.items())
    ]
    seen: set[int] = set()
    names = list(_iter_module_names())
    for name in names:
        module = sys.modules.get(name) or _import_quietly(name)
        if module is None:
            continue
        with warnings.catch_warnings():  # deprecated modules (typing.io) warn on attribute access
            warnings.simplefilter("ignore", DeprecationWarning)
            rows.extend((f"builtin:doc:{qualname}", "builtin", qualname, doc)
                        for qualname, doc in _docstring_docs(module, seen))
    df = pd.DataFrame(rows, columns=DOC_COLUMNS).drop_duplicates("doc_id", ignore_index=True)
    return _limit(df, max_docs)


def _limit(df: pd.DataFrame, max_docs: int) -> pd.DataFrame:
    if max_docs and len(df) > max_docs:
        step = len(df) / max_docs
        idx = [int(i * step) for i in range(max_docs)]
        df = df.iloc[idx].reset_index(drop=True)
    return df


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


def _read_bytes(path: Path, compression: str) -> bytes:
    """The file's bytes, decompressed; a clear DataError when the file cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the path and its "
                        "permissions") from exc
    if compression == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"cannot decompress {path}: {exc}; the gzip file is corrupt or "
                            "truncated") from exc
    if compression == ".zst":
        try:
            import zstandard
        except ImportError as exc:
            raise DataError(f"{path} is zstd-compressed but the 'zstandard' package is not "
                            "installed; pip install zstandard (or decompress the file)") from exc
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
                return reader.read()
        except zstandard.ZstdError as exc:
            raise DataError(f"cannot decompress {path}: {exc}; the zstd file is corrupt or "
                            "truncated") from exc
    return raw


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Invalid bytes become U+FFFD instead of crashing; the cleaner rejects documents full of them.
    return raw.decode("utf-8", errors="replace")


def _read_text_file(path: Path, compression: str = "") -> str:
    return _decode(_read_bytes(path, compression))


def _read_one(path: Path, text_field: str) -> pd.DataFrame:
    suffix, compression = _split_suffix(path)
    src = str(path)
    if suffix in TEXT_SUFFIXES:
        text = _read_text_file(path, compression)
        return pd.DataFrame([(f"{src}:0", src, path.name, text)], columns=DOC_COLUMNS)
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(_read_text_file(path, compression).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno} is not valid JSON ({exc.msg}); fix or remove "
                                "the line") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise DataError(f"{path}:{lineno} has no string field '{text_field}'; set "
                                "data.text_field to the field holding the text")
            rows.append((f"{src}:{lineno}", src, f"{path.name}:{lineno}", rec[text_field]))
        return pd.DataFrame(rows, columns=DOC_COLUMNS)
    if suffix == ".parquet" and compression:
        raise DataError(f"{path}: compressed parquet is not supported (parquet compresses "
                        "internally); decompress the file")
    if suffix in {".parquet", ".csv"}:
        try:
            if suffix == ".parquet":
                table = pd.read_parquet(path)
            else:
                raw = _read_bytes(path, compression)
                table = (pd.read_csv(io.BytesIO(raw), encoding="utf-8-sig",
                                     encoding_errors="replace") if raw.strip()
                         else pd.DataFrame(columns=[text_field]))
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow/pandas raise many types
            raise DataError(f"cannot read {path}: {exc}; the file is corrupt or not "
                            f"{suffix[1:]}") from exc
        if text_field not in table.columns:
            raise DataError(f"{path} has no column '{text_field}' (columns: "
                            f"{', '.join(map(str, table.columns))}); set data.text_field")
        texts = table[text_field].fillna("").astype(str).tolist()
        return pd.DataFrame(
            [(f"{src}:{i}", src, f"{path.name}:{i}", t) for i, t in enumerate(texts)],
            columns=DOC_COLUMNS)
    raise DataError(f"unsupported file type {path} (use .txt, .md, .jsonl, .parquet or .csv; "
                    "all but .parquet may be .gz or .zst compressed)")


def read_local(pattern: str, text_field: str = "text", max_docs: int = 0) -> pd.DataFrame:
    """Read local files matching a glob (directories are searched recursively)."""
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
    frames = [_read_one(p, text_field) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DOC_COLUMNS)
    if df.empty:
        raise DataError(f"corpus path '{pattern}' holds no documents (all files are empty)")
    return _limit(df, max_docs)


def read_hf(spec: str, text_field: str = "text", max_docs: int = 0) -> pd.DataFrame:
    """Read a Hugging Face ``datasets`` dataset: a local ``save_to_disk`` folder or a hub name.

    Args:
        spec: a folder written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``, or a hub
            dataset name, optionally with a split: ``"name:split"`` (default: every split of a
            local folder, ``train`` from the hub). Hub datasets need the network.
        text_field: the column holding the text.
        max_docs: 0 for all documents, else an evenly spread subset of this size.

    Raises:
        DataError: ``datasets`` is not installed, the dataset cannot be loaded, or it has no
            string column ``text_field``.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"data.source 'hf:{spec}' needs the 'datasets' package; pip install "
                        "'gptops[hf]'") from exc
    name, _, split = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if not name:
        raise DataError("data.source 'hf:' names no dataset; write hf:<folder> or hf:<name>")
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise DataError(f"dataset folder '{name}' does not exist; check the path in "
                        "data.source (hf:<folder written by save_to_disk>)")
    name = os.path.expanduser(name) if name.startswith("~") else name
    try:
        if Path(name).exists():
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - datasets/fsspec/network raise many types
        raise DataError(f"cannot load dataset '{name}': {exc}; pass a folder written by "
                        "save_to_disk or a dataset name reachable from this machine") from exc
    parts = (sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict)
             else [(split or "train", loaded)])
    if split and isinstance(loaded, datasets.DatasetDict):
        parts = [(k, v) for k, v in parts if k == split]
    frames = []
    for split_name, ds in parts:
        if text_field not in ds.column_names:
            raise DataError(f"dataset '{name}' split '{split_name}' has no column '{text_field}' "
                            f"(columns: {', '.join(ds.column_names)}); set data.text_field")
        texts = ["" if t is None else str(t) for t in ds[text_field]]
        frames.append(pd.DataFrame(
            [(f"hf:{name}:{split_name}:{i}", f"hf:{name}", f"{split_name}:{i}", t)
             for i, t in enumerate(texts)], columns=DOC_COLUMNS))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DOC_COLUMNS)
    if df.empty:
        raise DataError(f"dataset '{name}' holds no documents")
    return _limit(df, max_docs)


def read_source(source: str, text_field: str = "text", max_docs: int = 0) -> pd.DataFrame:
    """Read the configured source: ``builtin``, ``hf:<folder or name>`` or a local glob."""
    if not source or not source.strip():
        raise DataError("data.source is empty; set it to 'builtin', 'hf:<dataset>' or a glob of "
                        "local files")
    if source == "builtin":
        return read_builtin(max_docs)
    if source.startswith("hf:"):
        return read_hf(source[3:], text_field, max_docs)
    return read_local(source, text_field, max_docs)
