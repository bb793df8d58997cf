"""Web pages with a known main text, and WARC/WET files of them, built here (nothing downloaded).

Each page wraps its main text (prose paragraphs from Python's own documentation) in the
boilerplate an extractor must drop: a navigation bar, a cookie banner, a sidebar, a footer, a
script and a style sheet; a third of the pages also carry reader comments (prose, ``noise``).
``BOILERPLATE`` lists lines that must never reach a document.
"""

from __future__ import annotations

import html
import io
import random
from dataclasses import dataclass
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

#: Lines of boilerplate on every page (none may come out of the extractor).
BOILERPLATE = (
    "We use cookies to improve your experience. Accept all cookies",
    "Home | Products | Blog | About us | Contact",
    "Copyright 2026 Example Corp. All rights reserved. Privacy policy. Terms of use.",
    "Subscribe to our newsletter for weekly updates",
    "var tracker = initTracking('UA-000000');",
    "Related posts: Ten tips for faster code",
)


@dataclass
class Page:
    """A page: its URL, HTML, and the main text it carries (paragraphs joined by blank lines)."""

    url: str
    html: str
    main: str
    noise: tuple[str, ...] = ()  # prose outside the main text (reader comments)


def _paragraphs() -> list[str]:
    """Prose paragraphs of the stdlib's reference topics (no code, no tables)."""
    from pydoc_data.topics import topics

    out = []
    for _, text in sorted(topics.items()):
        for para in text.split("\n\n"):
            flat = " ".join(para.split())
            if 200 <= len(flat) <= 1200 and flat.endswith(".") and flat[0].isupper() \
                    and not any(c in flat for c in "<>{}[]=*|"):
                out.append(flat)
    return out


def _wrap(i: int, body: str, comments: str) -> str:
    """The main text in one of three layouts (article, content div, table cell)."""
    title = f"<h1>Article {i}: notes on the language</h1>"
    if i % 3 == 0:
        return f"<main><article>{title}\n{body}\n</article></main>"
    if i % 3 == 1:
        return (f'<div id="wrapper"><div class="content entry">{title}\n{body}\n</div>'
                '<div class="share">Share: Twitter Facebook</div>'
                f'<div id="comments" class="comments"><h3>2 comments</h3>{comments}</div></div>')
    return (f'<table><tr><td class="menu"><a href="/a">Archive</a></td><td>{title}\n'
            f"{body.replace('<p>', '<br><br>').replace('</p>', '')}</td></tr></table>")


