"""The intake journal read from outside the listener's process (``sidecar stats``, tests):
standard library only, so a status query loads nothing else of the intake."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

__all__ = ["journal_id_of", "pending_in_journal"]


def pending_in_journal(path: Path, moved_seq: int) -> int:
    """Messages acknowledged and journaled but not yet in the inbox, read from outside the
    listener's process (``sidecar stats``); 0 when there is no journal file."""
    if not path.exists():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        row = connection.execute("SELECT COUNT(*) FROM messages WHERE seq > ?", (moved_seq,)).fetchone()
    return int(row[0])


def journal_id_of(path: Path) -> str | None:
    if not path.exists():
        return None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        row = connection.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
    return None if row is None else str(row[0])
