"""Byte-level BPE tokenizer trained with HF ``tokenizers``, or a pretrained one saved alike.

The saved ``tokenizer.json`` loads with ``transformers.PreTrainedTokenizerFast`` (see
``load_hf_tokenizer``), so the exported model and the registry share one tokenizer file.
A pretrained GPT-2 tokenizer (``tokenizer.pretrained``) has no ``<|pad|>``: padding then uses
``<|endoftext|>`` (:func:`pad_id`), as transformers does for GPT-2, so its vocabulary stays the
checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpt.errors import DataError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOT, PAD]


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: no unknown tokens, any byte sequence encodes)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() <= len(SPECIAL_TOKENS) + 256:
        raise DataError("the tokenizer learned no merges: the corpus is too small; add documents "
                        "or lower tokenizer.min_frequency")
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}; run `gptops data tokenize` first")
    return Tokenizer.from_file(str(path))


def pad_id(tok: Tokenizer) -> int:
    """The padding token's id: ``<|pad|>``, or ``<|endoftext|>`` where there is none (GPT-2's
    own tokenizer). Padding is never attended to nor predicted, so either works."""
    pid = tok.token_to_id(PAD)
    return tok.token_to_id(EOT) if pid is None else pid


def load_hf_tokenizer(path: Path):  # -> transformers.PreTrainedTokenizerFast
    """The same tokenizer as a ``transformers.PreTrainedTokenizerFast`` (EOT as bos/eos, PAD
    as pad, or EOT where the tokenizer has no PAD: no token is ever added)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}; run `gptops data tokenize` first")
    has_pad = Tokenizer.from_file(str(path)).token_to_id(PAD) is not None
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=PAD if has_pad else EOT)
