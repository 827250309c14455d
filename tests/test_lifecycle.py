"""One start/stop protocol for what `sidecar serve` runs (issue 22): parts start in their
listed order and stop in the reverse one, a failed start stops what had started, a failing
stop does not keep the others running; and `serve`'s own list puts the listeners last and
the parts that must outlive the pipeline (audit loops, relay) before it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.settings import Settings
from sidecar.app import SidecarApp
from sidecar.lifecycle import Part, Parts


def _recording(log: list[str], name: str, *, fail_start: bool = False, fail_stop: bool = False) -> Part:
    def start() -> None:
        if fail_start:
            raise RuntimeError(f"{name} cannot start")
        log.append(f"start {name}")

    async def stop(timeout_s: float) -> None:
        log.append(f"stop {name} {timeout_s:g}")
        if fail_stop:
            raise RuntimeError(f"{name} cannot stop")

    return Part(name, start, stop)


def test_parts_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    parts = Parts([_recording(log, "a"), _recording(log, "b", fail_stop=True), _recording(log, "c")])
    asyncio.run(parts.start())
    asyncio.run(parts.stop(7))
    assert log == ["start a", "start b", "start c", "stop c 7", "stop b 7", "stop a 7"]


def test_a_failed_start_stops_what_had_started() -> None:
    log: list[str] = []
    parts = Parts([_recording(log, "a"), _recording(log, "b"), _recording(log, "c", fail_start=True)])
    with pytest.raises(RuntimeError, match="c cannot start"):
        asyncio.run(parts.start())
    assert log == ["start a", "start b", "stop b 10", "stop a 10"]


def test_serve_lists_its_listeners_last_and_what_must_outlive_the_pipeline_first(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", mllp_port=0, dicom_port=0, api_port=0, api_tokens={"a": "t" * 32}
    )
    app = SidecarApp(settings)
    names = app.parts.names
    assert names[-3:] == ["api", "mllp", "dicom"]
    for early in ("audit-checkpoints", "relay", "sandbox"):
        assert names.index(early) < names.index("pipeline")  # stopped after it: its drain is served
    assert names.index("pipeline") < names.index("journal")  # the journal drains into the inbox first
    app.db.dispose()
