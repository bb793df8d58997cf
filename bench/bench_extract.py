"""HTML main-text extraction: quality on pages with a known main text, and MB/s of HTML per core.

Pages come from ``bench.webpages`` (three layouts; navigation, cookie banner, sidebar, footer,
script and style around four prose paragraphs). Extractors, all installed with gptops:

- ``gpt.data.web.extract_main_text``: trafilatura with FineWeb's settings (datatrove's
  extractor: ``favor_precision``, ``include_comments=False``; not its ``deduplicate``, whose
  cache drops paragraphs seen on earlier pages: measured here, 204 of 300 pages came out empty
  on a second pass);
- ``trafilatura (favor_precision)`` (comments kept, trafilatura's default) and
  ``trafilatura (default)``;
- ``jusText`` (trafilatura's own dependency; English stop list).

Per extractor: main-text word recall and precision (bag of words against the known main text),
the share of main paragraphs recovered whole, the share of pages leaking any boilerplate line,
the share of pages with reader comments that keep them, and MB of HTML per CPU second (one
process, so per core). Then the whole WARC -> documents path (``gpt.data.sources.iter_source``
on a gzipped WARC with request/metadata records) in MB of WARC per CPU second.

Last, ``--parallel-pages`` pages split over ``--files`` WARC files read with one process and
with a worker per core (files are extracted in parallel, in file order): wall-clock MB/s of WARC.

Run: ``.venv/bin/python bench/bench_extract.py --pages 300``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.webpages import BOILERPLATE, Page, make_pages, write_warc  # noqa: E402
from gpt.config import PROJECT_PARAMS, load_params  # noqa: E402
from gpt.data.sources import iter_source  # noqa: E402


def _trafilatura(precision: bool) -> Callable[[str], str]:
    import trafilatura

    return lambda html: trafilatura.extract(html, favor_precision=precision) or ""


def _chosen(html: str) -> str:
    from gpt.data.web import extract_main_text

    return extract_main_text(html)


def _justext(html: str) -> str:
    import justext

    paras = justext.justext(html.encode("utf-8"), justext.get_stoplist("English"))
    return "\n".join(p.text for p in paras if not p.is_boilerplate)


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "gptops: trafilatura as FineWeb (favor_precision, no comments)": _chosen,
    "trafilatura (favor_precision)": _trafilatura(True),
    "trafilatura (default)": _trafilatura(False),
    "jusText": _justext,
}


def quality(pages: list[Page], texts: list[str]) -> dict[str, float]:
    """Word recall/precision against the main texts, whole paragraphs, boilerplate leaks."""
    hit = tot_main = tot_out = 0
    paras = paras_whole = leaks = noisy = with_noise = 0
    for page, text in zip(pages, texts, strict=True):
        main, out = Counter(page.main.split()), Counter(text.split())
        common = sum((main & out).values())
        hit += common
        tot_main += sum(main.values())
        tot_out += sum(out.values())
        for para in page.main.split("\n\n"):
            paras += 1
            paras_whole += " ".join(para.split()) in " ".join(text.split())
        leaks += any(b[:25] in text for b in BOILERPLATE)
        with_noise += bool(page.noise)
        noisy += any(c[:60] in text for c in page.noise)
    return {"recall": hit / tot_main, "precision": hit / max(tot_out, 1),
            "whole_paragraphs": paras_whole / paras, "pages_leaking": leaks / len(pages),
            "comments_kept": noisy / max(with_noise, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=8,
                    help="WARC files for the parallel read (0 = skip it)")
    ap.add_argument("--parallel-pages", type=int, default=3000,
                    help="pages over those files")
    args = ap.parse_args()
    pages = make_pages(args.pages, seed=7)
    mb = sum(len(p.html.encode()) for p in pages) / 1e6
    print(f"{len(pages)} pages, {mb:.2f} MB of HTML, {args.repeats} repeats (alternating)\n")
    speeds: dict[str, list[float]] = {name: [] for name in EXTRACTORS}
    outs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in EXTRACTORS.items():
            t0 = time.process_time()
            outs[name] = [fn(p.html) for p in pages]
            speeds[name].append(mb / (time.process_time() - t0))
    print("| extractor | word recall | word precision | paragraphs whole | pages leaking "
          "boilerplate | pages with comments keeping them | MB/s of HTML per core (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in EXTRACTORS:
        q = quality(pages, outs[name])
        med = sorted(speeds[name])[len(speeds[name]) // 2]
        print(f"| {name} | {q['recall']:.3f} | {q['precision']:.3f} | "
              f"{q['whole_paragraphs']:.3f} | {q['pages_leaking']:.3f} | "
              f"{q['comments_kept']:.3f} | {med:.2f} |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crawl.warc.gz"
        write_warc(path, pages)
        size = path.stat().st_size / 1e6
        t0 = time.process_time()
        data = load_params(PROJECT_PARAMS).data.model_copy(update={"source": str(path)})
        docs = sum(len(b.docs) for b in iter_source(data))
        dt = time.process_time() - t0
    print(f"\nWARC -> documents (iter_source, gptops's extractor): {docs} documents, "
          f"{size:.2f} MB of gzipped WARC ({mb:.2f} MB of HTML) in {dt:.2f} CPU s: "
          f"{size / dt:.2f} MB/s of WARC.gz, {mb / dt:.2f} MB/s of HTML per core")
    if args.files > 1:
        parallel(make_pages(args.parallel_pages, seed=11), args.files, args.repeats)


def parallel(pages: list[Page], files: int, repeats: int) -> None:
    """Wall-clock MB/s of WARC over ``files`` files: one process vs a worker per core
    (``GPTOPS_DATA_WORKERS``), alternated, median of ``repeats``; same documents either way."""
    from gpt.data import sources

    sources.PARALLEL_WEB_BYTES = 0  # the pool whatever the size (a real crawl is GBs)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(files):
            write_warc(Path(tmp) / f"crawl-{i:03d}.warc.gz", pages[i::files])
        size = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        data = load_params(PROJECT_PARAMS).data.model_copy(update={"source": f"{tmp}/*"})
        walls: dict[int, list[float]] = {1: [], cores: []}
        ids: dict[int, list[str]] = {}
        for _ in range(repeats):
            for workers in walls:
                os.environ["GPTOPS_DATA_WORKERS"] = str(workers)
                t0 = time.perf_counter()
                ids[workers] = [d for b in iter_source(data) for d in b.docs["doc_id"]]
                walls[workers].append(time.perf_counter() - t0)
        os.environ.pop("GPTOPS_DATA_WORKERS", None)
    assert ids[1] == ids[cores], "parallel extraction changed the documents or their order"
    print(f"\nWARC files in parallel ({files} files, {size:.2f} MB of WARC.gz, {cores} cores, "
          f"median wall of {repeats}):")
    print("| workers | wall s | MB/s of WARC.gz |\n|---:|---:|---:|")
    for workers, w in walls.items():
        med = sorted(w)[len(w) // 2]
        print(f"| {workers} | {med:.2f} | {size / med:.2f} |")


if __name__ == "__main__":
    main()
