"""URL block lists (``clean.url_blocklist``): local files, nothing downloaded.

Each line of a file is a blocked domain (``casino.example`` blocks that host and every host
under it) or, written ``word:<word>``, a banned URL word (matched against the URL's words: its
lowercase runs of letters and digits, as datatrove's ``URLFilter`` matches banned words). Blank
lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from gpt.errors import DataError

_WORD = "word:"
_SPLIT = re.compile(r"[^a-z0-9]+")


@functools.cache
def load(paths: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """``(domains, words)`` of the block-list files.

    Raises:
        DataError: a file cannot be read.
    """
    domains: set[str] = set()
    words: set[str] = set()
    for p in paths:
        try:
            text = Path(p).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"clean.url_blocklist file '{p}' cannot be read ({exc}); fix the path "
                            "or remove it from clean.url_blocklist") from exc
        for line in text.splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry.startswith(_WORD):
                words.add(entry[len(_WORD):].strip())
            elif entry:
                domains.add(entry.lstrip("*.").rstrip("."))
    return frozenset(domains), frozenset(words - {""})


def digest(paths: list[str]) -> str:
    """A hash of the block lists' contents (so a changed list re-runs cleaning)."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p).expanduser()
        h.update(p.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>"))
    return h.hexdigest()[:16]


def blocked(urls: list[str], paths: tuple[str, ...]) -> np.ndarray:
    """Per URL, whether its host is a blocked domain (or under one) or it has a banned word."""
    domains, words = load(paths)
    out = np.zeros(len(urls), dtype=bool)
    for i, url in enumerate(urls):
        if not url:
            continue
        host = (urlsplit(url).hostname or "").rstrip(".")
        parts = host.split(".")
        out[i] = any(".".join(parts[k:]) in domains for k in range(len(parts))) or (
            bool(words) and not words.isdisjoint(_SPLIT.split(url.lower())))
    return out