def make_pages(n: int, seed: int = 0, paragraphs: int = 4) -> list[Page]:
    """``n`` pages, each with ``paragraphs`` paragraphs of main text and all the boilerplate."""
    rng = random.Random(seed)
    pool = _paragraphs()
    pages = []
    for i in range(n):
        main = rng.sample(pool, paragraphs + 2)
        main, noise = main[:paragraphs], tuple(main[paragraphs:]) if i % 3 == 1 else ()
        comments = "".join(f'<div class="comment"><span class="author">reader{k}</span>'
                           f"<p>{html.escape(c)}</p></div>" for k, c in enumerate(noise))
        body = "\n".join(f"<p>{html.escape(p)}</p>" for p in main)
        cookie, nav, footer, news, script, related = BOILERPLATE
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Article {i}</title>
<style>body {{ font-family: sans-serif; }} .nav a {{ color: blue; }}</style>
<script>{script}</script></head>
<body>
<div id="cookie-banner" class="cookie-consent"><p>{cookie}</p><button>Accept</button></div>
<header><nav class="nav"><ul>{''.join(f'<li><a href="/{w}">{w}</a></li>'
                                      for w in nav.split(' | '))}</ul></nav></header>
{_wrap(i, body, comments)}
<aside class="sidebar"><h3>Related</h3><ul><li><a href="/r1">{related}</a></li></ul>
<form><p>{news}</p><input type="email"></form></aside>
<footer class="site-footer"><p>{footer}</p></footer>
</body></html>"""
        pages.append(Page(f"https://site{i % 7}.example.org/articles/{i}", page,
                          "\n\n".join(main), noise))
    return pages


def _http(body: bytes, status: str = "200 OK", ctype: str = "text/html; charset=utf-8"
          ) -> StatusAndHeaders:
    return StatusAndHeaders(status, [("Content-Type", ctype),
                                     ("Content-Length", str(len(body)))], protocol="HTTP/1.1")


def write_warc(path: Path, pages: list[Page], extras: bool = True,
               date: str = "2026-01-02T03:04:05Z") -> dict[str, int]:
    """A WARC file (gzipped per record when ``path`` ends in ``.gz``) holding ``pages``.

    With ``extras``: a warcinfo record, a request and a metadata record per page, and one 404
    response and one image response, which are not documents.

    Returns:
        How many records of each kind were written (``document`` for the pages).
    """
    counts = {"document": 0}

    def count(kind: str) -> None:
        counts[kind] = counts.get(kind, 0) + 1

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=path.suffix == ".gz")
        hdr = {"WARC-Date": date}
        if extras:
            w.write_record(w.create_warcinfo_record(path.name, {"software": "gptops-test"}))
            count("warcinfo")
        for p in pages:
            body = p.html.encode("utf-8")
            if extras:
                req = StatusAndHeaders(f"GET {p.url} HTTP/1.1", [("Host", "example.org")],
                                       is_http_request=True)
                w.write_record(w.create_warc_record(p.url, "request", http_headers=req,
                                                    warc_headers_dict=hdr))
                count("request")
            w.write_record(w.create_warc_record(p.url, "response", payload=io.BytesIO(body),
                                                http_headers=_http(body), warc_headers_dict=hdr))
            count("document")
            if extras:
                w.write_record(w.create_warc_record(p.url, "metadata",
                                                    payload=io.BytesIO(b"fetchTimeMs: 12\n"),
                                                    warc_content_type="application/warc-fields",
                                                    warc_headers_dict=hdr))
                count("metadata")
        if extras:
            missing = b"<html><body><p>Not found</p></body></html>"
            w.write_record(w.create_warc_record("https://example.org/gone", "response",
                                                payload=io.BytesIO(missing),
                                                http_headers=_http(missing, "404 Not Found"),
                                                warc_headers_dict=hdr))
            count("non_200")
            png = b"\x89PNG\r\n\x1a\n" + bytes(64)
            w.write_record(w.create_warc_record("https://example.org/logo.png", "response",
                                                payload=io.BytesIO(png),
                                                http_headers=_http(png, ctype="image/png"),
                                                warc_headers_dict=hdr))
            count("non_html")
    return counts


def write_wet(path: Path, texts: list[tuple[str, str]], date: str = "2026-01-02T03:04:05Z"
              ) -> None:
    """A WET file: a warcinfo record, then a ``conversion`` record per ``(url, text)``."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=path.suffix == ".gz")
        w.write_record(w.create_warcinfo_record(path.name, {"software": "gptops-test"}))
        for url, text in texts:
            w.write_record(w.create_warc_record(url, "conversion",
                                                payload=io.BytesIO(text.encode("utf-8")),
                                                warc_content_type="text/plain",
                                                warc_headers_dict={"WARC-Date": date}))


def write_warc_corpus(folder: Path, mb: float, file_mb: float = 10.0, seed: int = 0
                      ) -> list[Path]:
    """About ``mb`` MB of gzipped WARC in files of about ``file_mb`` MB (``crawl-NNNN.warc.gz``),
    pages drawn with a seed per file (for the scale bench: corpus size vs memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".probe.warc.gz"
    write_warc(probe, make_pages(200, seed=seed))
    per_page = probe.stat().st_size / 200
    probe.unlink()
    files, written, i = [], 0.0, 0
    while written < mb * 1e6:
        path = folder / f"crawl-{i:04d}.warc.gz"
        want = min(file_mb * 1e6, mb * 1e6 - written)
        write_warc(path, make_pages(max(1, int(want / per_page)), seed=seed * 100_003 + i))
        written += path.stat().st_size
        files.append(path)
        i += 1
    return files
