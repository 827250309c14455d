"""Operating the pipeline: dead letters retried after a fix, replay after a mapping change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from connectors.inbox import DatabaseInbox
from core.errors import MappingError
from core.settings import Settings
from core.tables import DeadLetter, InboxEntry, OutboxEvent
from mapping import MappedMessage, MappingOptions, map_message
from sidecar.stats import collect
from tests.fixtures.messages import ORU_R01, inbound, with_control_id
from worker.batch import process
from worker.context import build_context
from worker.replay import ReplayFilter, replay

REPO = Path(__file__).resolve().parents[1]
real_map_message = map_message


def retry_from_cli(letter_id: int, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "dead-letters",
            "retry",
            str(letter_id),
            "--data-dir",
            str(data_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_a_dead_letter_is_processed_by_retry_after_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str, options: MappingOptions) -> MappedMessage:
        raise MappingError("OBX-5 cannot be read as NM")  # the bug being fixed

    # The pipeline (in this process, where the bug can be planted) dead-letters the message.
    monkeypatch.setattr("worker.pipeline.map_message", broken)
    ctx = build_context(Settings(data_dir=tmp_path / "data"))
    inbox = DatabaseInbox(ctx.db)
    (receipt,) = inbox.commit_many([inbound(ORU_R01.encode())])
    assert process(ctx, receipt.inbox_id).outcome == "dead-lettered"
    with ctx.db.sessions() as s:
        letter = s.execute(select(DeadLetter)).scalar_one()
    assert (letter.stage, letter.code, letter.reason) == ("map", "mapping", "OBX-5 cannot be read as NM")
    inbox.close()
    ctx.db.dispose()
    monkeypatch.undo()

    # The fix is deployed (the real mapping), and an operator retries from the command line.
    result = retry_from_cli(letter.id, tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert "processed" in result.stdout
    db = build_context(Settings(data_dir=tmp_path / "data")).db
    stats = collect(db)
    assert stats["inbox"]["processed"] == 1 and stats["dead_letters"] == 0
    assert stats["resources"]["Observation"] == 3
    again = retry_from_cli(letter.id, tmp_path / "data")
    assert again.returncode == 2 and "already retried" in again.stderr
    db.dispose()


def _archive(tmp_path: Path, count: int) -> Any:
    """`count` ORU messages stored and processed, as a running sidecar would have."""
    ctx = build_context(Settings(data_dir=tmp_path / "data"))
    inbox = DatabaseInbox(ctx.db)
    raws = []
    for i in range(count):
        # 50 patients, each with their own MRN; potassium varies with i.
        text = with_control_id(ORU_R01, f"ARCH{i:05d}")
        text = text.replace("MRN7734021", f"MRN{1000 + i % 50}").replace("|6.1|", f"|{3 + i % 40 / 10}|")
        text = text.replace("ACC2026-88", f"ACC{i:05d}")
        raws.append(text.encode())
    messages = [inbound(r) for r in raws]
    for start in range(0, count, 500):
        inbox.commit_many(messages[start : start + 500])
    with ctx.db.sessions() as s:
        ids = list(s.execute(select(InboxEntry.id).order_by(InboxEntry.id)).scalars())
    for inbox_id in ids:
        assert process(ctx, inbox_id).outcome == "processed"
    inbox.close()
    return ctx


def test_replay_after_a_mapping_change_publishes_updates_only_for_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _archive(tmp_path, 1000)
    with ctx.db.sessions() as s:
        events_before = s.execute(select(func.count()).select_from(OutboxEvent)).scalar_one()

    def potassium_in_meq(text: str, options: MappingOptions) -> MappedMessage:
        # The "mapping change": potassium now reported in mEq/L (same magnitude).
        mapped = real_map_message(text, options)
        for r in mapped.resources:
            if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "2823-3":
                r["valueQuantity"] = {**r["valueQuantity"], "unit": "mEq/L", "code": "meq/L"}
        return mapped

    monkeypatch.setattr("worker.pipeline.map_message", potassium_in_meq)
    dry = replay(ctx, ReplayFilter(message_type="ORU"), dry_run=True)
    with ctx.db.sessions() as s:
        assert s.execute(select(func.count()).select_from(OutboxEvent)).scalar_one() == events_before
    report = replay(ctx, ReplayFilter(message_type="ORU"))

    assert report.messages == dry.messages == 1000
    # One potassium Observation per message; nothing else changed.
    assert dict(report.changes) == dict(dry.changes) == {"Observation.updated": 1000}
    with ctx.db.sessions() as s:
        new = s.execute(select(OutboxEvent).where(OutboxEvent.id > events_before)).scalars().all()
    assert len(new) == 1000
    assert {e.routing_key for e in new} == {"fhir.Observation.updated"}
    assert {json.loads(e.body)["data"]["valueQuantity"]["unit"] for e in new} == {"mEq/L"}
    # Replaying again changes nothing at all.
    assert replay(ctx, ReplayFilter(message_type="ORU")).changed_resources == 0
    ctx.db.dispose()
