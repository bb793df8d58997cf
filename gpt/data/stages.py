"""The DVC data stages: ingest → clean → tokenize, shard by shard.

Each stage reads its inputs from the workspace folder and is what ``dvc.yaml``'s ``cmd`` runs
(``gptops data <stage>``). Each streams: ``data/raw``, ``data/clean`` and ``data/tokens`` are
folders of numbered shards (``part-00000.parquet`` ..., ``train-00000.bin`` ...) of about
``data.shard_mb`` of text, so a stage's memory follows the shard size, not the corpus size.
Outputs are written resumably and atomically (``gpt.data.shards``): a killed stage run again
skips its completed shards, and the output folder appears only when every shard is done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpt import progress
from gpt.config import HF_PREFIX, Params
from gpt.data.clean import Mapper, clean_parts, decontam, language, render_report
from gpt.data.clean import urls as url_lists
from gpt.data.clean.engine import validated_docs
from gpt.data.loader import encode_shard, is_val_doc, write_meta
from gpt.data.records import BAD_COLUMNS
from gpt.data.shards import (
    MANIFEST,
    PART,
    SCRATCH,
    ShardedOutput,
    fingerprint,
    is_done,
    mark_done,
    parts,
    read_part,
    sharded_output,
    write_parquet,
)
from gpt.data.sources import iter_source, local_paths
from gpt.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from gpt.data.watch import save_ingest, source_files
from gpt.data.workers import default_workers
from gpt.errors import DataError, NoSpaceError, no_space
from gpt.layout import Workspace

log = logging.getLogger(__name__)

#: Bad records of the source (``data.on_bad_record: reject``), in ``data/raw``.
BAD_RECORDS = "rejected.parquet"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove temp files and folders next to ``final`` left by killed processes (pid gone)."""
    removed = []
    for tmp in Path(final).parent.glob(f".{Path(final).name}*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
            log.info("removed %s, left by a killed process %s", tmp, pid)
    return removed


def _out_of_space(final: Path, exc: BaseException) -> NoSpaceError | None:
    """The one-line error for a write of ``final`` that failed on a full disk, else None."""
    if isinstance(exc, DataError) or no_space(exc) is None:
        return None
    return NoSpaceError(final.parent, f"{final.name} could not be written there; free space (or "
                        "use a workspace on a larger disk), then re-run the stage (it resumes "
                        "at the shards not yet written)")


@contextmanager
def _output(final: Path, stage: str, print_: str) -> Iterator[ShardedOutput]:
    """The stage's resumable output folder (see ``gpt.data.shards``), saying what it resumes."""
    remove_stale_temps(final)
    try:
        with sharded_output(final, print_) as out:
            if out.resumed:
                log.info("%s: resuming a killed run: %d shard file(s) already complete", stage,
                         len(out.resumed))
            yield out
    except BaseException as exc:
        full = _out_of_space(final, exc)
        if full is not None:
            raise full from exc
        raise


def _write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temp file renamed into place (:class:`NoSpaceError` if full)."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = _out_of_space(path, exc)
        if full is not None:
            raise full from exc
        raise
    os.replace(tmp, path)


def _source_state(source: str) -> Any:
    """What the source's files are (path, size, mtime), so a resume never mixes two versions."""
    if source == "builtin" or source.startswith(HF_PREFIX):
        return [source, sys.version]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in local_paths(source)]


def _inputs_state(directory: Path, prefix: str = "part-") -> list[tuple[str, int, int]]:
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parts(directory, prefix)]


class _ShardWriter:
    """Cuts a stream of document frames into shards of about ``shard_bytes`` of text."""

    def __init__(self, out: ShardedOutput, shard_bytes: int) -> None:
        self.out, self.shard_bytes = out, shard_bytes
        self.frames: list[pd.DataFrame] = []
        self.bytes = 0
        self.shards: list[dict[str, Any]] = []
        #: The mixture source (its index in ``data.sources``) of the shards written now; None
        #: for one source (its manifest stays as it was before mixtures).
        self.source: int | None = None

    def add(self, docs: pd.DataFrame) -> None:
        while len(docs):
            sizes = docs["text"].str.encode("utf-8", "surrogatepass").str.len().to_numpy()
            room = self.shard_bytes - self.bytes
            cut = int(np.searchsorted(np.cumsum(sizes), room, "left")) + 1
            head, docs = docs.iloc[:cut], docs.iloc[cut:]
            self.frames.append(head)
            self.bytes += int(sizes[:cut].sum())
            if self.bytes >= self.shard_bytes:
                self.flush()

    def flush(self) -> None:
        if not self.frames:
            return
        frame = pd.concat(self.frames, ignore_index=True)
        name = PART.format(len(self.shards))
        if not self.out.done(name):
            write_parquet(validated_docs(frame), self.out.path / name)
            self.out.complete(name)
        self.shards.append({"file": name, "docs": len(frame), "bytes": self.bytes,
                            **({} if self.source is None else {"source": self.source})})
        self.frames, self.bytes = [], 0


