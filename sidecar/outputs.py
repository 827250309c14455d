"""The identified zone takes in what the model zone handed back (``job_outputs``).

The sandbox may only insert its output; this side, in `sidecar serve`'s relay loop, checks
each row again before anything of it is stored or published: the job is running; the body
follows the output contract (docs/model-contract.md: kind, template, language, sentences
with their cited versioned references, inputs, the prompt as sent, the model); every input
is a stored version of a clinical resource of the job's patient; every sentence cites at
least one input and nothing else; no known identifier of the patient is in the sentences,
the prompt or the model's fields (``LeakGuard``); and the verifier, run again here over the
cited versions as stored (``sandbox.verifier.verify_stored``), passes every sentence.

Then, in one transaction, it builds and stores (sandbox.documents, per HL7's AI
Transparency on FHIR IG): the model's Device, the prompt as a DocumentReference, the
summary's DocumentReference (AIAST, preliminary, its sentence -> fact map) and its
Provenance; the summary event; the job done; the audit entry (which also keeps the
model's response id and token usage). Or it fails the job with a dead letter (the
sandbox's reason, or why the output was rejected). Either way the row is deleted, in the
same transaction, and audited.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.events import summary_event, summary_routing_key
from core.fhir import FhirValidationError, validate_resource
from core.store import add_outbox, put_resource
from core.tables import Job, JobOutput, JobOutputKind, JobStatus, Resource, ResourceHistory
from deid.policy import DEID_SECURITY_LABEL
from sandbox.context import CLINICAL_TYPES
from sandbox.documents import (
    SUMMARY_TYPES,
    model_device,
    prompt_document,
    prompt_document_id,
    provenance,
    summary_document,
)
from sandbox.models import ExtractiveSummarizer
from sandbox.templates import LEGACY_KINDS
from sandbox.verifier import VERIFIER, verify_stored
from worker.deadletters import fail_job
from worker.leakguard import LeakGuard

__all__ = ["OutputIntake", "SummaryOutput"]

log = logging.getLogger("sidecar.outputs")

ACTOR = "sidecar:outputs"
# Bounds of the contract (docs/model-contract.md); sandbox.answer holds the model's to them.
MAX_SENTENCES = 60
MAX_SENTENCE_CHARS = 2000
MAX_CITATIONS = 50  # per sentence
MAX_INPUTS = 2000
MAX_PROMPT_CHARS = 500_000
MAX_REASON_CHARS = 2000
_CHUNK = 300  # keys per SELECT: x3 parameters, under SQLite's oldest limit of 999
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})/_history/([1-9][0-9]{0,9})$")

_T = TypeVar("_T")
Reference = Annotated[str, StringConstraints(pattern=_REFERENCE.pattern)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SentenceOut(_Contract):
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SENTENCE_CHARS)]
    facts: Annotated[list[Reference], Field(max_length=MAX_CITATIONS)]


class ModelOut(_Contract):
    name: Name
    version: Name
    served: Name
    response_id: Name | None = None
    usage: Annotated[
        dict[Annotated[str, StringConstraints(max_length=64)], Annotated[int, Field(ge=0)]],
        Field(max_length=16),
    ] = {}


class SummaryOutput(_Contract):
    """``job_outputs.body`` of a summary: the output contract, checked for shape and size."""

    kind: Annotated[str, StringConstraints(max_length=32)]
    template: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}/[0-9A-Za-z.-]{1,16}$")]
    language: Literal["en", "zh"]
    sentences: Annotated[list[SentenceOut], Field(min_length=1, max_length=MAX_SENTENCES)]
    inputs: Annotated[list[Reference], Field(min_length=1, max_length=MAX_INPUTS)]
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: ModelOut
    attempts: Annotated[int, Field(ge=1, le=10)]
    verifier: Name | None = None  # the sandbox's; serve's own verdict is the one recorded


class OutputRejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class _Checked:
    """An output that passed every check, with the resources to store built and valid."""

    body: SummaryOutput
    device: dict[str, Any]
    prompt: dict[str, Any]
    summary: dict[str, Any]
    tokens: frozenset[str]  # of its texts, for the leak screen's last look under the write lock


@dataclass(frozen=True)
class _Verdict:
    """The checks' outcome, and the output it was reached on: (job id, attempt, body). An
    output's row id alone does not name it: on SQLite a deleted last row's id is given to
    the next insert, so another relay may have taken this one and the sandbox handed back
    another job's output under the same id before the write transaction."""

    made_for: tuple[int, int, str | None]
    checked: _Checked | OutputRejected


