"""Evaluation: perplexity of the base, task metrics next to a baseline, sample generations."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from gpt import progress
from gpt.data.loader import TokenData
from gpt.data.tokenizer import EOT
from gpt.kinds import SFT_TASK_METRICS
from gpt.model import GPT
from gpt.train import estimate_loss


@dataclass
class ModelEval:
    """One model's evaluation: its metrics (with ``baseline_*`` next to them) and evidence."""

    kind: str  #: "base", "task" or "sft"
    metrics: dict[str, float]
    eval_hash: str  #: the evaluation set; versions compare only on equal hashes
    key: str  #: the evaluation's step key
    test_examples: int = 0
    labels: list[str] = field(default_factory=list)  #: classifier label names
    confusion_matrix: list[list[int]] = field(default_factory=list)
    unseen_labels: dict[str, int] = field(default_factory=dict)  #: test-only labels -> rows
    examples: list[dict[str, Any]] = field(default_factory=list)  #: generations shown to users
    #: direction of the ``bench.*`` metrics (lm-eval's ``higher_is_better``)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    #: lm-eval's results JSON (plus ``seconds`` and a ``table``); {} when no benchmark ran
    benchmarks: dict[str, Any] = field(default_factory=dict)


DEFAULT_PROMPTS = ["The", "Return a new", "This module provides", "If the argument is"]


def perplexity(model: GPT, tokens_dir: Path, batches: int, batch_size: int, seed: int,
               split: str = "val",
               mixture: tuple[tuple[str, float], ...] = ()) -> dict[str, float]:
    """Validation loss and perplexity over fixed, seeded batches of held-out documents (a
    mixture's sources by their shares, as in training)."""
    data = TokenData(tokens_dir, mixture)
    device = next(model.parameters()).device
    loss = estimate_loss(model, data, split, batches, batch_size, model.config.block_size, seed,
                         device, label="evaluate: perplexity")
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 (as flat metric names), by
    scikit-learn over every label (a label never predicted nor seen scores 0, as before)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    ids = list(range(len(labels)))
    prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids,
                                                       zero_division=0)
    out: dict[str, float] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for i, name in enumerate(labels):
        out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = (
            float(prec[i]), float(rec[i]), float(f1[i]))
    out["macro_f1"] = float(f1.mean())
    return out


def majority_baseline(train_labels: Sequence[int], test_labels: Sequence[int],
                      labels: Sequence[str]) -> dict[str, float]:
    """Metrics of always predicting the most frequent training label."""
    majority = Counter(train_labels).most_common(1)[0][0]
    m = classification_metrics(test_labels, [majority] * len(test_labels), labels)
    return {"baseline_accuracy": m["accuracy"], "baseline_macro_f1": m["macro_f1"]}


@torch.no_grad()
def sample_generations(model: GPT, tok: Tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS,
                       max_new_tokens: int = 40, temperature: float = 0.8, top_k: int = 50,
                       seed: int = 0) -> list[dict[str, str]]:
    """Generate a continuation for each prompt (seeded, so versions are comparable)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for prompt in progress.track(prompts, "evaluate: samples", unit="prompt"):
        ids = tok.encode(prompt).ids or [tok.token_to_id(EOT)]
        x = torch.tensor([ids], dtype=torch.long, device=device)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k,
                           stop_token=tok.token_to_id(EOT), generator=g)
        out.append({"prompt": prompt, "completion": tok.decode(y[0, len(ids):].tolist())})
    return out


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int,
                     ) -> list[list[int]]:
    """``cm[t][p]``: how many examples of true label ``t`` were predicted as ``p``
    (scikit-learn's, over all ``n_labels`` labels)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).tolist()


def per_class_table(metrics: dict[str, float], labels: Sequence[str],
                    cm: Sequence[Sequence[int]]) -> list[dict[str, float | int | str]]:
    """One row per label: support (from the confusion matrix), precision, recall, F1."""
    return [{"label": name, "support": int(sum(cm[i])),
             "precision": round(metrics[f"precision_{name}"], 4),
             "recall": round(metrics[f"recall_{name}"], 4),
             "f1": round(metrics[f"f1_{name}"], 4)} for i, name in enumerate(labels)]


def plot_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path,
                          title: str = "confusion matrix (test split)") -> Path:
    """Write the confusion matrix as a PNG (Agg canvas: no display, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    size = max(4.0, 0.6 * n + 2.0)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = max((max(row) for row in cm), default=0)
    for t in range(n):
        for p in range(n):
            ax.text(p, t, str(cm[t][p]), ha="center", va="center",
                    color="white" if cm[t][p] > top / 2 else "black", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --- generative (SFT) evaluation ---------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation (``normalize_answer`` of its official v1.1 script): lower
    case, ASCII punctuation removed, the articles a/an/the removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 (official v1.1 script's ``f1_score``): bag-of-words overlap of the normalised
    answers; 0 when they share no token (two empty answers included)."""
    p, r = squad_normalize(prediction).split(), squad_normalize(reference).split()
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(r)
    return 2 * prec * rec / (prec + rec)


