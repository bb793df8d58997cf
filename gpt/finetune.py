"""Task fine-tuning over the pretrained base: sequence classification.

``GPTClassifier`` pools the hidden state of each sequence's last real token and applies a linear
head without bias — the same design as ``transformers.GPT2ForSequenceClassification``, so the
fine-tuned model exports to it exactly (see ``gpt.hf``).

The built-in task ``package``: classify a stdlib docstring by its top-level package among a
configured set (asyncio, email, xml, ...). The package name is masked in the text, so the label
cannot be read off the document directly.

Train/test splits use the same stable hash split as the tokenizer's train/val documents
(``gpt.data.loader.is_val_doc``), and batches the same per-step generators as pretraining
(``gpt.data.loader.step_generator``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tokenizers import Tokenizer
from torch.nn import functional as F

from gpt import checkpoint as ckpt
from gpt import distributed, progress
from gpt.config import FinetuneConfig, SFTConfig
from gpt.data.loader import is_val_doc, step_generator
from gpt.data.tokenizer import pad_id as tokenizer_pad_id
from gpt.errors import DataError
from gpt.kinds import SFT, TASK
from gpt.model import GPT
from gpt.train import (
    CheckpointPolicy,
    LoopResult,
    LoopSettings,
    LossFn,
    MetricsCallback,
    make_optimizer,
    resolve_device,
    run_loop,
)

log = logging.getLogger(__name__)

MASK = "<pkg>"
MIN_PER_CLASS = 4
#: Most names an error or warning lists: a file of 10,000 labels must not make a line of 89 KB.
MAX_LISTED = 20


def listed(names: list[str] | dict[str, int], limit: int = MAX_LISTED) -> str:
    """``"a, b, c"``, cut to the first ``limit`` names with ``"... and N more"``; a mapping's
    items are shown as ``name (count)``."""
    items = ([f"{k} ({v})" for k, v in names.items()] if isinstance(names, dict)
             else [str(n) for n in names])
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "")


class GPTClassifier(nn.Module):
    """A GPT body with a last-token pooled linear classification head."""

    def __init__(self, body: GPT, num_labels: int, pad_id: int) -> None:
        super().__init__()
        self.body = body
        self.score = nn.Linear(body.config.n_embd, num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)
        self.pad_id = pad_id

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_labels) from the hidden state at position ``lengths - 1``."""
        h, _ = self.body.hidden_states(idx)
        last = h[torch.arange(idx.size(0), device=idx.device), lengths - 1]
        return self.score(last)


@dataclass
class TaskData:
    """A labelled classification task split into train/test, with its label names."""

    train: pd.DataFrame  # columns: doc_id, text, label (int)
    test: pd.DataFrame
    labels: list[str]
    #: test rows whose label never occurs in training: label -> rows (left out of the metrics)
    unseen: dict[str, int] = field(default_factory=dict)

    def eval_hash(self) -> str:
        """Hash of the evaluation set (ids + labels): versions compare only on equal hashes."""
        blob = "\n".join(f"{d}\t{y}" for d, y in zip(self.test.doc_id, self.test.label,
                                                    strict=True))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_package_task(docs: pd.DataFrame, packages: list[str], test_fraction: float,
                       seed: int) -> TaskData:
    """Derive the package-classification task from cleaned built-in documents."""
    builtin = docs[(docs.source == "builtin") & ~docs.name.str.startswith("topic:")]
    top = builtin.name.str.split(".").str[0]
    rows = builtin[top.isin(packages)].copy()
    rows["label"] = top[top.isin(packages)].map({p: i for i, p in enumerate(packages)})
    counts = rows.label.value_counts()
    thin = [packages[i] for i in range(len(packages)) if counts.get(i, 0) < MIN_PER_CLASS]
    if thin:
        raise DataError(f"finetune task 'package': too few documents for {listed(thin)} "
                        f"(need {MIN_PER_CLASS} each); use data.source=builtin with more "
                        "documents (data.max_docs), change finetune.packages, or bring your "
                        "own data with finetune.task=file and finetune.task_path")
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, packages)) + r")\b", re.IGNORECASE)
    rows["text"] = rows.text.map(lambda t: pattern.sub(MASK, t))
    is_test = rows.doc_id.map(lambda d: is_val_doc(d, test_fraction, seed)).astype(bool)
    cols = ["doc_id", "text", "label"]
    train = rows[~is_test][cols].reset_index(drop=True)
    test = rows[is_test][cols].reset_index(drop=True)
    if train.empty or test.empty:
        raise DataError("finetune task 'package': the train/test split is empty; add documents")
    return TaskData(train=train, test=test, labels=list(packages))


