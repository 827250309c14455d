"""`sidecar demo`: the whole chain on embedded defaults, over a real MLLP socket."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

import audit
from connectors import MllpClient
from connectors.hl7 import ack_code
from core.datadir import secure_data_dir
from core.logs import configure_logging
from core.settings import Settings
from core.tables import Resource
from sidecar import hospital
from sidecar.app import SidecarApp
from sidecar.stats import collect
from worker.publishers import LocalBus, OutgoingEvent

IMAGED = 5  # patients who also get a CT from the synthetic PACS


@dataclass
class DemoReport:
    data_dir: Path
    sent: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None  # the sentence -> fact map of one stored summary
    summary_document: str | None = None
    summary_provenance: dict[str, Any] | None = None
    summary_device: str | None = None
    audit_ok: bool = False
    audit_entries: int = 0
    dicom_status: dict[str, int] = field(default_factory=dict)
    studies_linked: int = 0  # ImagingStudy on a Patient that the HL7 feed created
    deid_dicom_files: int = 0


def run_demo(data_dir: Path | None, patients: int, console: Console) -> DemoReport:
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    settings = Settings(
        data_dir=data_dir,
        mllp_port=0,
        dicom_port=0,
        summary_coalesce_s=0.3,
        relay_interval_s=0.1,
        log_file=data_dir / "sidecar.log",  # the console is for what a person should read
    )
    # The demo's patients are synthetic, but its directory is kept as a real one is.
    secure_data_dir(data_dir, secrets=[settings.effective_secret_file])
    configure_logging("INFO", file=settings.log_file)
    report = DemoReport(data_dir=data_dir)
    bus = LocalBus()
    lock = threading.Lock()

    def count_event(event: OutgoingEvent) -> None:
        with lock:
            report.events[event.routing_key] = report.events.get(event.routing_key, 0) + 1

    bus.subscribe(count_event)
    people = hospital.make_patients(patients)
    messages = hospital.feed(people)
    images = hospital.imaging(people, min(IMAGED, patients))
    console.print(
        f"[bold]Synthetic hospital[/]: {patients} patients, {len(messages)} HL7 v2 messages (ADT, ORU), "
        f"{len(images)} CT images from its PACS"
    )
    console.print(f"Data directory: {data_dir} (logs: {settings.log_file})")

    async def main() -> None:
        app = SidecarApp(settings, bus=bus)
        await app.start()
        try:
            await asyncio.to_thread(_send_all, app.port, messages, report, console)
            assert app.dicom is not None
            await asyncio.to_thread(_store_images, app.dicom.port, settings.dicom_ae_title, images, report)
            with console.status("Pipeline: mapping, de-identifying, publishing, summarising..."):
                await asyncio.to_thread(app.wait_idle, 120.0)
        finally:
            await app.stop()

    asyncio.run(main())

    from core.db import Database  # the app closed its engine; open a fresh one to read results

    db = Database(settings)
    report.stats = collect(db)
    with db.sessions() as s:
        documents = [json.loads(b) for b in _bodies(s, "DocumentReference")]
        provenances = [json.loads(b) for b in _bodies(s, "Provenance")]
        studies = [json.loads(b) for b in _bodies(s, "ImagingStudy")]
        patients_from_hl7 = {
            json.loads(b)["id"] for b in _bodies(s, "Patient") if "name" in b or "gender" in b
        }
    _pick_summary(report, documents, provenances)
    report.studies_linked = sum(
        1 for st in studies if st["subject"]["reference"].removeprefix("Patient/") in patients_from_hl7
    )
    report.deid_dicom_files = sum(1 for _ in settings.effective_deid_dicom_dir.rglob("*.dcm"))
    chain = audit.verify(db.engine)
    report.audit_ok, report.audit_entries = chain.ok, chain.entries
    db.dispose()
    _print(report, console)
    return report


def _pick_summary(
    report: DemoReport, documents: list[dict[str, Any]], provenances: list[dict[str, Any]]
) -> None:
    """The AI-labelled summary with the most sentences, its sentence map and its Provenance."""
    labelled = [
        d
        for d in documents
        if any(c.get("code") == "AIAST" for c in d.get("meta", {}).get("security", []))
        and len(d["content"]) > 1
    ]
    if not labelled:
        return
    maps = [(d, json.loads(base64.b64decode(d["content"][1]["attachment"]["data"]))) for d in labelled]
    document, sentence_map = max(maps, key=lambda pair: len(pair[1]["sentences"]))
    target = f"DocumentReference/{document['id']}/_history/{document['meta']['versionId']}"
    report.summary = sentence_map
    report.summary_document = target
    report.summary_device = (document.get("author") or [{}])[0].get("reference")
    report.summary_provenance = next(
        (p for p in provenances if any(t.get("reference") == target for t in p.get("target", []))), None
    )


def _bodies(session: Any, resource_type: str) -> list[str]:
    return list(
        session.execute(select(Resource.body).where(Resource.resource_type == resource_type)).scalars()
    )


def _send_all(port: int, messages: list[bytes], report: DemoReport, console: Console) -> None:
    columns = (TextColumn("Sending over MLLP"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        Progress(*columns, console=console) as progress,
        MllpClient().connect("127.0.0.1", port, timeout=30) as client,
    ):
        task = progress.add_task("send", total=len(messages))
        for message in messages:
            ack = client.send(message)
            code = ack_code(ack) or "none"
            report.acks[code] = report.acks.get(code, 0) + 1
            report.sent += 1
            progress.advance(task)


def _store_images(port: int, ae_title: str, images: list[Dataset], report: DemoReport) -> None:
    """The PACS side: one association, a C-STORE per image, as a modality would send."""
    ae = AE(ae_title="DEMO-PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        report.dicom_status["association refused"] = 1
        return
    try:
        for ds in images:
            status = assoc.send_c_store(ds)
            code = f"0x{int(status.Status):04X}" if status else "no response"
            report.dicom_status[code] = report.dicom_status.get(code, 0) + 1
    finally:
        assoc.release()


def _print(report: DemoReport, console: Console) -> None:
    stats = report.stats
    acks = ", ".join(f"{code} {n}" for code, n in sorted(report.acks.items()))
    console.print(f"\nSent {report.sent} messages; ACKs: {acks}")
    inbox = stats["inbox"]
    console.print(
        f"Inbox: {inbox['received']} received, {inbox['processed']} processed, "
        f"{inbox['failed']} failed, {inbox['pending']} pending"
    )
    table = Table(title="De-identified FHIR resources")
    table.add_column("Resource type")
    table.add_column("Count", justify="right")
    for rtype, n in stats["resources"].items():
        table.add_row(rtype, str(n))
    console.print(table)
    events = Table(title="Events published (CloudEvents, exchange sidecar.events)")
    events.add_column("Routing key")
    events.add_column("Count", justify="right")
    for key, n in sorted(report.events.items()):
        events.add_row(key, str(n))
    console.print(events)
    stored = ", ".join(f"{code} {n}" for code, n in sorted(report.dicom_status.items()))
    console.print(
        f"PACS: {sum(report.dicom_status.values())} C-STOREs ({stored}); "
        f"{report.studies_linked} ImagingStudy on the same pseudonymous Patient as that patient's HL7 feed; "
        f"{report.deid_dicom_files} de-identified .dcm files"
    )
    console.print(f"Summary jobs: {stats['jobs']}")
    if report.summary:
        _print_summary(report, console)
    if report.audit_ok:
        console.print(f"[green]audit chain verified[/] ({report.audit_entries} entries)")
    else:
        console.print("[red]audit chain BROKEN[/]")


def _print_summary(report: DemoReport, console: Console) -> None:
    """Each sentence with the record versions it cites (what the verifier checked it against)."""
    assert report.summary is not None
    lines = []
    for number, sentence in enumerate(report.summary["sentences"], start=1):
        lines.append(f"[bold]{number}.[/] {escape(sentence['text'])}")
        lines.extend(f"    [dim]cites {ref}[/]" for ref in sentence["facts"])
    title = (
        f"One summary ({report.summary.get('template')}), written in the model zone from de-identified "
        f"facts; every sentence verified against what it cites"
    )
    console.print(Panel("\n".join(lines), title=title))
    provenance = report.summary_provenance
    if provenance:
        entities = provenance.get("entity", [])
        console.print(
            f"{report.summary_document}: labelled AIAST, docStatus preliminary, "
            f"written by {report.summary_device}. "
            f"Its Provenance/{provenance['id']} names {len(entities)} inputs (every record version shown to "
            f"the model, and the prompt). Read them at GET /fhir/Provenance?target={report.summary_document}"
        )
