"""gptops' own lm-eval model (:class:`gpt.harness.GPTLM`) gives lm-eval's ``HFLM`` numbers.

A tiny GPT is trained for a few seconds on the stdlib's help topics, exported with gptops' own
export (:func:`gpt.harness.export_lm_folder`, the conversion registered versions get) and scored
both ways, with the real lm-eval: every request type's answers agree within 1e-4 (is_greedy
exactly), and ``lm_eval.simple_evaluate`` on the built-in task YAMLs gives the same metrics.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from gpt import benchmarks as bm
from gpt.data.tokenizer import EOT, load_hf_tokenizer, save_tokenizer, train_tokenizer
from gpt.harness import export_lm_folder
from gpt.model import GPT, GPTConfig

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
BLOCK = 64
TOL = 1e-4


def _texts() -> list[str]:
    from pydoc_data.topics import topics

    return [t for _, t in sorted(topics.items())]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """(GPT, HF tokenizer, exported folder, the built-in tasks' folder)."""
    tmp = tmp_path_factory.mktemp("parity")
    texts = _texts()
    tok = train_tokenizer(texts, 512)
    save_tokenizer(tok, tmp / "tokenizer.json")
    htok = load_hf_tokenizer(tmp / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=tok.get_vocab_size(), block_size=BLOCK, n_layer=2, n_head=2, n_embd=64)
    )
    ids = torch.tensor([i for t in texts for i in tok.encode(t).ids])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):  # enough for some greedy continuations; seconds on a CPU
        at = torch.randint(0, len(ids) - BLOCK - 1, (16,), generator=g)
        x = torch.stack([ids[a : a + BLOCK] for a in at])
        y = torch.stack([ids[a + 1 : a + BLOCK + 1] for a in at])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = export_lm_folder(
        model, htok, htok.convert_tokens_to_ids(EOT), htok.pad_token_id, tmp / "hf"
    )
    docs = [(f"d{i}", t) for i, t in enumerate(texts)]
    items = bm.build_items(
        docs, limit=12, seed=1, fits=lambda text: len(htok(text)["input_ids"]) <= BLOCK // 2
    )
    tasks = bm.write_builtin(items, tmp / "tasks")
    return {"model": model, "tok": htok, "folder": folder, "tasks": tasks, "texts": texts}


def _both(setup: dict, batch_size: int = 4):
    from lm_eval.models.huggingface import HFLM

    from gpt.harness import GPTLM

    return (
        GPTLM(setup["model"], setup["tok"], batch_size=batch_size),
        HFLM(pretrained=str(setup["folder"]), batch_size=batch_size, device="cpu"),
    )


def _instance(kind: str, args: tuple):
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, 0)


def test_requests_match_hflm(setup: dict) -> None:
    """loglikelihood (shared contexts, contexts longer than the window, an empty context),
    loglikelihood_rolling (texts of 1 to 4 windows) and generate_until (prompts of different
    lengths in one batch, stop sequences, max_gen_toks, a context cut for room)."""
    ours, theirs = _both(setup)
    words = " ".join(setup["texts"][:5]).split()
    rng = random.Random(0)
    requests = []
    for n in (3, 12, 30, 80):  # 80 words: more tokens than the context, cut from the left
        at = rng.randrange(len(words) - 200)
        context = " ".join(words[at : at + n])
        for k in (1, 2, 6):  # 3 continuations of one context
            requests.append(
                _instance("loglikelihood", (context, " " + " ".join(words[at + n : at + n + k])))
            )
    requests.append(_instance("loglikelihood", ("", " the value")))
    a, b = ours.loglikelihood(requests), theirs.loglikelihood(requests)
    assert [g for _, g in a] == [g for _, g in b]
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b, strict=True)) < TOL

    # is_greedy where it is True: the model's own greedy tokens as continuations (as tokens:
    # decoded and encoded again they need not be the same tokens), and one token off.
    tokens = []
    for n in (5, 40, 90):
        ctx = ours.tok_encode(" ".join(words[n : n + n]))
        cont = _greedy(setup["model"], ctx[-(BLOCK - 2) :], 3)  # the window scored
        tokens += [(None, ctx, cont), (None, ctx, [*cont[:2], (cont[2] + 1) % 100])]
    a, b = ours._loglikelihood_tokens(tokens), theirs._loglikelihood_tokens(tokens)
    assert [g for _, g in a] == [g for _, g in b] == [True, False] * 3
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b, strict=True)) < TOL

    rolling = [
        _instance("loglikelihood_rolling", (" ".join(words[i : i + n]),))
        for i, n in ((0, 4), (50, 45), (100, 150))
    ]
    a, b = ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)
    assert a == pytest.approx(b, abs=TOL, rel=1e-6)

    until = {"until": [".", "\n\n"], "max_gen_toks": 10, "do_sample": False}
    prompts = [" ".join(words[i : i + n]) for i, n in ((0, 3), (20, 25), (70, 9), (90, 200))]
    gen = [_instance("generate_until", (p, until)) for p in prompts]
    gen.append(_instance("generate_until", (prompts[1], {"max_gen_toks": 5})))
    a, b = ours.generate_until(gen), theirs.generate_until(gen)
    assert a == b
    assert any(a)


@torch.no_grad()
def _greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, n, temperature=0, use_cache=False)
    return out[0, len(ids) :].tolist()


def _evaluate(lm, tasks: Path) -> dict[str, float]:
    return bm.flatten(bm.run_tasks(lm, list(bm.BUILTIN), [tasks], None, seed=0))[0]


def test_builtin_task_metrics_match_hflm(setup: dict) -> None:
    ours, theirs = _both(setup, batch_size=8)
    a, b = _evaluate(ours, setup["tasks"]), _evaluate(theirs, setup["tasks"])
    assert a.keys() == b.keys() and f"bench.{bm.CHOICE}.acc_norm" in a
    for name, value in a.items():
        assert value == pytest.approx(b[name], rel=TOL), name