class OutputIntake:
    def __init__(
        self,
        db: Database,
        guard: LeakGuard,
        *,
        batch_size: int = 50,
        model_version: str | None = None,
        model_weights_digest: str | None = None,
    ) -> None:
        """``model_version``, ``model_weights_digest``: the settings', for the model's Device."""
        self._db = db
        self._guard = guard
        self._batch_size = batch_size
        self._model_version = model_version
        self._weights_digest = model_weights_digest

    def run_once(self) -> int:
        """Take in one batch; returns how many outputs were handled (0: none waiting)."""
        # A read (on SQLite, beside the writers): most rounds find nothing, and a write
        # transaction would queue for the lock the pipeline and the inbox need.
        with self._db.reads() as session:
            ids = list(
                session.execute(select(JobOutput.id).order_by(JobOutput.id).limit(self._batch_size)).scalars()
            )
        for output_id in ids:
            self._take(output_id)
        return len(ids)

    def drain(self) -> int:
        total = 0
        while taken := self.run_once():
            total += taken
        return total

    def _take(self, output_id: int) -> None:
        now = datetime.now(UTC)
        self._guard.forget()  # the patient's tokens grow as messages arrive
        # The checks first, in a read beside the writers (parsing, the leak screen, the
        # inputs' versions, the verifier, building and validating three resources: held
        # inside the write transaction, they kept the pipeline and the inbox waiting). The
        # verdict stands if the row is still the output it was reached on (same job, attempt
        # and body), which the write transaction checks under its lock before it stores or
        # fails anything.
        verdict = self._verdict(output_id, now=now)
        with self._db.transaction() as session:
            output = session.get(JobOutput, output_id, with_for_update=True)
            if output is None:
                return  # another relay took it
            job = session.get(Job, output.job_id, with_for_update=True)
            session.delete(output)
            if job is None or job.status != JobStatus.RUNNING:
                # Failed meanwhile (a leak verdict), requeued, or not a job at all.
                audit.append(
                    session,
                    actor=ACTOR,
                    action="summary.output-discarded",
                    entity=f"job/{output.job_id}",
                    outcome=audit.Outcome.FAILURE,
                    detail={"outcome": output.outcome, "job_status": job.status if job else None},
                    now=now,
                )
                return
            if output.outcome != JobOutputKind.SUMMARY:
                code = (output.code or "sandbox")[:64]
                _fail(session, job, code, output.reason or "the sandbox gave no reason", now=now)
                return
            if verdict is not None and verdict.made_for == (job.id, job.attempts, output.body):
                checked = verdict.checked
            else:  # another output under this id, or a newer attempt, meanwhile: check again
                checked = self._checked(session, job, output.body, now=now)
            if isinstance(checked, _Checked):
                # The patient's tokens again, as they are now: a message may have added some.
                self._guard.forget()
                try:
                    _no_leak(self._guard.kinds_of(session, job.patient, checked.tokens))
                except OutputRejected as exc:
                    checked = exc
            if isinstance(checked, OutputRejected):
                _fail(session, job, checked.code, str(checked)[:MAX_REASON_CHARS], now=now)
                return
            _store(session, job, checked, now=now)

    def _verdict(self, output_id: int, *, now: datetime) -> _Verdict | None:
        """The checks' outcome of a summary output of a running job, read without the write
        lock; None for anything else (``_take`` handles it)."""
        with self._db.reads() as session:
            output = session.get(JobOutput, output_id)
            job = session.get(Job, output.job_id) if output is not None else None
            if output is None or job is None or job.status != JobStatus.RUNNING:
                return None
            if output.outcome != JobOutputKind.SUMMARY:
                return None
            return _Verdict(
                (job.id, job.attempts, output.body), self._checked(session, job, output.body, now=now)
            )

    def _checked(
        self, session: Session, job: Job, raw: str | None, *, now: datetime
    ) -> _Checked | OutputRejected:
        try:
            return self._check(session, job, _parse(raw), now=now)
        except OutputRejected as exc:
            return exc

    def _check(self, session: Session, job: Job, body: SummaryOutput, *, now: datetime) -> _Checked:
        # First: a leak is filed as one, whatever else is wrong with the output.
        model = body.model
        texts = [s.text for s in body.sentences]
        fields = [model.name, model.version, model.served, model.response_id or ""]
        tokens = self._guard.payload_tokens([texts, body.prompt, fields])
        _no_leak(self._guard.kinds_of(session, job.patient, tokens))

        if body.kind != LEGACY_KINDS.get(job.kind, job.kind):
            raise OutputRejected("output-rejected", "the output is not of this job's summary kind")
        if body.kind not in SUMMARY_TYPES:
            raise OutputRejected(
                "output-rejected", f"unknown summary kind; known: {', '.join(SUMMARY_TYPES)}"
            )
        inputs = set(body.inputs)
        if len(inputs) != len(body.inputs):
            raise OutputRejected("output-rejected", "an input is listed twice")
        for i, sentence in enumerate(body.sentences, start=1):
            if not sentence.facts:
                raise OutputRejected("output-rejected", f"sentence {i} cites no fact")
            if not set(sentence.facts) <= inputs:
                raise OutputRejected(
                    "output-rejected", f"sentence {i} cites a reference that is not an input"
                )
        resources = _input_versions(session, job.patient, body.inputs)

        sentences = [s.model_dump() for s in body.sentences]
        try:
            report = verify_stored(sentences, resources, body.language)
        except Exception as exc:  # a verifier bug must fail the job, not store unverified text
            # The type only: its message may quote the sentence.
            log.error("the verifier failed", extra={"job_id": job.id, "error": type(exc).__name__})
            raise OutputRejected("verifier-error", f"the verifier failed: {type(exc).__name__}") from None
        if not report.ok:
            raise OutputRejected(
                str(report.code)[:64], "; ".join(str(f) for f in report.failures) or "the verifier refused"
            )

        labels = [DEID_SECURITY_LABEL]
        device = model_device(
            name=model.name,
            served=model.served,
            version=model.version,
            model_version=self._model_version,
            weights_digest=self._weights_digest,
            # The built-in summariser copies facts: it is AI by the IG's type, not an LLM.
            large_language_model=model.name != ExtractiveSummarizer.name,
            labels=labels,
        )
        prompt = prompt_document(
            job.patient, prompt_document_id(job.id, job.attempts), body.prompt, labels=labels, now=now
        )
        summary = summary_document(
            job.patient,
            body.kind,
            sentences,
            language=body.language,
            template=body.template,
            verifier=VERIFIER,
            author=f"Device/{device['id']}",
            labels=labels,
            now=now,
        )
        try:
            for resource in (device, prompt, summary):
                validate_resource(resource)
        except FhirValidationError as exc:
            raise OutputRejected("invalid-output", str(exc)) from exc
        return _Checked(body, device, prompt, summary, tokens)


