from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from core.db import Database
from core.events import ChangeKind, resource_event
from core.settings import Settings
from core.store import canonical_json, event_json, put_resource, with_meta
from core.tables import OutboxEvent, ResourceHistory

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _db(tmp_path: Path) -> Database:
    db = Database(Settings(data_dir=tmp_path))
    db.migrate()
    return db


def test_same_content_is_a_no_op_and_new_content_a_new_version(tmp_path: Path) -> None:
    db = _db(tmp_path)
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "K"}}
    with db.transaction() as s:
        first = put_resource(s, obs, patient="p1", origin="inbox:1", now=NOW)
        again = put_resource(s, dict(obs), patient="p1", origin="inbox:2", now=NOW)
        changed = put_resource(s, {**obs, "status": "amended"}, patient="p1", origin="inbox:3", now=NOW)
    assert (first.change, first.version) == (ChangeKind.CREATED, 1)
    assert (again.change, again.version) == (None, 1)
    assert (changed.change, changed.version) == (ChangeKind.UPDATED, 2)
    with db.sessions() as s:
        assert s.execute(select(func.count()).select_from(ResourceHistory)).scalar_one() == 2
        events = s.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars().all()
        assert [e.routing_key for e in events] == ["fhir.Observation.created", "fhir.Observation.updated"]
        bodies = [json.loads(e.body) for e in events]
        assert [b["id"] for b in bodies] == ["Observation/o1/_history/1", "Observation/o1/_history/2"]
        assert bodies[1]["data"]["meta"]["versionId"] == "2"
        assert bodies[0]["subject"] == "Patient/p1"
    db.dispose()


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=8,
    ),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_spliced_json_is_byte_for_byte_canonical_json(resource: dict[str, Any], meta: dict[str, str]) -> None:
    resource = {k: v for k, v in resource.items() if k != "meta"} | {"resourceType": "Observation", "id": "x"}
    content = canonical_json(resource)
    body = with_meta(content, resource, meta)
    assert body == canonical_json({**resource, "meta": meta})
    event = resource_event(
        {**resource, "meta": {"versionId": "1"}}, ChangeKind.CREATED, patient="p", time=NOW
    )
    assert event_json(event, canonical_json(event["data"])) == canonical_json(event)
