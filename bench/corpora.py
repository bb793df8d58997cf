"""Synthetic corpora for the data benchmarks and tests: ciphered copies of the built-in corpus.

Copy 0 of a document is the document; every further copy passes it through a different random
letter substitution (a cipher): word lengths, punctuation, digits and lines stay, so every filter
decision stays the same, but the words differ, so copies are neither exact nor near duplicates
of each other. Documents are joined ``per_doc`` at a time into web-page-sized ones (~3 KB).
Injected duplicates (exact copies and copies with a share of their words edited) are placed
in later files than their originals, so dedup must work across files and shards.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

from gpt.data.sources import read_builtin


def cipher(rng: random.Random) -> dict[int, str]:
    """A random letter substitution (upper and lower case alike)."""
    lower = list(string.ascii_lowercase)
    rng.shuffle(lower)
    table = {ord(a): b for a, b in zip(string.ascii_lowercase, lower, strict=True)}
    table.update({ord(a.upper()): b.upper() for a, b in zip(string.ascii_lowercase, lower,
                                                            strict=True)})
    return table


def edit_words(text: str, share: float, rng: random.Random, vocab: list[str]) -> str:
    """Replace ``share`` of the words (at least one) by random words of ``vocab``."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def base_documents(per_doc: int = 4) -> list[str]:
    """The built-in corpus's texts, joined ``per_doc`` at a time."""
    texts = read_builtin()["text"].tolist()
    return ["\n\n".join(texts[i:i + per_doc]) for i in range(0, len(texts), per_doc)]


@dataclass
class Written:
    """What ``write_corpus`` wrote: files, bytes, and the injected duplicates."""

    files: list[Path]
    bytes: int
    #: doc name (``file:line``) of an injected duplicate -> (original's name, edited share)
    injected: dict[str, tuple[str, float]] = field(default_factory=dict)


def write_corpus(folder: Path, mb: float, file_mb: float = 50.0, seed: int = 0,
                 inject: int = 0, shares: tuple[float, ...] = (0.0,),
                 base: list[str] | None = None) -> Written:
    """Write about ``mb`` MB of ciphered documents as ``corpus-NNN.jsonl`` files.

    Args:
        folder: where the files go.
        mb: total size.
        file_mb: size of each file.
        seed: the ciphers' and edits' seed.
        inject: duplicates to inject, spread over the corpus, each of an earlier document
            (in an earlier file where there is one), with ``shares`` of their words edited in
            turn (0.0 = an exact copy).
        base: the documents ciphered (default ``base_documents()``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = base if base is not None else base_documents()
    vocab = sorted({w for t in base[:200] for w in t.split()})
    limit, per_file = int(mb * 1e6), int(file_mb * 1e6)
    every = max(1, int(limit / 3000 / max(inject, 1)))
    out = Written([], 0)
    done: list[tuple[str, str]] = []  # (name, text) of documents written so far (sampled)
    fh, written_file, line, copy = None, per_file, 0, 0
    while out.bytes < limit:
        table = cipher(rng) if copy else {}
        for text in base:
            if out.bytes >= limit:
                break
            if written_file >= per_file:
                if fh:
                    fh.close()
                out.files.append(folder / f"corpus-{len(out.files):03d}.jsonl")
                fh, written_file, line = out.files[-1].open("w", encoding="utf-8"), 0, 0
            doc = text.translate(table) if table else text
            n_doc = len(done)
            if inject and n_doc and n_doc % every == 0 and len(out.injected) < inject:
                orig_name, orig = done[rng.randrange(max(1, len(done) // 2))]
                share = shares[len(out.injected) % len(shares)]
                doc = orig if share == 0 else edit_words(orig, share, rng, vocab)
                out.injected[f"{out.files[-1].name}:{line + 1}"] = (orig_name, share)
            record = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            fh.write(record)
            line += 1
            size = len(record.encode("utf-8"))
            written_file += size
            out.bytes += size
            if rng.random() < 0.05 or len(done) < 50:
                done.append((f"{out.files[-1].name}:{line}", doc))
        copy += 1
    if fh:
        fh.close()
    return out