def _no_leak(kinds: list[str]) -> None:
    if kinds:
        raise OutputRejected(
            "answer-leak",
            f"known identifier(s) of the patient in the sandbox's output; not stored: {', '.join(kinds)}",
        )


def _parse(raw: str | None) -> SummaryOutput:
    try:
        return SummaryOutput.model_validate_json(raw or "")
    except ValidationError as exc:
        # Element paths and error kinds only: the values may carry anything.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['type']}" for err in exc.errors()[:5]
        )
        raise OutputRejected(
            "output-rejected", f"the output does not follow the contract: {problems}"
        ) from None


def _chunks(items: Sequence[_T]) -> list[Sequence[_T]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _input_versions(session: Session, patient: str, inputs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every input a stored version of a clinical resource of this patient: each reference
    -> that version's resource, as the store's history keeps it (the verifier reads these,
    not what the sandbox says they were)."""
    parsed = [m.groups() for ref in inputs if (m := _REFERENCE.match(ref)) is not None]
    if any(rtype not in CLINICAL_TYPES for rtype, _, _ in parsed):
        raise OutputRejected(
            "output-rejected", "an input is not a clinical resource (summaries feed on none)"
        )
    keys = sorted({(rtype, rid) for rtype, rid, _ in parsed})
    owners: dict[tuple[str, str], str | None] = {}
    for heads in _chunks(keys):
        owners.update({(t, i): p for t, i, p in session.execute(_owners_select(heads))})
    if len(owners) != len(keys) or any(owner != patient for owner in owners.values()):
        raise OutputRejected("output-rejected", "an input is not a resource of the job's patient")
    versions = [(rtype, rid, int(v)) for rtype, rid, v in parsed]
    found: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(versions):
        query = _versions_select(chunk)
        found.update({f"{t}/{i}/_history/{v}": json.loads(b) for t, i, v, b in session.execute(query)})
    if len(found) != len(inputs):
        raise OutputRejected("output-rejected", "an input names a version that is not stored")
    return found


# Both selects are an OR of key equalities, not a row-value IN: SQLite scans the whole table
# for "(a, b) IN (VALUES ...)" (~0.1 s per 100,000 rows, for each summary, inside the write
# lock) and looks each term of an OR up in the primary key.


def _owners_select(heads: Sequence[tuple[str, str]]) -> Select[str, str, str | None]:
    return select(Resource.resource_type, Resource.resource_id, Resource.patient).where(
        or_(*(and_(Resource.resource_type == t, Resource.resource_id == i) for t, i in heads))
    )


def _versions_select(keys: Sequence[tuple[str, str, int]]) -> Select[str, str, int, str]:
    history = ResourceHistory
    return select(history.resource_type, history.resource_id, history.version, history.body).where(
        or_(
            *(
                and_(history.resource_type == t, history.resource_id == i, history.version == v)
                for t, i, v in keys
            )
        )
    )


def _store(session: Session, job: Job, checked: _Checked, *, now: datetime) -> None:
    body, origin = checked.body, f"job:{job.id}"
    device_ref = f"Device/{checked.device['id']}"
    put_resource(session, checked.device, patient=None, origin=origin, now=now)
    prompt = put_resource(session, checked.prompt, patient=job.patient, origin=origin, now=now)
    change = put_resource(session, checked.summary, patient=job.patient, origin=origin, now=now)
    target = f"{change.reference}/_history/{change.version}"
    prov = provenance(
        target,
        body.inputs,
        prompt=f"{prompt.reference}/_history/{prompt.version}",
        device=device_ref,
        template=body.template,
        verifier=VERIFIER,
        labels=[DEID_SECURITY_LABEL],
        now=now,
    )
    validate_resource(prov)  # built from checked values only: a failure is a bug, and rolls back
    stored_prov = put_resource(session, prov, patient=job.patient, origin=origin, now=now)
    stored = json.loads(
        session.execute(
            select(Resource.body).where(
                Resource.resource_type == "DocumentReference", Resource.resource_id == change.resource_id
            )
        ).scalar_one()
    )
    add_outbox(
        session,
        summary_event(body.kind, stored, job_id=job.id, patient=job.patient, time=now),
        summary_routing_key(body.kind),
        now=now,
    )
    job.status, job.result, job.updated_at = JobStatus.DONE, change.reference, now
    model = body.model
    # The response id and token usage are the model server's bookkeeping, not the
    # record's: kept in the hash-chained audit log, where an auditor can match them with
    # the server's logs, rather than in an extension no FHIR consumer knows.
    audit.append(
        session,
        actor=ACTOR,
        action="summary.completed",
        entity=f"job/{job.id}",
        detail={
            "document": change.reference,
            "version": change.version,
            "provenance": f"{stored_prov.reference}/_history/{stored_prov.version}",
            "prompt": f"{prompt.reference}/_history/{prompt.version}",
            "device": device_ref,
            "model": model.name,
            "served": model.served,
            "response_id": model.response_id,
            "usage": model.usage,
            "attempts": body.attempts,
            "sandbox_verifier": body.verifier,
            "sentences": len(body.sentences),
            "inputs": len(body.inputs),
        },
        now=now,
        patients=[job.patient],
    )


def _fail(session: Session, job: Job, code: str, reason: str, *, now: datetime) -> None:
    fail_job(session, job, code, reason, actor=ACTOR, now=now)
    log.warning("summary job failed", extra={"job_id": job.id, "code": code})