def read_task_file(path: str | Path) -> pd.DataFrame:
    """Read a user's labelled data (``text,label``) from .csv, .jsonl or .parquet."""
    return read_table(path, ("text", "label"), "finetune.task_path")


def read_table(path: str | Path, columns: tuple[str, ...], param: str) -> pd.DataFrame:
    """Read .csv/.jsonl/.parquet task data and check it has ``columns``."""
    path = Path(path)
    cols = ",".join(columns)
    if not str(path) or not path.is_file():
        raise DataError(f"{param} '{path}' is not a file; point it at a .csv, .jsonl "
                        f"or .parquet with columns {cols}")
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif path.suffix == ".jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        elif path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            raise DataError(f"{param} '{path}': unsupported type (use .csv, .jsonl "
                            "or .parquet)")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types
        raise DataError(f"cannot read {param} '{path}': {exc}") from exc
    missing = set(columns) - set(df.columns)
    if missing:
        raise DataError(f"{param} '{path}' lacks column(s) {sorted(missing)} "
                        f"(has {list(df.columns)}); it needs {cols}")
    return df


def build_file_task(df: pd.DataFrame, source: str, test_fraction: float, seed: int) -> TaskData:
    """A classification task from user rows; labels validated, split stable by row hash."""
    labels_raw = df["label"].astype(str).str.strip()
    empty = int((labels_raw == "").sum() + df["label"].isna().sum())
    if empty:
        raise DataError(f"{source}: {empty} row(s) have an empty label; fill or drop them")
    texts = df["text"].fillna("").astype(str)
    if (texts.str.strip() == "").any():
        raise DataError(f"{source}: {(texts.str.strip() == '').sum()} row(s) have empty text")
    labels = sorted(labels_raw.unique())
    if len(labels) < 2:
        raise DataError(f"{source}: all rows have the label '{labels[0]}'; a classifier needs "
                        "at least two classes")
    counts = labels_raw.value_counts()
    thin = sorted(counts[counts < MIN_PER_CLASS].index)
    if thin:
        raise DataError(f"{source}: {len(thin)} of {len(labels)} labels have fewer than "
                        f"{MIN_PER_CLASS} examples ({listed(thin)}); add examples or drop "
                        "those labels")
    rows = pd.DataFrame({"doc_id": [f"{source}:{i}" for i in range(len(df))],
                         "text": texts.tolist(),
                         "label": labels_raw.map({lab: i for i, lab in enumerate(labels)})})
    is_test = rows.text.map(lambda t: is_val_doc(t, test_fraction, seed)).astype(bool)
    train = rows[~is_test].reset_index(drop=True)
    test = rows[is_test].reset_index(drop=True)
    if train.empty or test.empty:
        raise DataError(f"{source}: too few rows to split into train and test with "
                        f"finetune.test_fraction={test_fraction}")
    return TaskData(train=train, test=test, labels=labels)


