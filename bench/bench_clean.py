"""Cleaning benchmark: throughput with and without near-dedup, near-dedup recall and FP rate.

Builds a corpus of about ``--mb`` megabytes from the built-in corpus: copy 0 is the corpus as it
is, every further copy passes each document through a different random letter substitution (a
cipher: word lengths, punctuation, digits, lines and so every filter decision stay the same, but
the words differ, so copies are neither exact nor near duplicates of each other). Then it
injects near duplicates (one to three single-word edits of a long document, placed after the
original) and measures:

- MB/s per core of ``clean_documents`` without and with near-dedup (one process), and of
  ``clean_shards`` with ``--workers`` processes;
- MB/s per core of ``clean_documents`` (near-dedup off) on the same corpus with ``--mojibake``
  (default 1 %) of its documents read wrongly: a sentence with accents, curly quotes and a euro
  sign appended, then the UTF-8 bytes decoded as Windows-1252; and how many of those documents
  come out of normalisation as the correctly read ones do;
- near-dedup recall on the injected near duplicates, by exact Jaccard similarity of their word
  5-gram shingles to the original;
- the false-positive rate: documents flagged ``near_duplicate_of`` whose exact Jaccard
  similarity to the flagged document is below the threshold, over the documents that reached
  near-dedup.

Run: ``.venv/bin/python bench/bench_clean.py --mb 20`` (default 200); ``--no-near`` times only
the cleaning without near-dedup (the throughput part); ``--rule-shares`` times each quality rule;
``--every-rule`` sets every rule at FineWeb's value (docs/data.md's block for a web crawl).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpora import cipher  # noqa: E402
from gpt.config import CleanConfig, load_params  # noqa: E402
from gpt.data.clean import CleanResult, clean_documents, clean_shards, normalize_batch  # noqa: E402
from gpt.data.records import DOC_COLUMNS  # noqa: E402
from gpt.data.sources import read_builtin  # noqa: E402

TARGET_PLAIN_MBS = 20.0
TARGET_NEAR_MBS = 5.0
TARGET_RECALL = 0.95
TARGET_FP = 0.01


@dataclass
class Corpus:
    """The benchmark corpus and the injected near duplicates (variant id -> original id, and
    the share of its words edited)."""

    docs: pd.DataFrame
    injected: dict[str, tuple[str, float]]


#: Shares of words edited in the injected near duplicates (recall is measured per share).
EDIT_SHARES = (0.01, 0.03, 0.05, 0.10)
#: Recall must reach TARGET_RECALL up to this share of edited words.
TARGET_SHARE = 0.05


def _edit(text: str, rng: random.Random, vocab: list[str], share: float) -> str:
    """Edit ``share`` of the words (at least one): replace, insert or delete, at random places."""
    words = text.split(" ")
    for _ in range(max(1, round(share * len(words)))):
        i = rng.randrange(len(words))
        op = rng.choice(("replace", "insert", "delete"))
        if op == "replace":
            words[i] = rng.choice(vocab)
        elif op == "insert":
            words.insert(i, rng.choice(vocab))
        elif len(words) > 1:
            del words[i]
    return " ".join(words)


def _merged(base: pd.DataFrame, per_doc: int) -> pd.DataFrame:
    """Join every ``per_doc`` consecutive documents into one (web-page-sized documents)."""
    if per_doc <= 1:
        return base
    groups = [base.iloc[i:i + per_doc] for i in range(0, len(base), per_doc)]
    return pd.DataFrame([(g["doc_id"].iloc[0], "builtin", g["name"].iloc[0],
                          "\n\n".join(g["text"])) for g in groups], columns=DOC_COLUMNS)


def build_corpus(mb: float, seed: int = 0, inject_fraction: float = 0.02,
                 per_doc: int = 1) -> Corpus:
    """About ``mb`` MB of documents derived from the built-in corpus, with near duplicates.

    ``per_doc`` > 1 joins that many consecutive built-in documents into one, for documents of
    web-page size (the built-in ones average about 350 bytes).
    """
    rng = random.Random(seed)
    base = _merged(read_builtin(), per_doc)
    texts = base["text"].tolist()
    base_bytes = sum(len(t.encode()) for t in texts)
    copies = max(1, round(mb * 1e6 / base_bytes))
    vocab = sorted({w for t in texts[:2000] for w in t.split() if w.isalpha()})
    long_idx = [i for i, t in enumerate(texts) if len(t.split()) >= 60]
    rows: list[tuple[str, str, str, str]] = []
    injected: dict[str, tuple[str, float]] = {}
    for c in range(copies):
        table = cipher(rng) if c else None
        copy_texts = [t.translate(table) for t in texts] if table else texts
        picks = set(rng.sample(long_idx, max(1, int(inject_fraction * len(texts)))))
        for i, (doc_id, name, text) in enumerate(zip(base["doc_id"], base["name"], copy_texts,
                                                     strict=True)):
            did = f"c{c}:{doc_id}"
            rows.append((did, "bench", name, text))
            if i in picks:
                vid = f"{did}:near"
                share = EDIT_SHARES[len(injected) % len(EDIT_SHARES)]
                rows.append((vid, "bench", name, _edit(text, rng, vocab, share)))
                injected[vid] = (did, share)
    return Corpus(pd.DataFrame(rows, columns=DOC_COLUMNS), injected)


#: Sentences appended to the documents that ``with_mojibake`` reads wrongly (every one encodes to
#: UTF-8 bytes that Windows-1252 can decode).
MOJIBAKE_SENTENCES = [
    "Ça coûte 5 € — don’t «panic», it’s über naïve.",
    "The café’s crème brûlée costs 4 € — it’s the résumé’s favourite.",
    "Größe, Übergang and Änderung: that’s German, isn’t it?",
]


def with_mojibake(docs: pd.DataFrame, fraction: float,
                  seed: int = 0) -> tuple[pd.DataFrame, dict[int, str]]:
    """``docs`` with ``fraction`` of the texts read wrongly (UTF-8 decoded as Windows-1252).

    Each chosen text (an ASCII one: misreading cannot change those, and some non-ASCII ones have
    bytes that Windows-1252 cannot decode) gets a non-ASCII sentence appended and is then
    misread. Returns the new frame and, per changed row, the correctly read text.
    """
    rng = random.Random(seed)
    texts = docs["text"].tolist()
    ascii_rows = [i for i, t in enumerate(texts) if t.isascii()]
    rows = sorted(rng.sample(ascii_rows, min(len(ascii_rows), round(fraction * len(docs)))))
    intended = {i: f"{texts[i]} {rng.choice(MOJIBAKE_SENTENCES)}" for i in rows}
    for i, text in intended.items():
        texts[i] = text.encode("utf-8").decode("cp1252")
    return docs.assign(text=texts), intended


def repaired_share(docs: pd.DataFrame, intended: dict[int, str]) -> float:
    """The share of misread texts that normalise to what their correctly read text does."""
    rows = list(intended)
    if not rows:
        return float("nan")
    bad = normalize_batch(pa.array(docs["text"].iloc[rows].tolist(), type=pa.large_string()))
    good = normalize_batch(pa.array([intended[i] for i in rows], type=pa.large_string()))
    return sum(a == b for a, b in zip(bad.to_pylist(), good.to_pylist(), strict=True)) / len(rows)


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int) -> float:
    """Exact Jaccard similarity of the word ``n``-gram shingle sets of two texts."""
    sa, sb = _shingles(a, n), _shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def near_dedup_quality(corpus: Corpus, res: CleanResult, cfg: CleanConfig) -> dict[str, float]:
    """Recall on injected near duplicates (per share of words edited) and the false-positive
    rate: flagged documents, not injected, whose exact similarity is below the threshold."""
    n = cfg.near_dedup_ngram
    reason = dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True))
    cleaned = dict(zip(res.kept["doc_id"], res.kept["text"], strict=True))
    text_of = dict(zip(corpus.docs["doc_id"], corpus.docs["text"], strict=True))
    found: dict[float, list[int]] = {s: [0, 0] for s in EDIT_SHARES}
    sims: dict[float, list[float]] = {s: [] for s in EDIT_SHARES}
    for vid, (orig, share) in corpus.injected.items():
        r = reason.get(vid)
        if orig not in cleaned or (r is not None and not r.startswith(("near_dup", "dup"))):
            continue  # the original was dropped, or the variant failed a quality filter
        found[share][1] += 1
        found[share][0] += int(r is not None)
        sims[share].append(jaccard(text_of[vid], text_of[orig], n))
    flagged = [(d, r.split("=", 1)[1]) for d, r in reason.items()
               if r.startswith("near_duplicate_of=") and d not in corpus.injected]
    false_pos = sum(jaccard(text_of[d], text_of[o], n) < cfg.near_dedup_threshold
                    for d, o in flagged)
    reached = len(res.kept) + sum(r.startswith(("near_dup", "duplicate_of")) for r in
                                  reason.values())
    out = {}
    for share, (hit, total) in found.items():
        mean = sum(sims[share]) / max(1, len(sims[share]))
        out[f"recall, {share:.0%} edited (n={total}, J~{mean:.2f})"] = hit / max(1, total)
    upto = [v for s, v in found.items() if s <= TARGET_SHARE]
    out[f"recall <= {TARGET_SHARE:.0%} edited"] = (sum(v[0] for v in upto)
                                                   / max(1, sum(v[1] for v in upto)))
    out["false-positive rate"] = false_pos / max(1, reached - len(corpus.injected))
    out["flagged non-injected"] = float(len(flagged))
    return out


def _cpu() -> float:
    """CPU seconds of this process and its finished children (worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args):  # noqa: ANN001, ANN202 - tiny helper
    """``(result, (wall seconds, CPU seconds))`` of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), _cpu()
    out = fn(*args)
    return out, (time.perf_counter() - wall, _cpu() - cpu)


def _language_rows(label: str, docs: pd.DataFrame, cfg: CleanConfig, languages: list[str],
                   plain: CleanResult, plain_s: tuple[float, float], mb: float,
                   repeats: int = 2) -> list[str]:
    """Language ID on vs off (alternating, ``repeats`` times), and lid.176 alone on the rows it
    judges (those every other filter kept: the kept ones and the exact copies)."""
    from gpt.data.clean.language import identify, model

    model()  # loaded once per process (~20 ms), not timed
    lid_cfg = cfg.model_copy(update={"languages": languages})
    judged_ids = set(plain.kept["doc_id"]) | set(
        plain.rejected.loc[plain.rejected["reason"].str.startswith("duplicate"), "doc_id"])
    judged = docs.loc[docs["doc_id"].isin(judged_ids), "text"]
    judged_mb = sum(len(t.encode()) for t in judged) / 1e6
    off_cpu, on_cpu = [plain_s[1]], []
    kept = 0
    for r in range(repeats):
        res, (_, cpu) = timed(clean_documents, docs, lid_cfg)
        on_cpu.append(cpu)
        kept = len(res.kept)
        if r < repeats - 1:
            off_cpu.append(timed(clean_documents, docs, cfg)[1][1])
    _, (_, alone) = timed(identify, pa.array(judged.tolist(), pa.large_string()))
    off, on = sorted(off_cpu)[len(off_cpu) // 2], sorted(on_cpu)[len(on_cpu) // 2]
    return [f"language ID ({label}, languages={languages}): off {mb / off:.1f} MB/s/core, on "
            f"{mb / on:.1f} MB/s/core (CPU medians of {len(off_cpu)}/{len(on_cpu)} alternating "
            f"runs; on/off time {on / off:.2f}x); {kept:,} kept; judged {len(judged):,} docs, "
            f"{judged_mb:.1f} MB: {judged_mb / max(on - off, 1e-9):.2f} MB/s/core from the "
            f"difference, {judged_mb / alone:.2f} MB/s/core lid.176 alone"]


def rule_shares(docs: pd.DataFrame, cfg: CleanConfig) -> list[str]:
    """CPU seconds of each quality rule over the corpus, as the engine runs them (4 MB batches,
    each rule judging the rows no earlier rule rejected), with the normalisation and the byte
    counts every rule shares; and how many documents each judged and rejected."""
    import numpy as np

    from gpt.data.clean import features
    from gpt.data.clean.engine import _batches
    from gpt.data.clean.filters import QUALITY_FILTERS, Batch

    arr = pa.array(docs["text"].tolist(), type=pa.large_string())
    cpu: dict[str, float] = {"normalise": 0.0, "byte counts": 0.0}
    judged: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for lo, hi in _batches(arr):
        t = time.process_time()
        batch_arr = normalize_batch(arr.slice(lo, hi - lo))
        cpu["normalise"] += time.process_time() - t
        t = time.process_time()
        batch = Batch(batch_arr, features(batch_arr), np.ones(hi - lo, dtype=bool))
        cpu["byte counts"] += time.process_time() - t
        with np.errstate(divide="ignore", invalid="ignore"):
            for reason in QUALITY_FILTERS:
                assert reason.rejects is not None
                t = time.process_time()
                hit = reason.rejects(batch, cfg) & batch.pending
                cpu[reason.name] = cpu.get(reason.name, 0.0) + time.process_time() - t
                judged[reason.name] = judged.get(reason.name, 0) + int(batch.pending.sum())
                rejected[reason.name] = rejected.get(reason.name, 0) + int(hit.sum())
                batch.pending &= ~hit
    total = sum(cpu.values())
    out = [f"| {'step':26} | {'CPU s':>6} | {'share':>6} | {'judged':>8} | {'rejected':>8} |",
           f"|{'-' * 28}|{'-' * 7}:|{'-' * 7}:|{'-' * 9}:|{'-' * 9}:|"]
    for name, sec in cpu.items():
        out.append(f"| {name:26} | {sec:6.2f} | {sec / total:6.1%} | "
                   f"{judged.get(name, len(docs)):8,} | {rejected.get(name, 0):8,} |")
    return out


def fineweb_values(docs_md: Path = Path(__file__).resolve().parents[1] / "docs" / "data.md"
                   ) -> dict:
    """The ``clean:`` values docs/data.md gives for a web crawl (FineWeb's value for every rule,
    the block after "set FineWeb's values"): the benchmark's "every rule on"."""
    import yaml

    text = docs_md.read_text(encoding="utf-8")
    block = text.split("set FineWeb's values", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)["clean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB")
    parser.add_argument("--workers", type=int, default=2, help="processes for clean_shards")
    parser.add_argument("--shards", type=int, default=8, help="shards for clean_shards")
    parser.add_argument("--merge", type=int, default=12,
                        help="also time documents made of this many built-in ones (0: skip)")
    parser.add_argument("--mojibake", type=float, default=0.01,
                        help="share of documents read wrongly in the mojibake corpus (0: skip)")
    parser.add_argument("--no-near", action="store_true",
                        help="time only cleaning without near-dedup (skip near-dedup quality)")
    parser.add_argument("--languages", default="",
                        help="also time clean.languages=[these] (comma-separated, e.g. en), "
                             "alternating with the run without, and language ID alone")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--every-rule", action="store_true",
                        help="every rule at FineWeb's value (docs/data.md's web-crawl block)")
    parser.add_argument("--rule-shares", action="store_true",
                        help="also time each quality rule on the web-page-sized corpus")
    args = parser.parse_args()

    cfg = load_params(args.params).clean
    if args.every_rule:
        cfg = cfg.model_copy(update=fineweb_values())
    plain_cfg = cfg.model_copy(update={"near_dedup": False})
    near_cfg = cfg.model_copy(update={"near_dedup": True})
    rows = []
    lid_rows: list[str] = []
    repaired: list[tuple[str, int, float]] = []
    near = corpus = None
    shares: list[str] = []
    for per_doc in [1] + ([args.merge] if args.merge > 1 else []):
        built, (build_s, _) = timed(build_corpus, args.mb, 0, 0.02, per_doc)
        docs = built.docs
        mb = sum(len(t.encode()) for t in docs["text"]) / 1e6
        label = f"{mb / len(docs) * 1e3:.1f} KB docs"
        print(f"corpus ({label}): {len(docs):,} docs, {mb:.1f} MB, {len(built.injected):,} "
              f"injected near duplicates (built in {build_s:.1f}s)")
        plain, plain_s = timed(clean_documents, docs, plain_cfg)
        rows.append((f"{label}: filters + exact dedup", 1, plain_s, mb, plain, TARGET_PLAIN_MBS))
        if args.languages:
            lid_rows.extend(_language_rows(label, docs, plain_cfg, args.languages.split(","),
                                           plain, plain_s, mb))
        if args.rule_shares and per_doc == max(1, args.merge):
            shares = [f"each rule's CPU time ({label}, near-dedup off):", *rule_shares(docs, cfg)]
        if args.mojibake > 0:
            bad_docs, intended = with_mojibake(docs, args.mojibake)
            bad_mb = sum(len(t.encode()) for t in bad_docs["text"]) / 1e6
            bad, bad_s = timed(clean_documents, bad_docs, plain_cfg)
            rows.append((f"{label}: same, {args.mojibake:.0%} mojibake docs", 1, bad_s, bad_mb,
                         bad, TARGET_PLAIN_MBS))
            repaired.append((label, len(intended), repaired_share(bad_docs, intended)))
        if args.no_near:
            continue
        with_near, near_s = timed(clean_documents, docs, near_cfg)
        rows.append((f"{label}: + near dedup", 1, near_s, mb, with_near, TARGET_NEAR_MBS))
        size = -(-len(docs) // args.shards)
        shards = [docs.iloc[i:i + size] for i in range(0, len(docs), size)]
        par, par_s = timed(clean_shards, shards, near_cfg, args.workers)
        assert par.stats == with_near.stats, "clean_shards disagrees with clean_documents"
        rows.append((f"{label}: + near dedup, {args.workers} workers", args.workers, par_s, mb,
                     par, TARGET_NEAR_MBS))
        if near is None:
            near, corpus = with_near, built

    print()
    print("MB/s/core = MB per CPU-second (this process and its workers), which a busy machine "
          "disturbs less than wall time.")
    print(f"| {'mode':44} | {'wall s':>7} | {'CPU s':>7} | {'MB/s':>7} | {'MB/s/core':>9} | "
          f"{'target':>6} | {'kept':>8} |")
    print(f"|{'-' * 46}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 10}:|{'-' * 7}:|{'-' * 9}:|")
    for name, _cores, (wall, cpu), mb, res, target in rows:
        print(f"| {name:44} | {wall:7.2f} | {cpu:7.2f} | {mb / wall:7.1f} | {mb / cpu:9.1f} | "
              f"{target:6.1f} | {len(res.kept):8,} |")
    for line in shares:
        print(line)
    for line in lid_rows:
        print(line)
    for label, n, share in repaired:
        print(f"mojibake ({label}): {share:.1%} of {n:,} misread documents normalise to what "
              "their correctly read text does")
    if near is None or corpus is None:
        return

    quality = near_dedup_quality(corpus, near, near_cfg)
    print()
    print(f"near dedup (threshold {near_cfg.near_dedup_threshold}, {near_cfg.near_dedup_num_perm} "
          f"permutations, {near_cfg.near_dedup_ngram}-word shingles):")
    print(f"| {'measure':40} | {'value':>8} | {'target':>8} |")
    print(f"|{'-' * 42}|{'-' * 9}:|{'-' * 9}:|")
    for key, value in quality.items():
        target = (f">= {TARGET_RECALL:.2f}" if key.startswith("recall <=") else
                  f"<= {TARGET_FP:.2f}" if key == "false-positive rate" else "")
        shown = f"{value:8.0f}" if key.startswith("flagged") else f"{value:8.4f}"
        print(f"| {key:40} | {shown} | {target:>8} |")
    print()
    print("rejections:", near.stats["rejected_by_reason"])


if __name__ == "__main__":
    main()
