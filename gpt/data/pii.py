"""PII scrubbing: e-mail addresses, IPv4/IPv6 addresses, phone numbers and secrets become
placeholders (``<EMAIL>``, ``<IP>``, ``<PHONE>``, ``<SECRET>``), counted per kind.

Patterns are written for precision on technical text: version numbers (3.11.7) and OIDs are not
IPs, and names around secrets are kept.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>", "secret": "<SECRET>"}

# Every pattern starts with a character class or literal so the regex engine skips ahead
# quickly; the context checks (no letter or digit glued on either side) are done in the
# replacement functions, which return the match unchanged when they fail.
_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                    r"\b")
# Exactly four dotted numbers of at most three digits, each <= 255 (checked on replacement):
# "3.11.7" (three parts) and "1.3.6.1.5" (an OID) are left alone.
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV4_HINT = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")  # starts with a literal: a fast scan
# Candidates only (validated with ipaddress): hex groups, colons and dots with two colons.
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.].)(?=[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:)"
                   r"[0-9A-Fa-f:.]{5,44}(?![\w:])")
# International "+CC ..." or North American "(555) 123-4567", "555-123-4567", "1 555 123 4567".
_PHONE = re.compile(r"[+(0-9](?:(?<=\+)\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
                    r"|(?<=\()\d{3}\) ?\d{3}[ .-]\d{4}"
                    r"|(?<=1)[ .-](?:\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\1\d{4})"
                    r"|(?<=\d)\d{2}([ .-])\d{3}\2\d{4})")
_SECRET_TOKENS = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"        # OpenAI / Anthropic style keys
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"                       # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,}"                      # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"                    # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35})\b"                        # Google API keys
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    re.DOTALL)
_GITHUB_HINT = re.compile("gh[pousr]_")
# A long random-looking value after key=, token: "secret" = ... (the name is kept). The scan
# starts at "=" or ":" (fast); the key name before it is checked by _assign_sub.
_SECRET_VALUE = re.compile(r"[=:][ \t]*[\"']?([A-Za-z0-9+/_-]{16,}={0,2})")
_SECRET_NAME = re.compile(r"(?i)(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|access[_-]?key|"
                          r"auth)[\w-]*[\"']?[ \t]*$")
_ASSIGN_MARKERS = ("key", "secret", "token", "passw", "auth")

#: Per kind, an RE2 pattern (for Arrow's vectorised ``match_substring_regex``) that matches
#: wherever a pattern above could (a superset: no context checks, shortest forms): a document
#: it does not match is left alone by that kind, so batch cleaning sends only the others to
#: ``scrub_pii``, with only the kinds that matched. Phone numbers also need 10 digits.
PII_PREFILTERS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2}",
    # IPv4: four dotted numbers; IPv6: three non-empty groups in a row (what _ipv6_sub needs).
    "ip": r"\.\d{1,3}\.\d{1,3}\.\d|[0-9A-Fa-f]::?[0-9A-Fa-f]{1,4}::?[0-9A-Fa-f]",
    "phone": r"\+\d|\(\d{3}\)|\d{3}[ .-]\d{3}[ .-]\d{4}",
    "secret": r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20}|(?:AKIA|ASIA)[0-9A-Z]{16}"
              r"|gh[pousr]_[A-Za-z0-9]{36}|xox[abprs]-[A-Za-z0-9-]{10}|AIza[0-9A-Za-z_-]{35}"
              r"|PRIVATE KEY-----"
              r"|(?i:key|secret|token|passw|auth)[\w-]*[\"']?[ \t]*[=:][ \t]*[\"']?"
              r"[A-Za-z0-9+/_-]{16}",
}


def _glued_before(text: str, start: int, chars: str = ".") -> bool:
    """True when the character before ``start`` is a letter, digit, ``_`` or one of ``chars``."""
    if start == 0:
        return False
    c = text[start - 1]
    return c.isalnum() or c == "_" or c in chars


def _glued_after(text: str, end: int, chars: str = "") -> bool:
    """True when a word character (or ``chars``, or ".<digit>") follows ``end``."""
    if end >= len(text):
        return False
    c = text[end]
    if c.isalnum() or c == "_" or c in chars:
        return True
    return c == "." and end + 1 < len(text) and text[end + 1].isdigit()


def _email_sub(match: re.Match[str]) -> str:
    if _glued_before(match.string, match.start(), ".+-%"):
        return match.group(0)
    return "<EMAIL>"


def _ipv4_sub(match: re.Match[str]) -> str:
    cand = match.group(0)
    if _glued_before(match.string, match.start()) or _glued_after(match.string, match.end()) \
            or any(int(part) > 255 for part in cand.split(".")):
        return cand
    return "<IP>"


def _ipv6_sub(match: re.Match[str]) -> str:

    cand = match.group(0)
    core = cand.rstrip(".")
    if len([g for g in core.split(":") if g]) < 3:  # "::1", "x[::2]" are not worth a tag
        return cand
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return cand
    return "<IP>" + cand[len(core):]


def _phone_sub(match: re.Match[str]) -> str:
    cand = match.group(0)
    digits = sum(c.isdigit() for c in cand)
    if not 10 <= digits <= 15 or _glued_before(match.string, match.start(), ".+-") or \
            _glued_after(match.string, match.end(), "-"):
        return cand
    return "<PHONE>"


def _looks_random(value: str) -> bool:
    """A token rather than a word or identifier: it mixes digits and letters."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _assign_sub(match: re.Match[str]) -> str:
    before = match.string[max(0, match.start() - 40):match.start()]
    if _looks_random(match.group(1)) and _SECRET_NAME.search(before):
        return match.group(0)[:match.start(1) - match.start()] + "<SECRET>"
    return match.group(0)


def scrub_pii(text: str, kinds: list[str] | tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """Replace PII of the given kinds with placeholders.

    Cheap substring checks decide which patterns can match at all, so most documents cost a
    few ``in`` tests and one or two regex scans.

    Args:
        text: normalised text.
        kinds: any of ``email``, ``ip``, ``phone``, ``secret``.

    Returns:
        The scrubbed text and the number of placeholders written per kind (kinds with none are
        left out).
    """
    counts: dict[str, int] = {}
    jobs: list[tuple[str, re.Pattern[str], Any]] = []
    if "secret" in kinds:
        if "sk-" in text or "AKIA" in text or "ASIA" in text or "AIza" in text or \
                "xox" in text or "PRIVATE KEY" in text or \
                ("gh" in text and _GITHUB_HINT.search(text)):
            jobs.append(("secret", _SECRET_TOKENS, "<SECRET>"))
        if "=" in text or ":" in text:
            lower = text.lower()
            if any(m in lower for m in _ASSIGN_MARKERS):
                jobs.append(("secret", _SECRET_VALUE, _assign_sub))
    if "email" in kinds and "@" in text:
        jobs.append(("email", _EMAIL, _email_sub))
    if "ip" in kinds:
        if "::" in text or text.count(":") >= 7:
            jobs.append(("ip", _IPV6, _ipv6_sub))
        if text.count(".") >= 3 and _IPV4_HINT.search(text):
            jobs.append(("ip", _IPV4, _ipv4_sub))
    if "phone" in kinds and sum(map(text.count, "0123456789")) >= 10:
        jobs.append(("phone", _PHONE, _phone_sub))
    for kind, pattern, repl in jobs:
        new = pattern.sub(repl, text)
        if new != text:
            tag = PLACEHOLDERS[kind]
            counts[kind] = counts.get(kind, 0) + new.count(tag) - text.count(tag)
            text = new
    return text, counts