def scrub_docs(docs: pd.DataFrame, kinds: tuple[str, ...],
               counts: dict[str, int]) -> pd.DataFrame:
    """``docs`` with the PII of ``kinds`` in their text replaced by placeholders (cleaning's
    scrubber, ``gpt.data.clean.scrub``), adding the placeholders written per kind to
    ``counts``."""
    import pyarrow as pa

    from gpt.data.clean.scrub import scrub_batch

    if not kinds or docs.empty:
        return docs
    texts = pa.array(docs["text"].tolist(), type=pa.large_string())
    scrubbed, found = scrub_batch(texts, kinds, np.arange(len(docs)))
    if not found:
        return docs
    for per_doc in found.values():
        for kind, n in per_doc.items():
            counts[kind] = counts.get(kind, 0) + n
    return docs.assign(text=scrubbed.to_pylist())


def ingest(params: Params, workdir: Path) -> dict[str, Any]:
    """Stream the configured source into ``data/raw/part-NNNNN.parquet`` shards.

    Memory: one batch of records and one shard (``data.shard_mb``). Bad records (invalid JSON,
    a missing or empty text) go to ``data/raw/rejected.parquet`` with file, line and reason
    (``data.on_bad_record: reject``), or stop the stage naming them (``fail``). With
    ``data.scrub_raw`` the PII kinds of ``clean.pii`` are replaced in the text as read, so no
    raw shard (nor the DVC cache and remote that keep them) holds them. A killed run re-run
    with the same source and parameters skips the shards already written.
    """
    t0 = time.perf_counter()
    d = params.data
    kinds = tuple(params.clean.pii) if d.scrub_raw else ()
    # A mixture's sources are read one after another, each into shards of its own (so the
    # tokens keep their source); the weights are no input here: training reads them.
    corpora = [d.single(s) for s, _ in d.mixture] or [d]
    state = [_source_state(c.source) for c in corpora]
    files = source_files(d)  # what this run reads: `gptops run` tells when it changed since
    print_ = fingerprint("ingest", d.model_dump(exclude={"sources"}), list(kinds),
                         state if d.sources else state[0], [c.source for c in corpora])
    bad: list[pd.DataFrame] = []
    pii: dict[str, int] = {}
    skipped: dict[str, int] = {}
    with _output(Workspace(Path(workdir)).raw, "ingest", print_) as out:
        writer = _ShardWriter(out, int(d.shard_mb * 2**20))
        with progress.phase("ingest", unit="doc") as bar:
            for index, corpus in enumerate(corpora):
                writer.source = index if d.sources else None
                for batch in iter_source(corpus):
                    writer.add(scrub_docs(batch.docs, kinds, pii))
                    bar.advance(len(batch.docs))
                    if len(batch.bad):
                        bad.append(batch.bad)
                    for kind, n in batch.skipped.items():
                        skipped[kind] = skipped.get(kind, 0) + n
                writer.flush()  # a shard holds one source's documents
        rejected = pd.concat(bad, ignore_index=True) if bad else pd.DataFrame(
            columns=BAD_COLUMNS)
        write_parquet(rejected.astype("str"), out.path / BAD_RECORDS)
        info = {"docs": sum(s["docs"] for s in writer.shards), "bad_records": len(rejected),
                "skipped_records": dict(sorted(skipped.items())),
                "bytes": sum(s["bytes"] for s in writer.shards), "shards": writer.shards,
                **({"pii_scrubbed": pii} if d.scrub_raw else {}),
                **({"sources": _per_source(corpora, writer.shards)} if d.sources else {})}
        (out.path / MANIFEST).write_text(json.dumps(info, indent=2))
    save_ingest(workdir, d, files)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("ingest: %d documents (%d shards), %.1f MB from %s; %d bad records%s%s%s",
             info["docs"], len(writer.shards), info["bytes"] / 1e6,
             d.source or ", ".join(c.source for c in corpora), len(rejected),
             f" (see {Workspace.relative().raw / BAD_RECORDS})" if len(rejected) else "",
             f"; skipped records {info['skipped_records']}" if skipped else "",
             f"; PII scrubbed (data.scrub_raw): {pii or 'none found'}" if d.scrub_raw else "")
    return info