def with_test_file(task: TaskData, df: pd.DataFrame, source: str) -> TaskData:
    """Use every row of ``task`` for training and ``df`` (text,label) as the evaluation set.

    Test rows whose label never occurs in training cannot be predicted: they are counted per
    label in ``unseen`` (and reported) instead of silently lowering the metrics.
    """
    train = pd.concat([task.train, task.test], ignore_index=True)
    labels_raw = df["label"].astype(str).str.strip()
    index = {lab: i for i, lab in enumerate(task.labels)}
    known = labels_raw.isin(index)
    unseen = labels_raw[~known].value_counts().to_dict()
    if unseen:
        log.warning("%s: %d test row(s) have labels never seen in training: %s", source,
                    int((~known).sum()), listed({str(k): int(v) for k, v in unseen.items()}))
    if not known.any():
        raise DataError(f"{source}: no test row has a label seen in training "
                        f"(training labels: {listed(task.labels)})")
    test = pd.DataFrame({"doc_id": [f"{source}:{i}" for i in df.index[known]],
                         "text": df["text"][known].fillna("").astype(str).tolist(),
                         "label": labels_raw[known].map(index).tolist()})
    return TaskData(train=train, test=test, labels=task.labels,
                    unseen={str(k): int(v) for k, v in unseen.items()})


def build_task(cfg: FinetuneConfig, clean_docs: pd.DataFrame) -> TaskData:
    """The configured task: the built-in package task, or the user's labelled file(s)."""
    if cfg.task == "file":
        task = build_file_task(read_task_file(cfg.task_path), cfg.task_path, cfg.test_fraction,
                               cfg.seed)
        if cfg.test_path:
            task = with_test_file(task, read_table(cfg.test_path, ("text", "label"),
                                                   "finetune.test_path"), cfg.test_path)
        return task
    return build_package_task(clean_docs, cfg.packages, cfg.test_fraction, cfg.seed)


def encode_texts(tok: Tokenizer, texts: list[str], block_size: int,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, block_size) right-padded with PAD, and each sequence's length (>= 1)."""
    pad_id = tokenizer_pad_id(tok)
    encs = tok.encode_batch(texts)
    ids = torch.full((len(texts), block_size), pad_id, dtype=torch.long)
    lengths = torch.ones(len(texts), dtype=torch.long)
    for i, enc in enumerate(encs):
        seq = enc.ids[:block_size] or [pad_id]
        ids[i, :len(seq)] = torch.tensor(seq)
        lengths[i] = len(seq)
    return ids, lengths


