"""WARC and WET files in: main text out of the HTML, every record accounted for (built here with
warcio; nothing downloaded)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from bench.webpages import BOILERPLATE, make_pages, write_warc, write_wet
from gpt.config import load_params
from gpt.data import sources, stages
from gpt.data.sources import iter_source
from gpt.data.web import decode_html
from tests.conftest import data_config

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
pytestmark = pytest.mark.timeout(120)


def _all(source: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    docs, bad, skipped = [], [], {}
    for b in iter_source(data_config(source), batch_docs=7):
        docs.append(b.docs)
        bad.append(b.bad)
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return pd.concat(docs, ignore_index=True), pd.concat(bad, ignore_index=True), skipped


def test_warc_and_wet_records_become_documents_or_are_counted(tmp_path: Path) -> None:
    pages = make_pages(12, seed=1)
    written = write_warc(tmp_path / "crawl.warc.gz", pages)
    write_wet(tmp_path / "crawl.wet", [(p.url, p.main) for p in pages[:3]])
    docs, bad, skipped = _all(str(tmp_path / "crawl.*"))
    assert len(bad) == 0
    assert len(docs) == len(pages) + 3
    assert list(docs.columns[-2:]) == ["url", "date"]
    assert docs["url"].tolist() == [p.url for p in pages] + [p.url for p in pages[:3]]
    assert set(docs["date"]) == {"2026-01-02T03:04:05Z"}
    # Every record: a document or a skipped one by kind (the WET's warcinfo too).
    expected = {k: v for k, v in written.items() if k != "document"}
    expected["warcinfo"] += 1
    assert skipped == expected
    for page, text in zip(pages, docs["text"][:len(pages)], strict=True):
        for para in page.main.split("\n\n"):
            assert para in text  # the main text, whole
        assert not [b for b in BOILERPLATE if b[:25] in text]  # no nav/cookie/footer/script
        assert not [c for c in page.noise if c[:60] in text]  # no reader comments
    assert docs["text"].tolist()[len(pages):] == [p.main for p in pages[:3]]
    # Read again in the same process: the same documents (no extractor state across pages).
    pd.testing.assert_frame_equal(_all(str(tmp_path / "crawl.*"))[0], docs)


def _response(w: WARCWriter, url: str, body: bytes, headers: list[tuple[str, str]]) -> None:
    http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
    w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                        http_headers=http))


def test_charsets_truncation_and_corrupt_bodies(tmp_path: Path) -> None:
    page = make_pages(1, seed=2)[0]
    ascii_html = page.html.encode("ascii", "ignore").decode()
    latin = ascii_html.replace("</h1>\n<p>", "</h1>\n<p>Café crème à la française. ", 1)
    path = tmp_path / "mixed.warc"
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=False)
        # Declared in the HTTP header; declared only in <meta>; an unknown name (UTF-8 fallback).
        _response(w, "https://a.example/1", latin.encode("cp1252"),
                  [("Content-Type", "text/html; charset=windows-1252")])
        _response(w, "https://a.example/2", latin.replace('charset="utf-8"', "")
                  .replace("<meta charset=\"utf-8\">", '<meta charset="iso-8859-1">')
                  .encode("latin-1"), [("Content-Type", "text/html")])
        _response(w, "https://a.example/3", latin.encode("utf-8"),
                  [("Content-Type", "text/html; charset=no-such-charset")])
        # A gzip Content-Encoding whose body is not gzip: undecodable.
        _response(w, "https://a.example/4", b"\x1f\x8bnot gzip at all" * 10,
                  [("Content-Type", "text/html"), ("Content-Encoding", "gzip")])
    whole = path.read_bytes()
    cut = tmp_path / "cut.warc"
    cut.write_bytes(whole[:len(whole) - 400])  # the last record loses its end
    docs, bad, _ = _all(str(path))
    assert docs["text"].str.contains("Café crème à la française.", regex=False).tolist() == \
        [True] * 3
    assert bad["reason"].tolist() == ["bad_record=undecodable"]
    offset = int(bad["name"][0].rsplit(":", 1)[1])
    assert whole[offset:offset + 8] == b"WARC/1.0"  # the record's own offset
    docs_cut, bad_cut, _ = _all(str(cut))
    assert len(docs_cut) == 3 and bad_cut["reason"].tolist() == ["bad_record=truncated"]
    assert bad_cut["name"][0] == f"cut.warc:{offset}"


def test_decode_html_falls_back() -> None:
    assert decode_html("é".encode(), "text/html; charset=ascii") == "é"  # utf-8 fallback
    assert decode_html(b"caf\xe9", "text/html") == "café"  # cp1252 last
    assert decode_html(b'<meta charset="koi8-r">\xc1', "text/html").endswith("а")


def test_warc_ingest_and_clean_keep_url_and_date(tmp_path: Path) -> None:
    pages = make_pages(6, seed=3)
    (tmp_path / "in").mkdir()
    write_warc(tmp_path / "in" / "c.warc.gz", pages)
    params = load_params(PARAMS, overrides=[f"data.source={tmp_path / 'in' / '*.warc.gz'}",
                                            "clean.near_dedup=false"])
    info = stages.ingest(params, tmp_path)
    assert info["docs"] == 6 and info["skipped_records"]["request"] == 6
    stats = stages.clean(params, tmp_path, workers=1)
    assert stats["records_read"] == 6 + sum(info["skipped_records"].values())
    kept = pq.read_table(tmp_path / "data" / "clean" / "part-00000.parquet").to_pandas()
    raw = pq.read_table(tmp_path / "data" / "raw" / "part-00000.parquet").to_pandas()
    assert raw["url"].tolist() == [p.url for p in pages]
    # Kept rows carry their own page's url and date (the table-layout pages end their only line
    # in "|": line_punctuation).
    assert len(kept) >= 3 and kept["url"].tolist() == raw.set_index("doc_id").loc[
        kept["doc_id"], "url"].tolist()
    assert set(kept["date"]) == {"2026-01-02T03:04:05Z"}
    assert "| request | 6 |" in (tmp_path / "data" / "clean" / "report.md").read_text()
    assert json.loads((tmp_path / "data" / "clean_stats.json").read_text())[
        "skipped_records"]["metadata"] == 6


def test_web_files_are_extracted_in_parallel_in_file_order(tmp_path: Path, monkeypatch) -> None:
    """Several WARC/WET files go through a spawn pool, one file per job: the documents, bad
    records and counts are those of reading the files one by one, in the same order."""
    for i in range(5):
        write_warc(tmp_path / f"c{i}.warc.gz", make_pages(4, seed=10 + i))
    write_wet(tmp_path / "d.wet.gz", [(p.url, p.main) for p in make_pages(3, seed=99)])
    (tmp_path / "c2.warc.gz").write_bytes((tmp_path / "c2.warc.gz").read_bytes()[:-40])

    monkeypatch.setattr(sources, "PARALLEL_WEB_BYTES", 0)  # these few pages in parallel too

    def read(workers: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
        monkeypatch.setenv("GPTOPS_DATA_WORKERS", workers)
        return _all(str(tmp_path / "*"))

    one, many = read("1"), read("3")
    pd.testing.assert_frame_equal(one[0], many[0])
    pd.testing.assert_frame_equal(one[1], many[1])
    assert one[2] == many[2] and len(one[0]) >= 20 and len(one[1]) >= 1
    assert one[0]["source"].drop_duplicates().tolist() == sorted(
        str(p) for p in tmp_path.iterdir())
