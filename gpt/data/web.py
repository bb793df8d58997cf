"""Web crawl files: WARC (raw HTTP responses, HTML) and WET (extracted text) records as documents.

A WARC ``response`` record with HTTP status 200 and an HTML content type becomes a document: its
body is decoded (``Content-Encoding`` undone by ``warcio``), turned into text by the declared
charset (HTTP header, else the page's ``<meta charset>``) with UTF-8 then cp1252 as fallbacks,
and its main content extracted with trafilatura as FineWeb does (``favor_precision``, no
comments: navigation, cookie banners, footers, reader comments and scripts left out; chosen by
``bench/bench_extract.py``). A WET
``conversion`` record is a document as it is. Each document keeps its URL
(``WARC-Target-URI``) and crawl date (``WARC-Date``).

Every record is accounted for: a document, a skipped record counted by kind (``request``,
``metadata``, ``warcinfo`` ... by record type; ``non_200``, ``non_html``, ``no_text`` for
responses), or a bad record (``truncated``, ``undecodable``) named by file and byte offset.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from gpt.data.records import BadRecords

#: File formats read here (each may end in ``.gz``: records are gzipped one by one).
WEB_SUFFIXES = (".warc", ".wet")
#: Skipped response kinds (other skipped records are counted by their WARC type).
NON_200, NON_HTML, NO_TEXT = "non_200", "non_html", "no_text"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)

#: ``(doc_id, source, name, text, url, date)``.
WebRow = tuple[str, str, str, str, str, str]


def _charset(content_type: str, body: bytes) -> str | None:
    """The declared charset: the HTTP header's, else the page's own ``<meta>`` (first 4 KB)."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip(" \"'"):
            return value.strip(" \"'")
    found = _META_CHARSET.search(body[:4096])
    return found.group(1).decode("ascii") if found else None


def decode_html(body: bytes, content_type: str) -> str:
    """HTML bytes as text: the declared charset, else UTF-8, else cp1252 (bytes it lacks become
    U+FFFD, which the cleaner's ``invalid_utf8`` reason judges)."""
    declared = _charset(content_type, body)
    for name in (declared, "utf-8"):
        if not name:
            continue
        try:
            codecs.lookup(name)
            return body.decode(name)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace")


def extract_main_text(html: str) -> str:
    """The main content of a page as plain text ("" when there is none)."""
    import trafilatura

    # FineWeb's settings (datatrove's Trafilatura extractor): reader comments are not content.
    # Not its deduplicate=True: trafilatura's cache then drops paragraphs seen on earlier pages
    # of the same process, so a page's text would depend on the order and the worker.
    return trafilatura.extract(html, favor_precision=True, include_comments=False) or ""


def _header(record: object, name: str) -> str:
    return record.rec_headers.get_header(name) or ""  # type: ignore[attr-defined]


def iter_web(path: Path, bad: BadRecords, skipped: dict[str, int]) -> Iterator[WebRow]:
    """Documents of one WARC or WET file (plain or gzipped), streamed record by record.

    Args:
        path: the file.
        bad: where truncated or undecodable records go (by file and byte offset).
        skipped: skipped records are counted here by kind.
    """
    from warcio.exceptions import ArchiveLoadFailed

    src = str(path)
    wet = ".wet" in [s.lower() for s in path.suffixes]
    doc_type = "conversion" if wet else "response"
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        from gpt.errors import DataError

        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the path and its "
                        "permissions") from exc
    with fh:
        records = _Records(fh, arc2warc=True)
        offset, cut = 0, False
        try:
            for record in records:
                offset = records.offset  # this record's start (get_record_offset would read it)
                try:
                    body = (record.content_stream().read() if record.rec_type == doc_type
                            else record.raw_stream.read())
                except (OSError, EOFError, ValueError, zlib.error):
                    # Content-Encoding (gzip, brotli) undone by warcio: a corrupt body lands here.
                    bad.add(path, offset, "undecodable")
                    continue
                cut = getattr(record.raw_stream, "limit", 0) > 0  # short of its Content-Length
                if cut:
                    bad.add(path, offset, "truncated")
                    continue
                if record.rec_type != doc_type:
                    _count(skipped, record.rec_type)
                    continue
                if not wet and _undecodable(record, body):
                    bad.add(path, offset, "undecodable")
                    continue
                text = _record_text(record, body, wet, skipped)
                if text is None:
                    continue
                if not text.strip():
                    _count(skipped, NO_TEXT)
                    continue
                yield (f"{src}:{offset}", src, f"{path.name}:{offset}", text,
                       _header(record, "WARC-Target-URI"), _header(record, "WARC-Date"))
        except (ArchiveLoadFailed, EOFError, OSError, ValueError, zlib.error):
            # The rest of the file cannot be read: one bad record where reading stopped.
            bad.add(path, max(int(records.offset or 0), offset), "undecodable")
            return
        size = path.stat().st_size
        if not cut and size and (not records.whole or records.offset < size):
            # A gzip member cut short, or bytes left that hold no whole record header: the
            # record that began there is lost.
            bad.add(path, records.offset, "truncated")


class _Records:
    """warcio's record iterator, noting whether the last gzip member ended whole."""

    def __init__(self, fh: BinaryIO, **kwargs: object) -> None:
        from warcio.archiveiterator import ArchiveIterator

        outer = self

        class _Iterator(ArchiveIterator):
            def close(self) -> None:
                dec = getattr(self.reader, "decompressor", None) if self.reader else None
                outer.whole = dec is None or bool(getattr(dec, "eof", True))
                super().close()

        self.whole = True
        self._it = _Iterator(fh, **kwargs)

    @property
    def offset(self) -> int:
        return int(self._it.offset)

    def __iter__(self) -> Iterator[object]:
        return iter(self._it)


def _undecodable(record: object, body: bytes) -> bool:
    """A body left compressed (warcio keeps the bytes when ``Content-Encoding`` fails) or binary
    (NUL bytes) under a text content type: not a page that can be read."""
    http = record.http_headers  # type: ignore[attr-defined]
    if http is None:
        return False
    encoding = (http.get_header("Content-Encoding") or "").strip().lower()
    ctype = (http.get_header("Content-Type") or "").lower()
    return (encoding in ("gzip", "x-gzip") and body[:2] == b"\x1f\x8b") or \
        (ctype.startswith("text/") and b"\x00" in body[:4096])


def _count(skipped: dict[str, int], kind: str) -> None:
    skipped[kind] = skipped.get(kind, 0) + 1


def _record_text(record: object, body: bytes, wet: bool, skipped: dict[str, int]) -> str | None:
    """A record's document text; None (counted as skipped) when it is not a document."""
    if wet:
        return body.decode("utf-8", errors="replace")
    http = record.http_headers  # type: ignore[attr-defined]
    if http is None or http.get_statuscode() != "200":
        _count(skipped, NON_200)
        return None
    content_type = http.get_header("Content-Type") or ""
    if content_type.split(";")[0].strip().lower() not in _HTML_TYPES:
        _count(skipped, NON_HTML)
        return None
    return extract_main_text(decode_html(body, content_type))
