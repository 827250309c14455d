"""Signed checkpoints made as the log grows: every ``every`` entries, or every ``interval_s``
seconds when it grew less, stored in ``audit_checkpoints`` (and so carried, with consistency
proofs, in export bundles). The tree's right edge is kept in memory (``Frontier``), so a round
reads only the entries appended since the last one."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, select

from audit.checkpoint import ORIGIN, Checkpoint, sign
from audit.log import leaves_after
from audit.merkle import Frontier
from core.model_tables import AuditCheckpoint

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(
        self,
        engine: Engine,
        key: Ed25519PrivateKey,
        *,
        every: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._key, self._every, self._interval, self._clock = (
            engine,
            key,
            every,
            interval_s,
            clock,
        )
        self._frontier = Frontier()
        self._last_size: int | None = None
        self._last_at = clock()

    def run_once(self) -> int:
        """A round for ``sidecar.loops.Loop``: catch the tree up, sign when due. Returns 0
        (nothing waits for an immediate second round)."""
        if self._last_size is None:
            with self._engine.connect() as connection:
                self._last_size = int(
                    connection.execute(select(func.coalesce(func.max(AuditCheckpoint.size), 0))).scalar_one()
                )
        for data in leaves_after(self._engine, self._frontier.size):
            self._frontier.append(data)
        grown = self._frontier.size - self._last_size
        due = grown >= self._every or (grown > 0 and self._clock() - self._last_at >= self._interval)
        if due:
            self.sign_now()
        return 0

    def sign_now(self) -> str:
        """Sign and store a checkpoint of the log as far as the tree has been caught up."""
        note = sign(Checkpoint(ORIGIN, self._frontier.size, self._frontier.root), self._key)
        with self._engine.begin() as connection:
            stored = connection.execute(
                select(AuditCheckpoint.size).where(AuditCheckpoint.size == self._frontier.size)
            ).first()
            if stored is None:
                connection.execute(
                    AuditCheckpoint.__table__.insert(),  # type: ignore[attr-defined]
                    {"size": self._frontier.size, "at": datetime.now(UTC), "note": note},
                )
        self._last_size, self._last_at = self._frontier.size, self._clock()
        return note
