"""The group committer on a real SQLite inbox: at stop, what was handed over is committed and
what was only gathered fails at once (never left waiting, never ACKed); committing on the
loop (for the intake journal), frames of one loop turn share one commit and a failed
commit fails each of them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select

from connectors.base import InboundMessage, Receipt, Rejected
from connectors.commit import GroupCommitter
from connectors.inbox import DatabaseInbox
from core.db import Database
from core.tables import InboxEntry
from tests.fixtures.messages import ORU_R01, inbound, with_control_id


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
        assert receipt.inbox_id is not None and receipt.inbox_id > 0 and not receipt.duplicate
        with pytest.raises(RuntimeError, match="stopped"):
            await asyncio.wait_for(gathered, 5)

    asyncio.run(scenario())
    inbox.close()
    with db.sessions() as s:
        assert s.execute(select(func.count()).select_from(InboxEntry)).scalar_one() == 1


class _DiskFull:
    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        raise OSError("disk full")

    def quarantine(self, item: Rejected) -> int:
        raise OSError("disk full")


def test_inline_a_small_burst_is_committed_on_the_loop_and_a_failure_fails_each(db: Database) -> None:
    inbox = DatabaseInbox(db)

    async def scenario() -> None:
        committer = GroupCommitter(inbox, inline=True)
        committer.start()
        turn = [committer.submit(inbound(with_control_id(ORU_R01, f"L-{i}").encode())) for i in range(3)]
        await asyncio.sleep(0)  # the loop turns: the burst is committed right there
        assert all(f.done() for f in turn)
        receipts = [f.result() for f in turn]
        assert len({r.inbox_id for r in receipts}) == 3 and committer.batches == 1
        committer.stop()
        failing = GroupCommitter(_DiskFull(), inline=True)
        failing.start()
        doomed = [failing.submit(inbound(with_control_id(ORU_R01, f"F-{i}").encode())) for i in range(2)]
        for future in doomed:
            with pytest.raises(OSError, match="disk full"):
                await asyncio.wait_for(future, 5)
        failing.stop()

    asyncio.run(scenario())
    inbox.close()
    with db.sessions() as s:
        assert s.execute(select(func.count()).select_from(InboxEntry)).scalar_one() == 3


class _Gated:
    """Records the control ids of each commit; holds commits while the gate is shut."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.commits: list[list[str]] = []

    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        assert self.gate.wait(10)
        self.commits.append([m.header.control_id for m in messages])
        return [Receipt(len(self.commits), False) for _ in messages]

    def quarantine(self, item: Rejected) -> int:
        return 0


def test_inline_waits_for_the_thread_so_commits_keep_arrival_order() -> None:
    """A burst too large to commit inline goes to the thread; a small one arriving while
    that commit runs must not overtake it, so it goes to the thread too."""
    sink = _Gated()

    async def scenario() -> None:
        committer = GroupCommitter(sink, inline=True)
        committer.start()
        big = [committer.submit(inbound(with_control_id(ORU_R01, f"B-{i}").encode())) for i in range(6)]
        await asyncio.sleep(0)  # handed to the thread, which waits at the gate
        small = committer.submit(inbound(with_control_id(ORU_R01, "S-0").encode()))
        await asyncio.sleep(0)
        assert not small.done()
        sink.gate.set()
        await asyncio.wait_for(asyncio.gather(*big, small), 5)
        alone = committer.submit(inbound(with_control_id(ORU_R01, "A-0").encode()))
        await asyncio.sleep(0)  # the thread is idle again: this one is committed inline
        assert alone.done()
        committer.stop()

    asyncio.run(scenario())
    flat = [c for commit in sink.commits for c in commit]
    assert flat == [f"B-{i}" for i in range(6)] + ["S-0", "A-0"]
