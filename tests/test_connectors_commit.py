"""The group committer's stop: what was handed over is committed, what was only gathered
fails at once (never left waiting, never ACKed), on a real SQLite inbox."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from connectors.commit import GroupCommitter
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.settings import Settings
from core.tables import InboxEntry
from tests.fixtures.messages import ORU_R01, inbound, with_control_id


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(Settings(data_dir=tmp_path / "data"))
    database.migrate()
    yield database
    database.dispose()


def test_frames_gathered_when_it_stops_fail_instead_of_waiting(db: Database) -> None:
    inbox = DatabaseInbox(db)

    async def scenario() -> None:
        committer = GroupCommitter(inbox)
        committer.start()
        handed_over = committer.submit(inbound(with_control_id(ORU_R01, "STOP-1").encode()))
        await asyncio.sleep(0)  # the loop turns: this one reaches the writer
        gathered = committer.submit(inbound(with_control_id(ORU_R01, "STOP-2").encode()))
        committer.stop()  # before the loop turns again
        receipt = await asyncio.wait_for(handed_over, 5)
        assert receipt.inbox_id > 0 and not receipt.duplicate
        with pytest.raises(RuntimeError, match="stopped"):
            await asyncio.wait_for(gathered, 5)

    asyncio.run(scenario())
    inbox.close()
    with db.sessions() as s:
        assert s.execute(select(func.count()).select_from(InboxEntry)).scalar_one() == 1
