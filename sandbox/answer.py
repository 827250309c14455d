"""The model's answer parsed: sentences, each with the fact ids it cites.

Servers without schema support (and small models with it) wrap JSON in prose or code
fences; the first JSON object of the reply is taken, and it must have the contract's shape.
What it says is checked afterwards, by sandbox.verifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["AnswerInvalid", "Sentence", "parse_answer"]

MAX_SENTENCES = 60
MAX_SENTENCE_CHARS = 2000


@dataclass(frozen=True)
class Sentence:
    text: str
    facts: tuple[str, ...]  # the cited fact ids, as the model wrote them ("F1")


class AnswerInvalid(Exception):
    """Not the contract's JSON: asked once more, then the job fails with ``code``."""

    code = "model-bad-answer"


def _first_object(content: str) -> object:
    decoder = json.JSONDecoder()
    start = content.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(content, start)
            return value
        except ValueError:
            start = content.find("{", start + 1)
    raise AnswerInvalid("the answer holds no JSON object")


def parse_answer(content: str) -> list[Sentence]:
    value = _first_object(content)
    sentences = value.get("sentences") if isinstance(value, dict) else None
    if not isinstance(sentences, list) or not sentences:
        raise AnswerInvalid('the answer has no "sentences" list')
    if len(sentences) > MAX_SENTENCES:
        raise AnswerInvalid(f"the answer has more than {MAX_SENTENCES} sentences")
    parsed: list[Sentence] = []
    for i, item in enumerate(sentences, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise AnswerInvalid(f'sentence {i} has no "text" string')
        text = item["text"].strip()
        if not text or len(text) > MAX_SENTENCE_CHARS:
            raise AnswerInvalid(f"sentence {i} is empty or longer than {MAX_SENTENCE_CHARS} characters")
        facts = item.get("facts", [])
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise AnswerInvalid(f'sentence {i}: "facts" is not a list of fact ids')
        parsed.append(Sentence(text, tuple(f.strip() for f in facts)))
    return parsed
