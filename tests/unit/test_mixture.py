"""Mixtures (``data.sources``): the data stages keep each source's tokens apart, training draws
them by weight (shares within 1 % over a run, deterministic in seed and step), and the weights
are in the pretraining key, in no data stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.webpages import make_pages, write_warc
from gpt.config import load_params
from gpt.data import stages
from gpt.data.loader import TokenData, step_generator
from gpt.errors import ConfigError, DataError
from gpt.pipeline import keys

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
#: Each synthetic source's tokens lie in a range of their own, so a batch's tokens say which
#: source they came from.
SPAN = 100


def _tokens_dir(tmp: Path, sizes: dict[str, list[int]]) -> Path:
    """Token shards of sources named by ``sizes`` (tokens per shard), as tokenize writes them
    for a mixture; source k's tokens are k*SPAN .. k*SPAN+SPAN-1, per split."""
    rng = np.random.default_rng(0)
    shards: dict[str, list] = {"train": [], "val": []}
    index = 0
    for k, per_shard in enumerate(sizes.values()):
        for n in per_shard:
            for split in shards:
                name = f"{split}-{index:05d}.bin"
                rng.integers(k * SPAN, (k + 1) * SPAN, n).astype(np.uint16).tofile(tmp / name)
                shards[split].append({"file": name, "tokens": n, "sha256": "", "source": k})
            index += 1
    meta = {"vocab_size": SPAN * len(sizes), "dtype": "uint16", "eot_id": 0,
            "sources": [{"source": s} for s in sizes], "shards": shards}
    (tmp / "meta.json").write_text(json.dumps(meta))
    return tmp


