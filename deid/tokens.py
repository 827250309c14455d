"""Identifier tokens for the outgoing leak check (the last gate before a payload leaves).

The identified zone keeps, per patient, keyed hashes of that patient's identifier values
(never the values). Before an event is published, its text is cut into the same kind of
tokens, hashed with the same key, and compared: one hit blocks the payload. Tokens are
normalised words (NFKC, case-folded), runs of up to four words, and digit-only forms of
identifiers and phone numbers, so "Harriet Quimby", "QUIMBY" and "(217) 555-0147" all
meet their stored forms.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .vault import Vault

MAX_WORDS = 4
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DIGIT_KINDS = frozenset({"ID", "PHONE"})
_MIN_DIGITS = 6
_MIN_CHARS = 4  # shorter words ("Ann", "Li") would block ordinary text by chance
_DIGIT_RUN = re.compile(rf"\d{{{_MIN_DIGITS},}}")
# Values we generate (keyed ids, references, timestamps, envelope fields) are not text
# from the message; their hex and digits would only produce chance matches.
_SKIP_KEYS = frozenset(
    {"id", "reference", "meta", "system", "specversion", "source", "type", "time", "subject",
     "dataschema", "datacontenttype", "fullUrl"}
)  # fmt: skip
SKIP_KEYS = _SKIP_KEYS  # what payload_tokens leaves out: callers that walk payloads themselves


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _significant(token: str) -> bool:
    wide = sum(1 for c in token if ord(c) > 0x2E80)  # a CJK character carries a word's weight
    return len(token) + wide >= _MIN_CHARS


def identifier_tokens(phi_values: Mapping[str, str], vault: Vault) -> dict[str, str]:
    """token hash -> kind, for everything the message reported about its patient(s)."""
    tokens: dict[str, str] = {}
    for value, kind in phi_values.items():
        if kind == "DATE":
            continue  # dates are shifted, and a date shape matches other dates by chance
        words = _words(value)
        if words and _significant(" ".join(words)) and len(words) <= MAX_WORDS:
            tokens[vault.token(" ".join(words))] = kind
        if kind == "NAME":
            for word in words:
                if _significant(word):
                    tokens[vault.token(word)] = kind
        if kind in _DIGIT_KINDS:
            digits = "".join(ch for ch in value if ch.isdigit())
            if len(digits) >= _MIN_DIGITS:
                tokens[vault.token(digits)] = kind
    return tokens


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            if key not in _SKIP_KEYS:
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def payload_tokens(payload: Any, vault: Vault) -> Iterable[str]:
    """Hashes of every word run (1..MAX_WORDS words) and digit run in the payload's strings."""
    seen: set[str] = set()
    for text in _strings(payload):
        words = _words(text)
        for i in range(len(words)):
            for n in range(1, MAX_WORDS + 1):
                if i + n > len(words):
                    break
                token = " ".join(words[i : i + n])
                if token not in seen:
                    seen.add(token)
                    yield vault.token(token)
        digits = re.sub(r"[\s().\-+/]", "", text)
        for run in _DIGIT_RUN.findall(digits):
            if run not in seen:
                seen.add(run)
                yield vault.token(run)
