"""The DVC data stages: ingest → clean → tokenize.

Each stage reads its inputs from the workspace folder, writes its outputs atomically (into a temp
folder renamed into place), and is what ``dvc.yaml``'s ``cmd`` runs (``gptops data <stage>``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from gpt.config import Params
from gpt.data.clean import Mapper, clean_shards, render_report
from gpt.data.loader import META, write_token_shards
from gpt.data.sources import DOC_COLUMNS, read_source
from gpt.data.tokenizer import save_tokenizer, train_tokenizer
from gpt.errors import DataError, NoSpaceError, no_space

log = logging.getLogger(__name__)

RAW = Path("data/raw")
CLEAN = Path("data/clean")
CLEAN_STATS = Path("data/clean_stats.json")
TOKENS = Path("data/tokens")
#: Above this many input bytes, cleaning splits the corpus into shards over all cores.
PARALLEL_BYTES = 64 * 2**20
SHARD_DOCS = 20_000


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove ``final``'s temp folders left by killed processes (their pid is gone)."""
    removed = []
    for tmp in Path(final).parent.glob(f".{Path(final).name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.info("removed %s, left by a killed process %s", tmp, pid)
    return removed


def _out_of_space(final: Path, exc: BaseException) -> NoSpaceError | None:
    """The one-line error for a write of ``final`` that failed on a full disk, else None."""
    if isinstance(exc, DataError) or no_space(exc) is None:
        return None
    return NoSpaceError(final.parent, f"{final.name} could not be written there; free space (or "
                        "use a workspace on a larger disk), then re-run the stage")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder that replaces ``final`` only if the block succeeds.

    Temp folders that killed processes left next to it are removed first. A block that fails
    on a full disk raises :class:`NoSpaceError` (its partial output removed first).
    """
    final = Path(final)
    remove_stale_temps(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _out_of_space(final, exc)
        if full is not None:
            raise full from exc
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


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


def _read_docs(path: Path, stage: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} not found; run the '{stage}' stage first (`gptops data {stage}`)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is corrupt ({exc}); re-run `gptops data {stage}`") from exc


def ingest(params: Params, workdir: Path) -> dict[str, Any]:
    """Read the configured source into ``data/raw/docs.parquet``."""
    t0 = time.perf_counter()
    df = read_source(params.data.source, params.data.text_field, params.data.max_docs)
    if df.empty:
        raise DataError(f"data.source '{params.data.source}' yielded no documents")
    with atomic_dir(Path(workdir) / RAW) as out:
        df[DOC_COLUMNS].to_parquet(out / "docs.parquet", index=False)
    info = {"docs": len(df), "bytes": int(df.text.str.len().sum()),
            "seconds": round(time.perf_counter() - t0, 2)}
    log.info("ingest: %d documents, %.1f MB from %s", info["docs"], info["bytes"] / 1e6,
             params.data.source)
    return info


def split_shards(docs: pd.DataFrame, shard_docs: int = SHARD_DOCS) -> list[pd.DataFrame]:
    """Consecutive slices of ``docs`` (order kept, so results equal the unsharded run)."""
    return [docs.iloc[i:i + shard_docs] for i in range(0, max(len(docs), 1), shard_docs)]


def length_plot(before: pd.Series, after: pd.Series, path: Path) -> None:
    """Histogram of document lengths (characters, log scale) before and after cleaning."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)  # private Agg canvas: no display, no global backend switch
    ax = fig.add_subplot()
    hi = max(int(before.max() if len(before) else 1), 10)
    bins = np.logspace(0, np.log10(hi), 40)
    ax.hist(before.clip(lower=1), bins=bins, alpha=0.5, label=f"raw ({len(before)})")
    ax.hist(after.clip(lower=1), bins=bins, alpha=0.6, label=f"kept ({len(after)})")
    ax.set_xscale("log")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def clean(params: Params, workdir: Path, mapper: Mapper | None = None,
          workers: int | None = None, shard_docs: int = SHARD_DOCS) -> dict[str, Any]:
    """Clean ``data/raw`` into ``data/clean`` (kept + rejected with reasons) and stats.

    Large corpora (over ``PARALLEL_BYTES``) are cleaned in shards on all cores; ``mapper`` runs
    the shards elsewhere (e.g. Prefect tasks on Dask). The result is the same either way.
    """
    workdir = Path(workdir)
    docs = _read_docs(workdir / RAW / "docs.parquet", "ingest")
    if workers is None:
        big = int(docs.text.str.len().sum()) > PARALLEL_BYTES
        workers = (os.cpu_count() or 1) if big else 1
    result = clean_shards(split_shards(docs, shard_docs), params.clean, workers, mapper)
    if len(result.kept) + len(result.rejected) != len(docs):
        raise DataError(f"cleaning lost documents ({len(docs)} in, {len(result.kept)} kept, "
                        f"{len(result.rejected)} rejected); this is a bug, please report it")
    if result.kept.empty:
        reasons = result.stats.get("rejected_by_reason", {})
        raise DataError(f"no usable documents: all {len(docs)} were rejected ({reasons}); "
                        "check data.source or relax the clean.* thresholds in params.yaml")
    with atomic_dir(workdir / CLEAN) as out:
        result.kept.to_parquet(out / "docs.parquet", index=False)
        result.rejected.to_parquet(out / "rejected.parquet", index=False)
        (out / "report.md").write_text(render_report(result.stats), encoding="utf-8")
        length_plot(docs.text.str.len(), result.kept.text.str.len(), out / "lengths.png")
    _write_atomic(workdir / CLEAN_STATS, json.dumps(result.stats, indent=2, sort_keys=True))
    log.info("clean: kept %d, rejected %d %s", len(result.kept), len(result.rejected),
             result.stats.get("rejected_by_reason", {}))
    return result.stats


def tokenize(params: Params, workdir: Path) -> dict[str, Any]:
    """Write train/val token shards of the clean documents, and the tokenizer that made them.

    The tokenizer is a byte-level BPE trained here, or with ``tokenizer.pretrained`` that
    checkpoint's own, used as is. Its files' hash goes into ``meta.json`` (so into the data
    version): another pretrained tokenizer is another data version.
    """
    workdir = Path(workdir)
    docs = _read_docs(workdir / CLEAN / "docs.parquet", "clean")
    texts = docs.text.tolist()
    t = params.tokenizer
    extra: dict[str, Any] = {}
    if t.pretrained:
        from gpt.hf import load_tokenizer, tokenizer_digest

        tok = load_tokenizer(t.pretrained)
        extra["pretrained_tokenizer"] = tokenizer_digest(t.pretrained)
        log.info("tokenize: encoding with %s's tokenizer (tokenizer.vocab_size and "
                 "min_frequency do not apply)", t.pretrained)
    else:
        tok = train_tokenizer(texts, t.vocab_size, t.min_frequency)
        if tok.get_vocab_size() < t.vocab_size:
            log.warning("tokenize: the BPE learned %d of tokenizer.vocab_size=%d tokens (no "
                        "more pairs occur min_frequency=%d times); add documents for more, or "
                        "use tokenizer.pretrained (e.g. hf:gpt2: GPT-2's 50257)",
                        tok.get_vocab_size(), t.vocab_size, t.min_frequency)
    with atomic_dir(workdir / TOKENS) as out:
        save_tokenizer(tok, out / "tokenizer.json")
        meta = write_token_shards(texts, docs.doc_id.tolist(), tok, out, t.val_fraction, t.seed)
        if extra:
            meta.update(extra)
            (out / META).write_text(json.dumps(meta, indent=2))
    log.info("tokenize: vocab %d, %d train / %d val tokens", meta["vocab_size"],
             meta["train_tokens"], meta["val_tokens"])
    return meta
