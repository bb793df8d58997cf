"""Write the built-in corpus's manifest for one Python minor version (gpt/data/builtin.py).

    python scripts/builtin-manifest.py PYTHON [PYTHON ...]   # interpreters of one minor version

Each interpreter lists its documents (``doc_id`` and text hash) in a clean process (``-I``, no
environment variables, another cwd); the manifest keeps the documents that every one of them has
with the same text, in the first one's order, and says which releases it was made from. Give it
every patch release at hand (the more, the fewer documents a later release lacks); it prints what
differs between them. Then regenerate dvc.lock (scripts/lock-data.sh): the corpus changed.
Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LIST = """import sys
sys.path.insert(0, sys.argv[1])
from gpt.data.builtin import interpreter_docs, text_hash
print(sys.version.split()[0], "%d.%d" % sys.version_info[:2])
for doc_id, _source, _name, text in interpreter_docs():
    print(text_hash(text), doc_id)
"""


def list_docs(python: str) -> tuple[str, str, list[tuple[str, str]]]:
    """``(version, minor version, [(doc_id, text hash)])`` of one interpreter."""
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(["env", "-i", f"HOME={cwd}", python, "-I", "-c", _LIST, str(ROOT)],
                             cwd=cwd, capture_output=True, text=True, check=True).stdout
    head, *lines = out.splitlines()
    version, minor = head.split()
    return version, minor, [(doc_id, digest) for digest, doc_id in
                            (line.split(" ", 1) for line in lines)]


def _group(doc_id: str) -> str:
    """``topic`` or a docstring's top-level module, to summarise differences."""
    kind, _, rest = doc_id.removeprefix("builtin:").partition(":")
    return "topic" if kind == "topic" else rest.split(".")[0]


def compare(listed: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The documents every interpreter has with the same text, in the first one's order; what
    differs is printed by kind (only in some, another text) and by module."""
    first, *others = listed.values()
    maps = {v: dict(docs) for v, docs in listed.items()}
    common = [(d, h) for d, h in first if all(m.get(d) == h for m in maps.values())]
    every = dict.fromkeys(d for docs in listed.values() for d, _ in docs)
    absent = [d for d in every if any(d not in m for m in maps.values())]
    changed = [d for d in every if d not in absent and len({m[d] for m in maps.values()}) > 1]
    for v, docs in listed.items():
        print(f"{v}: {len(docs)} documents", file=sys.stderr)
    print(f"identical in all: {len(common)}; missing from some: {len(absent)}; another text: "
          f"{len(changed)}", file=sys.stderr)
    for label, ids in (("missing from some", absent), ("another text", changed)):
        by = collections.Counter(_group(d) for d in ids)
        print(f"  {label} by module: " + ", ".join(f"{g} {n}" for g, n in by.most_common()),
              file=sys.stderr)
    for d in absent:
        print(f"  missing: {d} (in {', '.join(v for v, m in maps.items() if d in m)})",
              file=sys.stderr)
    for d in changed:
        print(f"  changed: {d}", file=sys.stderr)
    return common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pythons", nargs="+", help="interpreters of one Python minor version")
    ap.add_argument("--out", type=Path, help="default: gpt/data/builtin-<minor>.txt.gz")
    args = ap.parse_args()
    listed: dict[str, list[tuple[str, str]]] = {}
    minors = set()
    for python in args.pythons:
        version, minor, docs = list_docs(python)
        listed[version] = docs
        minors.add(minor)
    if len(minors) != 1:
        sys.exit(f"builtin-manifest: give interpreters of one minor version (got {sorted(minors)})")
    common = compare(listed)
    out = args.out or ROOT / "gpt" / "data" / f"builtin-{minors.pop()}.txt.gz"
    text = io.StringIO()
    text.write(f"# built-in corpus of Python {', '.join(listed)}: the {len(common)} documents "
               "identical in all (text hash, doc_id); written by scripts/builtin-manifest.py\n")
    text.writelines(f"{digest} {doc_id}\n" for doc_id, digest in common)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.getvalue().encode("utf-8"))
    out.write_bytes(buf.getvalue())
    print(f"builtin-manifest: wrote {out} ({len(common)} documents, {len(buf.getvalue())} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
