"""The identified zone takes in what the model zone handed back (``job_outputs``).

The sandbox may only insert its output; this side, in `sidecar serve`'s relay loop, checks
each row again before anything of it is stored or published: the job is running, the
document is the job's own (its id, its patient), its inputs are that patient's resources,
and no known identifier of the patient is in it (``LeakGuard``, on the decoded text too).
Then it stores the DocumentReference, its Provenance and the summary event, and marks the
job done; or fails the job with a dead letter (the sandbox's reason, or why the output was
rejected). Either way the row is deleted, in the same transaction, and audited.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.events import summary_event, summary_routing_key
from core.fhir import FhirValidationError, validate_resource
from core.store import add_outbox, put_resource
from core.tables import Job, JobOutput, JobOutputKind, JobStatus, Resource
from sandbox.documents import provenance, summary_document_id
from worker.deadletters import fail_job
from worker.leakguard import LeakGuard

__all__ = ["OutputIntake"]

log = logging.getLogger("sidecar.outputs")

ACTOR = "sidecar:outputs"
_REFERENCE = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/([0-9]+)$")


class OutputRejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class OutputIntake:
    def __init__(self, db: Database, guard: LeakGuard, *, batch_size: int = 50) -> None:
        self._db = db
        self._guard = guard
        self._batch_size = batch_size

    def run_once(self) -> int:
        """Take in one batch; returns how many outputs were handled (0: none waiting)."""
        with self._db.sessions() as session:
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
            try:
                body = _parse(output.body)
                self._check(session, job, body)
            except OutputRejected as exc:
                _fail(session, job, exc.code, str(exc), now=now)
                return
            _store(session, job, body, now=now)

    def _check(self, session: Session, job: Job, body: dict[str, Any]) -> None:
        document = body["document"]
        if document.get("resourceType") != "DocumentReference":
            raise OutputRejected("output-rejected", "the output is not a DocumentReference")
        if document.get("id") != summary_document_id(job.patient, job.kind):
            raise OutputRejected("output-rejected", "the document is not this job's summary")
        if document.get("subject") != {"reference": f"Patient/{job.patient}"}:
            raise OutputRejected("output-rejected", "the document's subject is not the job's patient")
        if "meta" in document:
            raise OutputRejected("output-rejected", "the document carries meta (versions are ours)")
        try:
            validate_resource(document)
        except FhirValidationError as exc:
            raise OutputRejected("invalid-output", str(exc)) from exc
        _check_inputs(session, job.patient, body["inputs"])
        texts = [_text(a) for a in document.get("content", [])]
        kinds = self._guard.kinds_in(session, job.patient, [document, texts, body["model"]])
        if kinds:
            raise OutputRejected(
                "answer-leak",
                f"known identifier(s) of the patient in the sandbox's output; not stored: {', '.join(kinds)}",
            )


def _parse(raw: str | None) -> dict[str, Any]:
    try:
        body = json.loads(raw or "")
    except ValueError as exc:
        raise OutputRejected("output-rejected", "the output is not JSON") from exc
    if not (
        isinstance(body, dict)
        and isinstance(body.get("document"), dict)
        and isinstance(body.get("inputs"), list)
        and all(isinstance(i, str) for i in body["inputs"])
        and isinstance(body.get("model"), str)
        and isinstance(body.get("prompt_version"), str)
    ):
        raise OutputRejected("output-rejected", "the output lacks document, inputs, model or prompt version")
    body["model"], body["prompt_version"] = body["model"][:200], body["prompt_version"][:200]
    return body


def _check_inputs(session: Session, patient: str, inputs: list[str]) -> None:
    """Every input a version of a resource of this patient (the Provenance names them)."""
    keys: set[tuple[str, str]] = set()
    for ref in inputs:
        match = _REFERENCE.match(ref)
        if match is None:
            raise OutputRejected("output-rejected", "an input is not a versioned resource reference")
        keys.add((match.group(1), match.group(2)))
    if not keys:
        return
    owners = session.execute(
        select(Resource.resource_type, Resource.resource_id, Resource.patient).where(
            tuple_(Resource.resource_type, Resource.resource_id).in_(sorted(keys))
        )
    ).all()
    if len(owners) != len(keys) or any(owner != patient for _, _, owner in owners):
        raise OutputRejected("output-rejected", "an input is not a resource of the job's patient")


def _text(content: Any) -> str:
    """The attachment's text: the leak check must read it decoded, not as base64."""
    data = content.get("attachment", {}).get("data") if isinstance(content, dict) else None
    if not isinstance(data, str):
        return ""
    try:
        return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError) as exc:
        raise OutputRejected("output-rejected", "the attachment is not base64") from exc


def _store(session: Session, job: Job, body: dict[str, Any], *, now: datetime) -> None:
    document = body["document"]
    change = put_resource(session, document, patient=job.patient, origin=f"job:{job.id}", now=now)
    stored = json.loads(
        session.execute(
            select(Resource.body).where(
                Resource.resource_type == "DocumentReference", Resource.resource_id == document["id"]
            )
        ).scalar_one()
    )
    prov = provenance(
        stored, body["inputs"], model=body["model"], prompt_version=body["prompt_version"], now=now
    )
    validate_resource(prov)
    put_resource(session, prov, patient=job.patient, origin=f"job:{job.id}", now=now)
    add_outbox(
        session,
        summary_event(job.kind, stored, job_id=job.id, patient=job.patient, time=now),
        summary_routing_key(job.kind),
        now=now,
    )
    job.status, job.result, job.updated_at = JobStatus.DONE, change.reference, now
    audit.append(
        session,
        actor=ACTOR,
        action="summary.completed",
        entity=f"job/{job.id}",
        detail={"document": change.reference, "version": change.version, "model": body["model"]},
        now=now,
    )


def _fail(session: Session, job: Job, code: str, reason: str, *, now: datetime) -> None:
    fail_job(session, job, code, reason, actor=ACTOR, now=now)
    log.warning("summary job failed", extra={"job_id": job.id, "code": code})