def squad(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean SQuAD exact match and F1 (one reference per prediction) as ``exact_match`` and
    ``token_f1``, on a 0-1 scale (the official script reports x 100)."""
    pairs = list(zip(predictions, references, strict=True))
    return {"exact_match": sum(squad_normalize(p) == squad_normalize(r) for p, r in pairs)
            / len(pairs),
            "token_f1": sum(squad_f1(p, r) for p, r in pairs) / len(pairs)}


#: ROUGE variants reported for generations (rouge-score's names -> ours).
ROUGE = {"rouge1": "rouge_1", "rouge2": "rouge_2", "rougeL": "rouge_l"}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures by Google's ``rouge-score`` (its tokenizer: lower case,
    letters and digits only; no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=False)
    totals = dict.fromkeys(ROUGE, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for k, v in scorer.score(r, p).items():
            totals[k] += v.fmeasure
    return {ours: totals[k] / len(references) for k, ours in ROUGE.items()}


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF by ``sacrebleu`` with its default settings (BLEU: 13a tokenizer,
    4-grams; chrF: character 6-grams, beta 2), on sacrebleu's 0-100 scale."""
    import sacrebleu

    hyps, refs = list(predictions), [list(references)]
    return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score,
            "chrf": sacrebleu.corpus_chrf(hyps, refs).score}


#: Each scorer of generated text and the metrics it gives.
SCORERS: tuple[tuple[tuple[str, ...], Callable[[Sequence[str], Sequence[str]],
                                              dict[str, float]]], ...] = (
    (("exact_match", "token_f1"), squad),
    (tuple(ROUGE.values()), rouge),
    (("bleu", "chrf"), bleu_chrf),
)


def generation_metrics(predictions: Sequence[str], references: Sequence[str],
                       task_type: str) -> dict[str, float]:
    """The metrics of ``task_type`` (``sft.task_type``: its row of
    :data:`gpt.kinds.SFT_TASK_METRICS`) over held-out pairs, one reference each."""
    n = len(references)
    if n == 0 or len(predictions) != n:
        raise ValueError("need one prediction per reference")
    names = SFT_TASK_METRICS[task_type]
    out: dict[str, float] = {}
    for gives, scorer in SCORERS:
        if set(gives) & set(names):
            out.update(scorer(predictions, references))
    return {k: out[k] for k in names}


@torch.no_grad()
def complete(model: GPT, tok: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
             label: str = "evaluate: completions", batch_size: int = 1) -> list[str]:
    """Greedy completions (stopping at end-of-text) with the KV cache, ``batch_size`` prompts
    at a time.

    Prompts are batched in order of token length, left-padded to the longest of their batch
    (``GPT.generate``'s ``pad``: each row computes what it would alone); a row that has stopped
    idles until its batch is done. A prompt whose window would slide (prompt + new tokens over
    ``block_size``) is batched only with prompts of its own length, which need no padding.
    ``label`` names the progress phase (one unit per prompt).
    """
    device = next(model.parameters()).device
    eot = tok.token_to_id(EOT)
    block = model.config.block_size
    ids = [tok.encode(p).ids[-(block - 1):] or [eot] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    slides = {i for i in order if len(ids[i]) + max_new_tokens > block}
    groups = [[i for i in order if i not in slides],
              *([i for i in order if i in slides and len(ids[i]) == n]
                for n in sorted({len(ids[i]) for i in slides}))]
    size = max(1, batch_size)
    batches = [rows[s:s + size] for rows in groups for s in range(0, len(rows), size)]
    out = [""] * len(prompts)
    with progress.phase(label, total=len(prompts), unit="prompt") as p:
        for chunk in batches:
            width = max(len(ids[i]) for i in chunk)
            pad = torch.tensor([width - len(ids[i]) for i in chunk], device=device)
            x = torch.tensor([[eot] * (width - len(ids[i])) + ids[i] for i in chunk],
                             device=device)
            y = model.generate(x, max_new_tokens, temperature=0, stop_token=eot,
                               pad=pad if bool(pad.any()) else None)
            for r, i in enumerate(chunk):
                new = [t for t in y[r, width:].tolist() if t != eot]
                out[i] = tok.decode(new).strip()
            p.advance(len(chunk))
    return out
