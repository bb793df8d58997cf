"""The built-in offline corpus: Python's own documentation, read with the standard library only.

The documents are ``pydoc_data.topics`` plus the module/class/function docstrings of the
stdlib's source, parsed with ``ast`` (never imported), from the running interpreter's files:
the same interpreter gives the same documents in any environment.

Patch releases of one Python version differ, though (``pydoc_data.topics`` is regenerated at
each release, docstrings get fixed, Debian leaves some packages out). So a Python minor version
with a manifest (``builtin-3.11.txt.gz`` here, written by ``scripts/builtin-manifest.py`` from
several patch releases) keeps exactly the manifest's documents, those identical in all of them,
in its order: any patch release with those texts gives byte-identical documents, hence the same
data version. One that lacks a manifest document or has another text for it logs one warning
and goes on (its data version will differ from the reference one). A minor version without a
manifest keeps every document it reads.

This module imports nothing outside the standard library (no pandas), so that it runs under any
interpreter (``python -m gpt.data.builtin`` prints a digest of the documents).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import json
import logging
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from gpt.envshare import share_dir

log = logging.getLogger(__name__)

#: ``(doc_id, source, name, text)``: ``gpt.data.records.DOC_COLUMNS``' order.
Doc = tuple[str, str, str, str]

# Packages and modules left out: tests, GUI, demos, installers, platform-only, the corpus's own
# source (pydoc_data is read as topics).
_SKIP_TOP = {
    "__main__", "antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "turtle",
    "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "winreg", "winsound", "_winapi",
    "msvcrt", "nt", "_msi", "_overlapped", "_wmi",
}
_SKIP_PARTS = {"__main__", "test", "tests", "idle_test"}
_MIN_DOC_CHARS = 40
#: Private pure-Python sources of public modules (which re-export them, or whose C version's
#: documentation they carry), read under the public name.
_SOURCE_OF = {"collections.abc": "_collections_abc", "decimal": "_pydecimal", "io": "_pyio"}
#: Hex digits of a document's text hash in a manifest.
HASH_CHARS = 16


def manifest_path(version: tuple[int, int] | None = None) -> Path:
    """The manifest of a Python minor version (default: the running one); it may not exist."""
    major, minor = version or sys.version_info[:2]
    return Path(__file__).with_name(f"builtin-{major}.{minor}.txt.gz")


def _stdlib_sources() -> Iterator[tuple[str, Path]]:
    """``(module name, source file)`` of the stdlib's pure-Python modules, sorted by name.

    Found from the interpreter's own stdlib folder (``sysconfig``), not by importing: what an
    import gives depends on the environment (variables such as ``SETUPTOOLS_USE_DISTUTILS``,
    installed packages that patch modules, what was imported before), a file does not.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    for top in sorted(sys.stdlib_module_names):
        if top in _SKIP_TOP or top.startswith("_"):
            continue
        found = [(top, root / f"{top}.py")] if (root / f"{top}.py").is_file() else []
        if (root / top / "__init__.py").is_file():
            for path in (root / top).rglob("*.py"):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if any(p in _SKIP_PARTS or p.startswith("_") for p in parts[1:]):
                    continue
                found.append((".".join(parts), path))
        found += [(name, root / f"{private}.py") for name, private in _SOURCE_OF.items()
                  if name.split(".")[0] == top and (root / f"{private}.py").is_file()]
        yield from sorted(found)


def _definitions(body: list[ast.stmt]) -> Iterator[ast.ClassDef | ast.FunctionDef |
                                                   ast.AsyncFunctionDef]:
    """Classes and functions of a module or class body, including those defined under a
    top-level ``if``/``try`` (a fallback definition, a platform branch), in source order."""
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        elif isinstance(node, ast.If | ast.Try):
            blocks = [node.body, node.orelse] + ([h.body for h in node.handlers]
                                                  + [node.finalbody]
                                                  if isinstance(node, ast.Try) else [])
            for block in blocks:
                yield from _definitions(block)


def _docstring_docs(name: str, path: Path) -> Iterator[tuple[str, str]]:
    """Yield (qualified name, docstring) for a module's source and the objects it defines."""
    try:
        with warnings.catch_warnings():  # invalid escapes in old modules' strings
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    seen: set[str] = set()

    def doc(qualname: str, node: ast.AST) -> Iterator[tuple[str, str]]:
        text = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if qualname not in seen and text and len(text.strip()) >= _MIN_DOC_CHARS:
            seen.add(qualname)
            yield qualname, text

    yield from doc(name, tree)
    for node in _definitions(tree.body):
        if node.name.startswith("_"):
            continue
        yield from doc(f"{name}.{node.name}", node)
        if isinstance(node, ast.ClassDef):
            for member in _definitions(node.body):
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and (
                        not member.name.startswith("_") or member.name == "__init__"):
                    yield from doc(f"{name}.{node.name}.{member.name}", member)