def _per_source(corpora: list[Any], shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each mixture source with its documents and bytes (the manifest's ``sources``)."""
    return [{"source": c.source,
             "docs": sum(sh["docs"] for sh in shards if sh.get("source") == i),
             "bytes": sum(sh["bytes"] for sh in shards if sh.get("source") == i)}
            for i, c in enumerate(corpora)]


def length_plot(before: np.ndarray, after: np.ndarray, path: Path) -> None:
    """Histogram of document lengths (characters, log scale) before and after cleaning."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)  # private Agg canvas: no display, no global backend switch
    ax = fig.add_subplot()
    hi = max(int(before.max() if len(before) else 1), 10)
    bins = np.logspace(0, np.log10(hi), 40)
    ax.hist(np.clip(before, 1, None), bins=bins, alpha=0.5, label=f"raw ({len(before)})")
    ax.hist(np.clip(after, 1, None), bins=bins, alpha=0.6, label=f"kept ({len(after)})")
    ax.set_xscale("log")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _raw_parts(workdir: Path) -> tuple[list[Path], dict[str, Any]]:
    raw_dir = Workspace(workdir).raw
    files = parts(raw_dir)
    if not files or not (raw_dir / MANIFEST).is_file():
        raise DataError(f"{raw_dir} holds no shards; run the 'ingest' stage first "
                        "(`gptops data ingest`)")
    return files, json.loads((raw_dir / MANIFEST).read_text())


def clean(params: Params, workdir: Path, mapper: Mapper | None = None,
          workers: int | None = None) -> dict[str, Any]:
    """Clean ``data/raw`` into ``data/clean`` shard by shard (kept + rejected with reasons).

    The per-shard filtering runs on ``workers`` processes (default: every core), or through
    ``mapper`` elsewhere (e.g. Prefect tasks on Dask); dedup runs across all shards. The result
    is the same either way, and for a killed run resumed.
    """
    workdir = Path(workdir)
    ws = Workspace(workdir)
    raw, manifest = _raw_parts(workdir)
    cfg = params.clean
    url_lists.load(tuple(cfg.url_blocklist))  # a missing list stops here, before any work
    if cfg.languages:
        language.model()
    evals = decontam.load(params)  # likewise an unreadable evaluation file
    print_ = fingerprint("clean", cfg.model_dump(), _inputs_state(ws.raw),
                         url_lists.digest(cfg.url_blocklist), evals.digest if evals else "")
    with _output(ws.clean, "clean", print_) as out:
        done = clean_parts(raw, out, cfg, workers or default_workers(), mapper, evals)
        stats = done.stats
        stats["bad_records"] = int(manifest.get("bad_records", 0))
        stats["skipped_records"] = manifest.get("skipped_records", {})
        stats["records_read"] = (stats["docs_in"] + stats["bad_records"]
                                 + sum(stats["skipped_records"].values()))
        if stats["docs_in"] != manifest["docs"] or \
                stats["docs_kept"] + stats["docs_rejected"] != stats["docs_in"]:
            raise DataError(f"cleaning lost documents ({manifest['docs']} in, "
                            f"{stats['docs_kept']} kept, {stats['docs_rejected']} rejected); "
                            "this is a bug, please report it")
        if not stats["docs_kept"]:
            raise DataError(f"no usable documents: all {stats['docs_in']} were rejected "
                            f"({stats.get('rejected_by_reason', {})}); check data.source or "
                            "relax the clean.* thresholds in params.yaml")
        (out.path / "report.md").write_text(render_report(stats), encoding="utf-8")
        shards = [{"file": p.name, "docs": d, "bytes": b} for p, d, b in
                  zip(parts(out.path), done.shard_docs, done.shard_bytes, strict=True)]
        mixed = {}
        if "sources" in manifest:  # a mixture: each shard keeps its raw shard's source
            for shard, raw_shard in zip(shards, manifest["shards"], strict=True):
                shard["source"] = raw_shard["source"]
            mixed = {"sources": [
                {"source": m["source"],
                 "docs": sum(sh["docs"] for sh in shards if sh["source"] == i),
                 "bytes": sum(sh["bytes"] for sh in shards if sh["source"] == i)}
                for i, m in enumerate(manifest["sources"])]}
            stats["kept_by_source"] = {m["source"]: m["docs"] for m in mixed["sources"]}
        (out.path / MANIFEST).write_text(json.dumps(
            {"docs_kept": stats["docs_kept"], "bytes_out": stats["bytes_out"],
             "shards": shards, **mixed}, indent=2))
        length_plot(done.lengths_in, done.lengths_out, out.path / "lengths.png")
    _write_atomic(ws.clean_stats, json.dumps(stats, indent=2, sort_keys=True))
    log.info("clean: kept %d, rejected %d %s", stats["docs_kept"], stats["docs_rejected"],
             stats.get("rejected_by_reason", {}))
    return stats


def sample_plan(sizes: list[int], budget: int, seed: int) -> list[tuple[int, float]]:
    """Which clean shards the BPE trains on: ``(shard, share of its documents)``, in order.

    Whole shards are taken in a seeded random order until ``budget`` bytes are reached, the
    last one in part. Whole shards rather than a share of every shard: the trainer's memory
    follows the distinct words it sees, and a few shards have fewer of those than a thin slice
    of every shard, so the sample's memory stays the same however large the corpus grows.
    """
    plan: list[tuple[int, float]] = []
    order = np.random.default_rng(seed).permutation(len(sizes)) if len(sizes) > 1 else [0]
    left = budget
    for i in order:
        if left <= 0:
            break
        share = 1.0 if sizes[i] <= left else left / max(sizes[i], 1)
        plan.append((int(i), share))
        left -= sizes[i]
    return plan


def _sample_texts(files: list[Path], plan: list[tuple[int, float]], seed: int) -> Iterator[str]:
    """The texts of the planned sample (a share of a shard: by a seeded hash of the doc id)."""
    for i, share in plan:
        frame = read_part(files[i], "clean", ["doc_id", "text"])
        if share < 1.0:
            frame = frame[[_sampled(d, share, seed) for d in frame["doc_id"].tolist()]]
        yield from frame["text"].tolist()


def _sampled(doc_id: str, fraction: float, seed: int) -> bool:
    return is_val_doc(f"bpe-sample:{doc_id}", fraction, seed)


def encode_part(job: tuple[str, str, int, str, float, int]) -> dict[str, dict[str, Any]]:
    """Encode one clean shard into its token shard pair, and mark it done (a worker's job).

    Args:
        job: ``(clean shard, tokenizer.json, shard index, output folder, val_fraction, seed)``.
    """
    path, tok_file, index, out_dir, val_fraction, seed = job
    frame = read_part(Path(path), "clean", ["doc_id", "text"])
    tok = load_tokenizer(Path(tok_file))
    info = encode_shard(frame["text"].tolist(), frame["doc_id"].tolist(), tok, Path(out_dir),
                        index, val_fraction, seed)
    info_file = _token_info(Path(out_dir), index)
    info_file.write_text(json.dumps(info))
    mark_done(info_file)
    return info


def _token_info(out_dir: Path, index: int) -> Path:
    """The scratch file recording a token shard pair (its marker completes the shard)."""
    return out_dir / SCRATCH / f"tokens-{index:05d}.json"


def encode_all(jobs: list[tuple], mapper: Mapper | None = None) -> list[dict]:
    """Encode clean shards: through ``mapper`` (e.g. Prefect tasks on Dask), else here, one
    shard after another, each batch on every core (``tokenizers`` runs ``encode_batch`` on a
    thread per core; measured here, as fast as raw ``encode_batch`` and faster than a pool of
    single-threaded processes, which pays for starting and for loading the tokenizer)."""
    if mapper is not None:
        return list(mapper(encode_part, jobs))
    return [encode_part(job) for job in jobs]


def tokenize(params: Params, workdir: Path, mapper: Mapper | None = None) -> dict[str, Any]:
    """Write train/val token shards of the clean shards, and the tokenizer that made them.

    The tokenizer is a byte-level BPE trained here on a seeded sample of about
    ``tokenizer.train_sample_mb`` of text (streamed), or with ``tokenizer.pretrained`` that
    checkpoint's own, used as is (its files' hash goes into ``meta.json``, so into the data
    version). Then each clean shard is encoded (on every core, or through ``mapper`` on a
    cluster) into ``train-NNNNN.bin``/``val-NNNNN.bin``: a byte-level token is at least a
    byte, so a shard of ``data.shard_mb`` MB holds at most that many million tokens plus one per
    document. ``meta.json`` lists every shard with its token count and SHA-256. A killed run
    resumes at the shards not yet encoded.
    """
    workdir = Path(workdir)
    ws = Workspace(workdir)
    files = parts(ws.clean)
    if not files:
        raise DataError(f"{ws.clean} holds no shards; run the 'clean' stage first "
                        "(`gptops data clean`)")
    t = params.tokenizer
    extra: dict[str, Any] = {}
    print_ = fingerprint("tokenize", t.model_dump(), _inputs_state(ws.clean))
    with _output(ws.tokens, "tokenize", print_) as out:
        tok_file = out.path / "tokenizer.json"
        if t.pretrained:
            from gpt.hf import load_tokenizer as load_pretrained
            from gpt.hf import tokenizer_digest

            tok = load_pretrained(t.pretrained)
            extra["pretrained_tokenizer"] = tokenizer_digest(t.pretrained)
            log.info("tokenize: encoding with %s's tokenizer (tokenizer.vocab_size and "
                     "min_frequency do not apply)", t.pretrained)
            if not out.done(tok_file.name):
                save_tokenizer(tok, tok_file)
                out.complete(tok_file.name)
        elif out.done(tok_file.name):
            tok = load_tokenizer(tok_file)
        else:
            sizes = _clean_bytes(workdir)
            plan = sample_plan(sizes, int(t.train_sample_mb * 2**20), t.seed)
            log.info("tokenize: training the BPE on %s of %.1f MB of text (%d of %d shards)",
                     "all" if sum(sizes) <= t.train_sample_mb * 2**20 else
                     f"a {t.train_sample_mb:g} MB sample", sum(sizes) / 1e6, len(plan),
                     len(sizes))
            tok = train_tokenizer(_sample_texts(files, plan, t.seed), t.vocab_size,
                                  t.min_frequency)
            if tok.get_vocab_size() < t.vocab_size:
                log.warning("tokenize: the BPE learned %d of tokenizer.vocab_size=%d tokens (no "
                            "more pairs occur min_frequency=%d times); add documents for more, "
                            "or use tokenizer.pretrained (e.g. hf:gpt2: GPT-2's 50257)",
                            tok.get_vocab_size(), t.vocab_size, t.min_frequency)
            save_tokenizer(tok, tok_file)
            out.complete(tok_file.name)
        jobs = [(str(f), str(tok_file), i, str(out.path), t.val_fraction, t.seed)
                for i, f in enumerate(files) if not is_done(_token_info(out.path, i))]
        encode_all(jobs, mapper)
        shards = {i: json.loads(_token_info(out.path, i).read_text()) for i in range(len(files))}
        manifest = json.loads((ws.clean / MANIFEST).read_text()) \
            if (ws.clean / MANIFEST).is_file() else {}
        if "sources" in manifest:  # a mixture: the token shards keep their source
            extra["sources"] = [m["source"] for m in manifest["sources"]]
            extra["shard_sources"] = [sh["source"] for sh in manifest["shards"]]
        meta = write_meta(out.path, [shards[i] for i in range(len(files))], tok,
                          t.val_fraction, t.seed, **extra)
    log.info("tokenize: vocab %d, %d train / %d val tokens in %d shard(s)", meta["vocab_size"],
             meta["train_tokens"], meta["val_tokens"], len(files))
    return meta


def _clean_bytes(workdir: Path) -> list[int]:
    """UTF-8 bytes of each clean shard's kept texts (``data/clean/manifest.json``)."""
    path = Workspace(workdir).clean / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found; re-run the 'clean' stage (`gptops data clean`)")
    return [int(sh["bytes"]) for sh in json.loads(path.read_text())["shards"]]
