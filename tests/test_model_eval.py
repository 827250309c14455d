"""bench/model_eval.py's machinery as a regression test of the summary verifier (issue 18).

Twenty synthetic contexts (the canonical fixtures and the synthetic hospital, English and
Chinese: labs with flags, qualitative results, CT reports with negations, a GB18030 lab
panel), de-identified the way ``sidecar convert --deid`` does it. Every faithful answer
must pass and every planted error with a deterministic signal must be refused; the
bench's full run (docs/model-eval.md) adds the real corpus and the figures.
"""

from __future__ import annotations

import re

import pytest

from bench.model_eval import (
    DETERMINISTIC,
    Context,
    Evaluation,
    build_contexts,
    evaluate,
    faithful_answers,
    plant,
)
from sandbox.verifier import verify

CONTEXTS = 20


@pytest.fixture(scope="module")
def contexts() -> list[Context]:
    built, notes = build_contexts(corpus=False, hospital_patients=6)
    assert not notes.failures, notes.failures
    # The richest kinds first: a discharge context holds labs, serology, a CT report, the stay.
    order = {"discharge": 0, "imaging-report": 1, "lab-report": 2, "digest": 3}
    chosen = sorted(built, key=lambda c: (order[c.kind], c.name))[:CONTEXTS]
    assert {c.language for c in chosen} == {"en", "zh"}
    return chosen


@pytest.fixture(scope="module")
def evaluation(contexts: list[Context]) -> Evaluation:
    return evaluate(contexts, examples=20)


def _fixture_context(contexts: list[Context], language: str) -> Context:
    return next(c for c in contexts if c.source == "fixtures" and c.language == language)


def test_contexts_hold_what_the_errors_need(contexts: list[Context]) -> None:
    lines = [f.text for c in contexts for f in c.facts]
    assert any(f.flag == "H" for c in contexts for f in c.facts)
    assert any(f.flag == "L" for c in contexts for f in c.facts)
    assert any("未见" in line for line in lines), "the Chinese CT report's negations"
    assert any("No pleural effusion" in line for line in lines), "the English CT report's negations"
    assert any("血钾" in line for line in lines), "the GB18030 panel's Chinese lab names"
    # De-identified: the fixture patient's name, MRN and birth date are nowhere.
    for banned in ("Quimby", "Harriet", "MRN7734021", "1976-04-12"):
        assert not any(banned in line for line in lines)


def test_faithful_answer_restates_the_fact(contexts: list[Context]) -> None:
    context = _fixture_context(contexts, "en")
    potassium = next(f for f in context.facts if f.text.startswith("Potassium"))
    day = re.search(r"\d{4}-\d{2}-\d{2}", potassium.text)
    assert day is not None
    answers = {a.style: a for a in faithful_answers(context)}
    said = [d.text for d in answers["en-flag-first"].drafts if d.facts == (potassium.id,)]
    assert said == [f"Potassium was high at 6.1 mmol/L on {day.group(0)}."]
    zh = {a.style: a for a in faithful_answers(_fixture_context(contexts, "zh"))}
    assert any("Potassium 6.1 mmol/L，偏高。" in d.text for d in zh["zh-date-first"].drafts)


def test_a_planted_error_changes_one_sentence_only(contexts: list[Context]) -> None:
    context = _fixture_context(contexts, "en")
    answer = next(a for a in faithful_answers(context) if a.style == "en-flag-first")
    assert verify(answer.sentences(), context.facts).ok
    for error in ("value", "unit", "date", "flag"):
        planted = plant(error, answer, context)
        assert planted is not None and planted.planted == error
        changed = [n for n, (a, b) in enumerate(zip(answer.drafts, planted.drafts, strict=True)) if a != b]
        assert changed == [planted.where], error
        before, after = planted.note.split(" -> ")
        assert before in answer.drafts[planted.where].text
        assert after in planted.drafts[planted.where].text and before != after


def test_no_faithful_answer_is_refused(evaluation: Evaluation) -> None:
    refused = {
        f"{lang} {style}": t.examples
        for lang, styles in evaluation.faithful.items()
        for style, t in styles.items()
        if t.refused
    }
    assert evaluation.faithful_total().answers >= CONTEXTS * 4
    assert not refused, refused


@pytest.mark.parametrize("error", sorted(DETERMINISTIC))
def test_every_planted_error_is_caught(evaluation: Evaluation, error: str) -> None:
    total = evaluation.planted_total(error)
    assert total.answers >= 5, f"only {total.answers} {error} errors planted"
    missed = [x for types in evaluation.planted.values() if error in types for x in types[error].examples]
    assert total.refused == total.answers, missed