def _shares(data: TokenData, steps: range, batch: int = 16, block: int = 32,
            split: str = "train") -> np.ndarray:
    counts = np.zeros(len(data.meta["sources"]))
    for step in steps:
        x, _ = data.batch(split, batch, block, step_generator(1337, step))
        counts += np.bincount((x.numpy() // SPAN).ravel(), minlength=len(counts))
    return counts / counts.sum()


def test_token_shares_match_the_weights_over_a_run(tmp_path: Path) -> None:
    # Sources of very different sizes: the shares follow the weights, not the sizes.
    tokens = _tokens_dir(tmp_path, {"crawl": [50_000, 30_000], "code": [4_000],
                                    "books": [9_000]})
    mixture = (("crawl", 0.6), ("code", 0.3), ("books", 0.1))
    data = TokenData(tokens, mixture)
    for split in ("train", "val"):
        got = _shares(data, range(300), split=split)
        assert np.abs(got - [0.6, 0.3, 0.1]).max() < 0.01, (split, got)
    # The mixture read as one corpus: its natural shares (by size), as before mixtures.
    natural = _shares(TokenData(tokens), range(100))
    assert natural[0] > 0.8


def test_mixed_batches_depend_only_on_seed_and_step(tmp_path: Path) -> None:
    tokens = _tokens_dir(tmp_path, {"a": [3000], "b": [5000]})
    mixture = (("a", 0.25), ("b", 0.75))
    first, again = TokenData(tokens, mixture), TokenData(tokens, mixture)
    # Steps 0..9 in a row, against a resumed run that starts at step 5.
    run = [first.batch("train", 8, 16, step_generator(7, s))[0] for s in range(10)]
    resumed = [again.batch("train", 8, 16, step_generator(7, s))[0] for s in range(5, 10)]
    assert all(torch.equal(a, b) for a, b in zip(run[5:], resumed, strict=True))
    assert not torch.equal(run[0], run[1])
    # One process's rows of a global batch are those rows of the whole draw.
    whole = first.batch("train", 8, 16, step_generator(7, 3))[0]
    halves = [first.batch("train", 8, 16, step_generator(7, 3), rows=r)[0]
              for r in (slice(0, 4), slice(4, 8))]
    assert torch.equal(whole, torch.cat(halves))


def test_sources_the_tokens_do_not_hold_are_named(tmp_path: Path) -> None:
    tokens = _tokens_dir(tmp_path, {"a": [3000], "b": [40]})
    with pytest.raises(DataError, match=r"hold the sources \['a', 'b'\].*\['a', 'c'\]"):
        TokenData(tokens, (("a", 0.5), ("c", 0.5)))
    small = TokenData(tokens, (("a", 0.5), ("b", 0.5)))
    with pytest.raises(DataError, match="data.sources 'b' has 40 tokens"):
        small.batch("train", 4, 64, step_generator(1, 0))


@pytest.mark.parametrize(("overrides", "says"), [
    (["data.sources=[{source: a, weight: 1}]"], "both set"),
    (['data.source=""', "data.sources=[{source: a, weight: 0}]"],
     "data.sources.0.weight': Input should be greater than 0"),
    (['data.source=""', "data.sources=[{source: a, weight: -1}]"], "greater than 0"),
    (['data.source=""', "data.sources=[{source: a, weight: 1}, {source: a, weight: 2}]"],
     "lists a source twice"),
])
def test_bad_mixtures_are_one_line(overrides: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        load_params(PARAMS, overrides=overrides)
    assert "\n" not in str(err.value)


def _mixture_params(tmp: Path, crawl: float, code: float) -> object:
    return load_params(PARAMS, overrides=[
        'data.source=""',
        f"data.sources=[{{source: '{tmp / 'crawl' / '*.warc.gz'}', weight: {crawl}}}, "
        f"{{source: '{tmp / 'code'}', weight: {code}}}]",
        "clean.near_dedup=false", "clean.decontaminate_ngram=0", "tokenizer.vocab_size=300",
        "tokenizer.val_fraction=0.3"])


def test_a_crawl_and_a_code_folder_keep_their_source_to_the_tokens(tmp_path: Path) -> None:
    (tmp_path / "crawl").mkdir()
    write_warc(tmp_path / "crawl" / "c.warc.gz", make_pages(12, seed=5))
    code = tmp_path / "code"
    code.mkdir()
    for i in range(12):
        (code / f"m{i}.md").write_text(
            f"# Module {i}\n\nThis module explains how the parser number {i} reads a file.\n"
            "It returns the records it found, and it raises an error for a bad line.\n"
            "Each record is checked before it is written to the output folder.\n")
    params = _mixture_params(tmp_path, 0.7, 0.3)
    info = stages.ingest(params, tmp_path)
    assert [s["source"] for s in info["sources"]] == [str(tmp_path / "crawl" / "*.warc.gz"),
                                                      str(code)]
    assert [s["docs"] for s in info["sources"]] == [12, 12]
    # One source per shard; the manifest (so the data version) names each source.
    raw = json.loads((tmp_path / "data" / "raw" / "manifest.json").read_text())
    assert [sh["source"] for sh in raw["shards"]] == [0, 1]
    stats = stages.clean(params, tmp_path, workers=1)
    assert set(stats["kept_by_source"]) == {s["source"] for s in info["sources"]}
    meta = stages.tokenize(params, tmp_path)
    assert [s["source"] for s in meta["sources"]] == [s["source"] for s in info["sources"]]
    assert all(s["train_tokens"] > 0 for s in meta["sources"])
    assert {sh["source"] for sh in meta["shards"]["train"]} == {0, 1}
    data = TokenData(tmp_path / "data" / "tokens", params.data.mixture)
    which = torch.cat([data.row_sources(16, step_generator(1, s)) for s in range(200)])
    assert abs(float((which == 0).float().mean()) - 0.7) < 0.01


def test_a_weight_is_in_the_pretrain_key_and_in_no_data_stage(tmp_path: Path) -> None:
    a, b = _mixture_params(tmp_path, 0.7, 0.3), _mixture_params(tmp_path, 0.5, 0.5)
    assert keys.pretrain(a, "v1").digest != keys.pretrain(b, "v1").digest
    # The stages' own fingerprints (their resume keys) and what they read are the same.
    assert a.clean == b.clean and a.tokenizer == b.tokenizer
    assert [s.source for s in a.data.sources] == [s.source for s in b.data.sources]
    # One source: the pretrain key holds no mixture (it stays what it was before mixtures).
    one = load_params(PARAMS)
    assert "mixture" not in keys.pretrain(one, "v1").reads
    # DVC: ingest lists the data section (weights included; gpt.dvc_repo records a
    # weight-only change without re-running it: tests/integration/test_data_versioning.py);
    # clean and tokenize list no data key.
    dvc = yaml.safe_load((PARAMS.parent / "dvc.yaml").read_text())["stages"]
    assert not [p for s in ("clean", "tokenize") for p in dvc[s]["params"]
                if str(p).startswith("data")]


def test_preflight_names_the_mixture_source_that_matches_nothing(tmp_path: Path) -> None:
    from gpt.preflight import check_run

    params = load_params(PARAMS, overrides=[
        'data.source=""', "data.sources=[{source: builtin, weight: 1}, "
                          f"{{source: '{tmp_path / 'none' / '*.jsonl'}', weight: 1}}]"])
    with pytest.raises(DataError, match=r"data.sources\[1\] '.*none/\*.jsonl' matches no"):
        check_run(params, f"sqlite:///{tmp_path / 'm.db'}")
