"""FHIR Bulk Data Access (IG v2) exports: ``$export`` at system, Patient and Group level,
run asynchronously by the API process's exporter into NDJSON files under the data directory.

Every exported resource passes the leak guard like every API response: one that carries a
known identifier of its patient is withheld (a dead letter and an audit entry, as for a
read) and reported in the export's error file as an OperationOutcome naming it and the kinds
found, never the values. An export is as of its transaction time: resources updated later
are left to the next export (``_since``). Files expire after ``export_retention_s``; asking
for them needs the token of the client that started the export, and each download is
audited.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Select, select

import audit
from core.db import Database
from core.tables import ExportJob, Resource
from deid import Vault
from sidecar.api_screen import screen_rows

__all__ = ["CHUNK", "BulkExporter", "ExportRequest", "file_name_ok"]

CHUNK = 1000  # resources per read and screening transaction
_STATUSES_LIVE = ("accepted", "running")


@dataclass(frozen=True)
class ExportRequest:
    actor: str  # the audit actor of the client that asks
    level: str  # system, patient or group
    types: list[str]
    since: datetime | None
    request_url: str
    group_id: str | None = None
    members: tuple[str, ...] = ()  # a group's patients


def file_name_ok(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return (
        bool(dot) and ext == "ndjson" and stem.isalpha() and stem[:1].isupper()
    ) or name == "errors.ndjson"


class BulkExporter:
    """Kick-off, status, cancel and download for the API; ``run_round`` for its loop."""

    def __init__(self, db: Database, vault: Vault, directory: Path, *, retention_s: float) -> None:
        self._db, self._vault, self._dir = db, vault, directory
        self._retention = timedelta(seconds=retention_s)
        self._restart_interrupted()

    def _restart_interrupted(self) -> None:
        """Exports running when the process stopped start again from the beginning."""
        with self._db.transaction() as session:
            for job in session.execute(select(ExportJob).where(ExportJob.status == "running")).scalars():
                shutil.rmtree(self._dir / job.id, ignore_errors=True)
                job.status, job.progress = "accepted", ""

    def kick_off(self, request: ExportRequest) -> str:
        job_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        with self._db.transaction() as session:
            session.add(
                ExportJob(
                    id=job_id,
                    client=request.actor,
                    level=request.level,
                    group_id=request.group_id,
                    types=",".join(request.types),
                    since=request.since,
                    request_url=request.request_url,
                    status="accepted",
                    progress="",
                    created_at=now,
                    manifest=json.dumps({"members": list(request.members)}) if request.members else None,
                )
            )
            detail = {"level": request.level, "types": request.types, "since": bool(request.since)}
            audit.append(
                session, actor=request.actor, action="fhir.export", entity=f"$export/{job_id}", detail=detail
            )
        return job_id

    def job(self, job_id: str, actor: str) -> ExportJob | None:
        """The client's own export (others' are not found: their ids tell nothing)."""
        with self._db.reads() as session:
            job = session.get(ExportJob, job_id)
            if job is None or job.client != actor or job.status in ("cancelled", "expired"):
                return None
            session.expunge(job)
            return job

    def cancel(self, job_id: str, actor: str) -> bool:
        with self._db.transaction() as session:
            job = session.get(ExportJob, job_id)
            if job is None or job.client != actor or job.status in ("cancelled", "expired"):
                return False
            running = job.status == "running"
            job.status = "cancelled"
            audit.append(session, actor=actor, action="fhir.export.cancel", entity=f"$export/{job_id}")
        if not running:  # a running export removes its files when it sees the cancel
            shutil.rmtree(self._dir / job_id, ignore_errors=True)
        return True

    def download(self, job_id: str, name: str, actor: str) -> Path | None:
        """The file, audited; None when it is not this client's or no longer there."""
        job = self.job(job_id, actor)
        path = self._dir / job_id / name
        if job is None or job.status != "complete" or not file_name_ok(name) or not path.is_file():
            return None
        counts = {f["name"]: f["count"] for f in json.loads(job.manifest or "{}").get("files", [])}
        with self._db.transaction() as session:
            audit.append(
                session,
                actor=actor,
                action="fhir.export.download",
                entity=f"$export/{job_id}/{name}",
                detail={"resources": counts.get(name, 0)},
            )
        return path

    def run_round(self) -> int:
        """Expire old files, then run the oldest accepted export to its end."""
        self._expire()
        # Read first: a write transaction every round would take SQLite's write lock from
        # the pipeline even when there is nothing to export.
        with self._db.reads() as session:
            waiting = session.execute(
                select(ExportJob.id)
                .where(ExportJob.status == "accepted")
                .order_by(ExportJob.created_at)
                .limit(1)
            ).scalar_one_or_none()
        if waiting is None:
            return 0
        with self._db.transaction() as session:
            job = session.get(ExportJob, waiting)
            if job is None or job.status != "accepted":
                return 0
            job.status, job.transaction_time = "running", datetime.now(UTC)
            job_id = job.id
        try:
            self._run(job_id)
        except Exception as exc:  # the job records why; the loop goes on with the next
            with self._db.transaction() as session:
                failed = session.get(ExportJob, job_id)
                if failed is not None:
                    failed.status, failed.error = "failed", f"{type(exc).__name__}: export failed"
                    audit.append(
                        session,
                        actor=failed.client,
                        action="fhir.export.complete",
                        entity=f"$export/{job_id}",
                        outcome=audit.Outcome.FAILURE,
                        detail={"error_type": type(exc).__name__},
                    )
            shutil.rmtree(self._dir / job_id, ignore_errors=True)
        return 1

    def _query(
        self, job: ExportJob, rtype: str, after: str, members: list[str]
    ) -> Select[str, str, str | None, str]:
        query = select(Resource.resource_type, Resource.resource_id, Resource.patient, Resource.body).where(
            Resource.resource_type == rtype, Resource.resource_id > after
        )
        assert job.transaction_time is not None
        query = query.where(Resource.updated_at <= job.transaction_time)
        if job.since is not None:
            query = query.where(Resource.updated_at > job.since)
        if job.level == "patient":
            query = query.where(Resource.patient.is_not(None))
        elif job.level == "group":
            query = query.where(Resource.patient.in_(members))
        return query.order_by(Resource.resource_id).limit(CHUNK)

    def _run(self, job_id: str) -> None:
        folder = self._dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        with self._db.reads() as session:
            job = session.get(ExportJob, job_id)
            assert job is not None
            session.expunge(job)
        members = json.loads(job.manifest or "{}").get("members", [])
        files: list[dict[str, Any]] = []
        errors = 0
        exported: set[str] = set()  # the patients whose records the files hold: named in the audit
        with (folder / "errors.ndjson").open("wb") as error_file:
            for index, rtype in enumerate(t for t in job.types.split(",") if t):
                count, after = 0, ""
                with (folder / f"{rtype}.ndjson").open("wb") as out:
                    while True:
                        withheld: list[str] = []
                        with self._db.transaction() as session:
                            current = session.get(ExportJob, job_id)
                            if current is None or current.status != "running":  # cancelled
                                shutil.rmtree(folder, ignore_errors=True)
                                return
                            rows = session.execute(self._query(job, rtype, after, members)).all()
                            if not rows:
                                break
                            now = datetime.now(UTC)
                            passed = screen_rows(session, self._vault, job.client, rows, now, withheld)
                            exported.update(r.patient for r in rows if r.patient)
                            current.progress = (
                                f"{index} of {len(job.types.split(','))} types; {rtype}: {count}"
                            )
                        out.writelines(orjson.dumps(r) + b"\n" for r in passed)
                        error_file.writelines(orjson.dumps(_withheld_outcome(w)) + b"\n" for w in withheld)
                        count, errors, after = (
                            count + len(passed),
                            errors + len(withheld),
                            rows[-1].resource_id,
                        )
                if count:
                    files.append({"type": rtype, "name": f"{rtype}.ndjson", "count": count})
                else:
                    (folder / f"{rtype}.ndjson").unlink()
        if errors:
            files.append(
                {"type": "OperationOutcome", "name": "errors.ndjson", "count": errors, "error": True}
            )
        else:
            (folder / "errors.ndjson").unlink()
        with self._db.transaction() as session:
            done = session.get(ExportJob, job_id)
            if done is None or done.status != "running":
                shutil.rmtree(folder, ignore_errors=True)
                return
            done.status, done.progress = "complete", "done"
            done.expires_at = datetime.now(UTC) + self._retention
            done.manifest = json.dumps({"files": files})
            audit.append(
                session,
                actor=done.client,
                action="fhir.export.complete",
                entity=f"$export/{job_id}",
                outcome=audit.Outcome.FAILURE if errors else audit.Outcome.SUCCESS,
                detail={
                    "resources": {f["type"]: f["count"] for f in files if not f.get("error")},
                    "withheld": errors,
                    # What was disclosed, checkable later against a copy of the files.
                    "sha256": {f["name"]: _sha256(folder / f["name"]) for f in files},
                },
                patients=exported,
            )

    def _expire(self) -> None:
        now = datetime.now(UTC)
        with self._db.reads() as session:
            due = session.execute(
                select(ExportJob.id)
                .where(ExportJob.status == "complete", ExportJob.expires_at < now)
                .limit(1)
            ).first()
        if due is None:
            return
        with self._db.transaction() as session:
            old = session.execute(
                select(ExportJob).where(ExportJob.status == "complete", ExportJob.expires_at < now)
            ).scalars()
            for job in old:
                shutil.rmtree(self._dir / job.id, ignore_errors=True)
                job.status = "expired"
                audit.append(
                    session, actor="sidecar", action="fhir.export.expired", entity=f"$export/{job.id}"
                )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _withheld_outcome(withheld: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "security",
                "diagnostics": f"{withheld} withheld: it carries identifier(s) of its patient (quarantined)",
            }
        ],
    }


def manifest(job: ExportJob, files_url: str) -> dict[str, Any]:
    """The completion manifest (Bulk Data IG): file URLs under ``files_url``."""
    files = json.loads(job.manifest or "{}").get("files", [])
    assert job.transaction_time is not None

    def entry(f: dict[str, Any]) -> dict[str, Any]:
        return {"type": f["type"], "url": f"{files_url}/{job.id}/{f['name']}", "count": f["count"]}

    return {
        "transactionTime": job.transaction_time.replace(
            tzinfo=job.transaction_time.tzinfo or UTC
        ).isoformat(),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [entry(f) for f in files if not f.get("error")],
        "error": [entry(f) for f in files if f.get("error")],
    }
