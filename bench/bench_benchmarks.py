"""The built-in benchmark suite: gptops' own lm-eval model (``GPTLM``) vs lm-eval's ``HFLM``.

The ``tiny`` profile's model shape (``params.yaml``: 4 layers, 128 wide, 128 positions, a
4096-token BPE trained here on the stdlib's help topics), the built-in suite's two tasks
(``gptops_cloze``, ``gptops_choice``) with ``evaluate.max_items`` items each, built from the
same documents, and ``evaluate.batch_size``. Each repeat scores the suite both ways, alternating
which goes first:

- **GPTLM**: ``lm_eval.simple_evaluate`` on the live model (what ``gpt/benchmarks.py`` does now);
- **HFLM**: the model exported (``gpt.harness.export_lm_folder``), loaded by ``HFLM`` and scored
  by the same ``simple_evaluate`` call (what it did before); the export and load timed apart.

It prints the median seconds, the ratio, and whether the two gave the same metrics (1e-4).

Run: ``.venv/bin/python bench/bench_benchmarks.py [--repeats 3] [--model-seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from gpt import benchmarks as bm  # noqa: E402
from gpt.config import load_params  # noqa: E402
from gpt.data.tokenizer import (  # noqa: E402
    EOT,
    load_hf_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from gpt.harness import export_lm_folder  # noqa: E402
from gpt.train import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed(lm) -> list[float]:
    """Seconds ``lm`` spends answering loglikelihood requests (the model's share of a run)."""
    spent: list[float] = []
    answer = lm.loglikelihood

    def loglikelihood(requests, disable_tqdm: bool = False):
        t0 = time.perf_counter()
        out = answer(requests, disable_tqdm=True)
        spent.append(time.perf_counter() - t0)
        return out

    lm.loglikelihood = loglikelihood
    return spent


def _simple_evaluate(lm, tasks: Path, limit: int | None) -> dict[str, float]:
    return bm.flatten(bm.run_tasks(lm, list(bm.BUILTIN), [tasks], limit, seed=0))[0]


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from pydoc_data.topics import topics

    from lm_eval.models.huggingface import HFLM
    from transformers.utils import logging as hf_logging

    from gpt.harness import GPTLM

    hf_logging.set_verbosity_error()
    params = load_params(ROOT / "params.yaml", "tiny")
    e, m = params.evaluate, params.model
    tmp = Path(tempfile.mkdtemp(prefix="bench-benchmarks-"))
    texts = [t for _, t in sorted(topics.items())]
    tok = train_tokenizer(texts, params.tokenizer.vocab_size)
    save_tokenizer(tok, tmp / "tokenizer.json")
    htok = load_hf_tokenizer(tmp / "tokenizer.json")
    torch.manual_seed(args.model_seed)
    model = build_model(m, tok.get_vocab_size()).eval()
    # The documents: each help topic's paragraphs (the built-in corpus's kind of text).
    docs = [
        (f"{name}-{i}", p)
        for name, t in sorted(topics.items())
        for i, p in enumerate(t.split("\n\n"))
        if len(p.split()) > 30
    ]
    items = bm.build_items(
        docs,
        e.max_items,
        e.seed,
        fits=lambda s: len(htok(s)["input_ids"]) <= m.block_size // 2,
    )
    tasks = bm.write_builtin(items, tmp / "tasks")
    print(
        f"tiny shape: {m.n_layer} layers x {m.n_embd}, block {m.block_size}, vocab "
        f"{tok.get_vocab_size()}; items: {', '.join(f'{k} {len(v)}' for k, v in items.items())}"
        f"; batch {e.batch_size}; torch threads {torch.get_num_threads()}"
    )
    times: dict[str, list[float]] = {
        "GPTLM run": [],
        "HFLM run": [],
        "GPTLM requests": [],
        "HFLM requests": [],
        "export+load": [],
    }
    results: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        for name in ("GPTLM", "HFLM") if r % 2 == 0 else ("HFLM", "GPTLM"):
            t0 = time.perf_counter()
            if name == "GPTLM":
                lm = GPTLM(model, htok, batch_size=e.batch_size, device="cpu")
            else:
                folder = export_lm_folder(
                    model, htok, htok.convert_tokens_to_ids(EOT), htok.pad_token_id, tmp / f"hf-{r}"
                )
                lm = HFLM(pretrained=str(folder), batch_size=e.batch_size, device="cpu")
                times["export+load"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
            spent = _timed(lm)
            results[name] = _simple_evaluate(lm, tasks, None)
            times[f"{name} run"].append(time.perf_counter() - t0)
            times[f"{name} requests"].append(sum(spent))
    med = {k: statistics.median(v) for k, v in times.items()}
    same = results["GPTLM"].keys() == results["HFLM"].keys() and all(
        abs(v - results["HFLM"][k]) <= 1e-4 * max(1.0, abs(v)) for k, v in results["GPTLM"].items()
    )
    print(f"{'':16}{'median s':>10}  runs")
    for k, v in times.items():
        print(f"{k:16}{med[k]:10.2f}  {', '.join(f'{x:.2f}' for x in v)}")
    print(
        f"HFLM / GPTLM: requests {med['HFLM requests'] / med['GPTLM requests']:.2f}x; "
        f"simple_evaluate {med['HFLM run'] / med['GPTLM run']:.2f}x; with the export and load "
        f"{(med['HFLM run'] + med['export+load']) / med['GPTLM run']:.2f}x"
    )
    print("same metrics (1e-4):", same)
    for k in sorted(results["GPTLM"]):
        print(f"  {k}: GPTLM {results['GPTLM'][k]:.6g}  HFLM {results['HFLM'][k]:.6g}")


if __name__ == "__main__":
    main()
