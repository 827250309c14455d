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

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

import audit
from connectors import MllpClient
from core.settings import Settings
from core.tables import Resource
from sidecar import hospital
from sidecar.app import SidecarApp
from sidecar.stats import collect
from worker.publishers import LocalBus, OutgoingEvent


@dataclass
class DemoReport:
    data_dir: Path
    sent: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    summary: str | None = None
    audit_ok: bool = False
    audit_entries: int = 0


def run_demo(data_dir: Path | None, patients: int, console: Console) -> DemoReport:
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    settings = Settings(data_dir=data_dir, mllp_port=0, summary_coalesce_s=0.3, relay_interval_s=0.1)
    report = DemoReport(data_dir=data_dir)
    bus = LocalBus()
    lock = threading.Lock()

    def count_event(event: OutgoingEvent) -> None:
        with lock:
            report.events[event.routing_key] = report.events.get(event.routing_key, 0) + 1

    bus.subscribe(count_event)
    messages = hospital.feed(hospital.make_patients(patients))
    console.print(
        f"[bold]Synthetic hospital[/]: {patients} patients, {len(messages)} HL7 v2 messages (ADT, ORU)"
    )
    console.print(f"Data directory: {data_dir}")

    async def main() -> None:
        app = SidecarApp(settings, bus=bus)
        await app.start()
        try:
            await asyncio.to_thread(_send_all, app.port, messages, report, console)
            with console.status("Pipeline: mapping, de-identifying, publishing, summarising..."):
                await asyncio.to_thread(app.wait_idle, 120.0)
        finally:
            await app.stop()

    asyncio.run(main())

    from core.db import Database  # the app closed its engine; open a fresh one to read results

    db = Database(settings)
    report.stats = collect(db)
    with db.sessions() as s:
        body = s.execute(
            select(Resource.body).where(Resource.resource_type == "DocumentReference").limit(1)
        ).scalar_one_or_none()
    if body:
        doc = json.loads(body)
        report.summary = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
    chain = audit.verify(db.engine)
    report.audit_ok, report.audit_entries = chain.ok, chain.entries
    db.dispose()
    _print(report, console)
    return report


def _send_all(port: int, messages: list[bytes], report: DemoReport, console: Console) -> None:
    columns = (TextColumn("Sending over MLLP"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        Progress(*columns, console=console) as progress,
        MllpClient().connect("127.0.0.1", port, timeout=30) as client,
    ):
        task = progress.add_task("send", total=len(messages))
        for message in messages:
            ack = client.send(message)
            code = _ack_code(ack)
            report.acks[code] = report.acks.get(code, 0) + 1
            report.sent += 1
            progress.advance(task)


def _ack_code(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment.split(segment[3:4])[1].decode("ascii", "replace")
    return "none"


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
    console.print(f"Summary jobs: {stats['jobs']}")
    if report.summary:
        console.print(
            Panel(report.summary, title="One summary, written in the sandbox from de-identified data")
        )
    if report.audit_ok:
        console.print(f"[green]audit chain verified[/] ({report.audit_entries} entries)")
    else:
        console.print("[red]audit chain BROKEN[/]")