@torch.no_grad()
def predict(model: GPTClassifier, ids: torch.Tensor, lengths: torch.Tensor,
            batch_size: int = 64) -> torch.Tensor:
    """Predicted label ids for encoded sequences."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in progress.track(range(0, len(ids), batch_size), "evaluate: classify", unit="batch"):
        logits = model(ids[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device))
        out.append(logits.argmax(-1).cpu())
    return torch.cat(out)


def _fit(model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
         cfg: FinetuneConfig | SFTConfig, device: torch.device, out_dir: Path, resume: bool,
         callback: MetricsCallback | None, kind: str,
         finalize: Callable[[nn.Module], object] | None = None) -> LoopResult:
    """The shared fine-tuning loop: checkpoints under ``out_dir``, final weights saved.

    One batch per step (no accumulation), no periodic evaluation. ``finalize(model)`` runs
    before the final save (e.g. merging LoRA adapters). In a world of several processes the
    model trains under DDP (``loss_fn`` takes this process's rows); rank 0 saves.
    """
    settings = LoopSettings(kind=kind, max_steps=cfg.max_steps, lr=cfg.lr,
                            min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                            grad_accum=1, grad_clip=cfg.grad_clip,
                            max_nonfinite_steps=cfg.max_nonfinite_steps)
    checkpoints = CheckpointPolicy(Path(out_dir) / "checkpoints", cfg.checkpoint_interval, resume)
    loop = run_loop(distributed.wrap(model, device), loss_fn, optimizer, settings, device,
                    checkpoints=checkpoints, callback=callback)
    if finalize is not None:
        finalize(model)
    if distributed.rank() == 0:
        ckpt.save_weights(model, Path(out_dir) / "model.safetensors")
    return loop


@dataclass
class FinetuneResult:
    model: GPTClassifier
    loop: LoopResult
    class_weights: list[float]


def finetune_classifier(base: GPT, tok: Tokenizer, task: TaskData, cfg: FinetuneConfig,
                        out_dir: Path, device_name: str, resume: bool = True,
                        callback: MetricsCallback | None = None) -> FinetuneResult:
    """Fine-tune ``base`` with a classification head on ``task.train``.

    The head trains at ``cfg.lr``, the body at ``cfg.lr * cfg.base_lr_factor`` (0 freezes it).
    With ``cfg.lora_rank > 0`` the body is frozen and only LoRA adapters on its attention
    projections (and the head) train at ``cfg.lr``; the adapters are merged into the weights at
    the end, so the saved model is a plain classifier. The loss uses inverse-frequency class
    weights so rare classes count.
    """
    from gpt.lora import apply_lora, merge_lora

    group = distributed.join(resolve_device(device_name))
    device = group.device
    mine = distributed.rows(cfg.batch_size, TASK.batch_key)
    torch.manual_seed(cfg.seed)
    if cfg.lora_rank > 0:
        trainable = apply_lora(base, cfg.lora_rank, cfg.lora_alpha)
        log.info("LoRA rank %d: %d trainable body parameters", cfg.lora_rank, trainable)
    model = GPTClassifier(base, len(task.labels), tokenizer_pad_id(tok)).to(device)
    ids, lengths = encode_texts(tok, task.train.text.tolist(), base.config.block_size)
    labels = torch.tensor(task.train.label.tolist(), dtype=torch.long)
    counts = torch.bincount(labels, minlength=len(task.labels)).float().clamp(min=1)
    weights = (counts.sum() / (len(task.labels) * counts)).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device,
                               lr_scale={} if cfg.lora_rank else {"body.": cfg.base_lr_factor})

    def loss_fn(m: nn.Module, step: int, micro: int) -> torch.Tensor:
        ix = torch.randint(len(ids), (cfg.batch_size,),
                           generator=step_generator(cfg.seed, step))[mine]
        logits = m(ids[ix].to(device), lengths[ix].to(device))
        return F.cross_entropy(logits, labels[ix].to(device), weight=weights)

    loop = _fit(model, loss_fn, optimizer, cfg, device, out_dir, resume, callback,
                TASK.step, finalize=(lambda m: merge_lora(m)) if cfg.lora_rank else None)
    group.leave()
    return FinetuneResult(model=model.cpu(), loop=loop, class_weights=weights.cpu().tolist())


# --- supervised fine-tuning (SFT) on prompt/completion pairs ---------------------------------

IGNORE_INDEX = -1  # GPT.forward's cross-entropy skips these target positions


def encode_sft_pairs(tok: Tokenizer, pairs: list[tuple[str, str]], block_size: int,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (N, block_size) for prompt/completion pairs.

    Each sequence is ``prompt + completion + EOT`` (cut to ``block_size + 1`` tokens). Targets
    that would predict a prompt token, and padding, are ``IGNORE_INDEX``: the loss is on the
    completion (and its end-of-text) only, so the model learns to answer, not to echo prompts.

    Raises:
        DataError: no pair keeps a completion token within ``block_size``.
    """
    from gpt.data.tokenizer import EOT

    pad_id, eot_id = tokenizer_pad_id(tok), tok.token_to_id(EOT)
    rows_x, rows_y = [], []
    for prompt, completion in pairs:
        p, c = tok.encode(prompt).ids, tok.encode(completion).ids
        seq = (p + c + [eot_id])[:block_size + 1]
        if len(seq) <= max(len(p), 1):
            continue  # the prompt alone fills the context: nothing to learn from
        x = torch.full((block_size,), pad_id, dtype=torch.long)
        y = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
        x[:len(seq) - 1] = torch.tensor(seq[:-1])
        y[:len(seq) - 1] = torch.tensor(seq[1:])
        y[:max(len(p) - 1, 0)] = IGNORE_INDEX  # position i predicts token i + 1
        rows_x.append(x)
        rows_y.append(y)
    if not rows_x:
        raise DataError(f"SFT: none of {len(pairs)} prompt/completion pairs has a completion "
                        f"token within block_size={block_size}; shorten the prompts")
    return torch.stack(rows_x), torch.stack(rows_y)


def sft_loss(model: GPT, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over completion positions only."""
    return model(ids, targets, return_logits=False)[1]


@dataclass
class SFTResult:
    model: GPT
    loop: LoopResult
    examples: int


@dataclass
class SFTTask:
    """Prompt/completion pairs split into train/test."""

    train: list[tuple[str, str]]
    test: list[tuple[str, str]]

    def eval_hash(self) -> str:
        blob = "\n".join(f"{p}\t{c}" for p, c in self.test)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)


def first_sentence(text: str, max_chars: int = 160) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    m = _FIRST_SENTENCE.match(para)
    return (m.group(1) if m else para)[:max_chars]


def _split_pairs(pairs: list[tuple[str, str]], test_fraction: float, seed: int, source: str,
                 ) -> SFTTask:
    train = [pc for pc in pairs if not is_val_doc(pc[0], test_fraction, seed)]
    test = [pc for pc in pairs if is_val_doc(pc[0], test_fraction, seed)]
    if not train or not test:
        raise DataError(f"SFT task {source}: {len(pairs)} pairs are too few to split with "
                        f"test_fraction={test_fraction}; add pairs")
    return SFTTask(train=train, test=test)


def build_docsummary_task(docs: pd.DataFrame, test_fraction: float, seed: int) -> SFTTask:
    """Built-in SFT task: ``"<qualified name>:"`` -> the first sentence of its docstring."""
    rows = docs[(docs.source == "builtin") & ~docs.name.str.startswith("topic:")
                & docs.name.str.contains(".", regex=False)]
    pairs = []
    for name, text in zip(rows.name, rows.text, strict=True):
        target = first_sentence(text)
        if len(target.split()) >= 3:
            pairs.append((f"{name}:\n", target))
    return _split_pairs(pairs, test_fraction, seed, "'docsummary' (built-in corpus)")


def build_sft_file_task(path: str, test_fraction: float, seed: int) -> SFTTask:
    """SFT pairs from a user's file with prompt,completion columns (.jsonl/.csv/.parquet)."""
    df = read_table(path, ("prompt", "completion"), "sft.task_path")
    bad = (df.prompt.fillna("").astype(str).str.strip() == "") | \
        (df.completion.fillna("").astype(str).str.strip() == "")
    if bad.any():
        raise DataError(f"sft.task_path '{path}': {int(bad.sum())} row(s) have an empty prompt "
                        "or completion; fill or drop them")
    pairs = list(zip(df.prompt.astype(str), df.completion.astype(str), strict=True))
    return _split_pairs(pairs, test_fraction, seed, f"'{path}'")


def finetune_sft(base: GPT, tok: Tokenizer, pairs: list[tuple[str, str]],
                 cfg: FinetuneConfig | SFTConfig, out_dir: Path, device_name: str,
                 resume: bool = True, callback: MetricsCallback | None = None) -> SFTResult:
    """Supervised fine-tuning of the language model on prompt/completion pairs.

    Uses ``cfg``'s optimisation fields (``max_steps``, ``batch_size``, ``lr``, ``min_lr_factor``,
    ``weight_decay``, ``beta1``/``beta2``, ``warmup_steps``, ``grad_clip``,
    ``max_nonfinite_steps``, ``checkpoints``, ``seed``); checkpoints under
    ``out_dir/checkpoints`` (resumable) and the weights at ``out_dir/model.safetensors``.
    """
    group = distributed.join(resolve_device(device_name))
    device = group.device
    mine = distributed.rows(cfg.batch_size, SFT.batch_key)
    torch.manual_seed(cfg.seed)
    model = base.to(device)
    ids, targets = encode_sft_pairs(tok, pairs, base.config.block_size)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)

    def loss_fn(m: nn.Module, step: int, micro: int) -> torch.Tensor:
        ix = torch.randint(len(ids), (cfg.batch_size,),
                           generator=step_generator(cfg.seed, step))[mine]
        return sft_loss(m, ids[ix].to(device), targets[ix].to(device))

    loop = _fit(model, loss_fn, optimizer, cfg, device, out_dir, resume, callback, SFT.step)
    group.leave()
    return SFTResult(model=model.cpu(), loop=loop, examples=len(ids))