def interpreter_docs() -> list[Doc]:
    """Every document this interpreter's files hold: ``pydoc_data.topics`` by topic, then
    stdlib docstrings by module (the first of a repeated ``doc_id`` kept)."""
    from pydoc_data.topics import topics  # a dict literal: the same wherever it is imported

    docs: dict[str, Doc] = {}
    for key, text in sorted(topics.items()):
        docs.setdefault(f"builtin:topic:{key}", (f"builtin:topic:{key}", "builtin",
                                                 f"topic:{key}", text))
    for name, path in _stdlib_sources():
        for qualname, text in _docstring_docs(name, path):
            doc_id = f"builtin:doc:{qualname}"
            docs.setdefault(doc_id, (doc_id, "builtin", qualname, text))
    return list(docs.values())


def text_hash(text: str) -> str:
    """A document's text hash as a manifest records it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def read_manifest(path: Path) -> list[tuple[str, str]]:
    """``(doc_id, text hash)`` of each line of a manifest (``#`` lines are comments)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split(" ", 1) for line in fh if not line.startswith("#")]
    return [(doc_id, digest) for digest, doc_id in rows]


def _cache_key(manifest: Path) -> str:
    """What the documents depend on: this interpreter's stdlib files (path, size, mtime), the
    manifest's bytes and this module's own code."""
    from pydoc_data import topics

    h = hashlib.sha256()
    files = [(name, p) for name, p in _stdlib_sources()] + [("topics", Path(topics.__file__))]
    for name, path in files:
        st = path.stat()
        h.update(f"{name}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for part in (sys.version.encode(), Path(__file__).read_bytes(),
                 manifest.read_bytes() if manifest.is_file() else b"-"):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def cache_dir() -> Path | None:
    """Where the read corpus is kept: the virtual environment's ``share/gptops`` (None outside a
    venv: a system interpreter's prefix is no place for it)."""
    return share_dir() if sys.prefix != sys.base_prefix else None


def builtin_docs(manifest: Path | None = None) -> list[Doc]:
    """The built-in corpus: the manifest's documents in its order (those this interpreter has
    with the manifest's text), or every document where the Python version has no manifest.

    Reading it parses ~500 stdlib files (~1.5 s); the result is kept in :func:`cache_dir` under
    a key of everything it depends on (:func:`_cache_key`), and read from there next time.
    """
    path = manifest or manifest_path()
    folder = cache_dir()
    cache = folder / f"builtin-{_cache_key(path)}.json" if folder else None
    found = _read_cache(cache) if cache else None
    if found is None:  # no venv, none yet, or unreadable: read the files
        found = _read_builtin_docs(path)
        if cache:
            _write_cache(cache, *found)
    docs, missing, changed = found
    if missing or changed:
        log.warning("built-in corpus: %d of the %d documents of %s are missing (%d) or have "
                    "another text (%d) in Python %s; they are left out, so the data version "
                    "will differ from the reference one", missing + changed, len(docs) + missing
                    + changed, path.name, missing, changed, sys.version.split()[0])
    return docs


def _read_cache(cache: Path) -> tuple[list[Doc], int, int] | None:
    """A cached corpus, or None when there is none or it is torn or foreign."""
    try:
        got = json.loads(cache.read_text(encoding="utf-8", errors="surrogatepass"))
        docs: list[Doc] = [(str(a), str(b), str(c), str(d)) for a, b, c, d in got["docs"]]
        return docs, int(got["missing"]), int(got["changed"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_cache(cache: Path, docs: list[Doc], missing: int, changed: int) -> None:
    """Keep a read corpus (through a temp file renamed into place); a read-only folder keeps
    nothing."""
    with contextlib.suppress(OSError):
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"docs": docs, "missing": missing, "changed": changed},
                                  ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
        tmp.replace(cache)


def _read_builtin_docs(path: Path) -> tuple[list[Doc], int, int]:
    """The documents read from this interpreter's files, and how many of the manifest's are
    missing and have another text."""
    docs = interpreter_docs()
    if not path.is_file():
        return docs, 0, 0
    by_id = {d[0]: d for d in docs}
    keep: list[Doc] = []
    missing = changed = 0
    for doc_id, digest in read_manifest(path):
        doc = by_id.get(doc_id)
        if doc is None:
            missing += 1
        elif text_hash(doc[3]) != digest:
            changed += 1
        else:
            keep.append(doc)
    return keep, missing, changed


def digest(docs: list[Doc]) -> str:
    """One sha256 over the documents' ids and texts, in order."""
    h = hashlib.sha256()
    for doc_id, _source, _name, text in docs:
        for part in (doc_id, text):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


if __name__ == "__main__":  # what this interpreter's files give (never the cache)
    found = _read_builtin_docs(manifest_path())[0]
    print(f"{len(found)} {digest(found)}")
