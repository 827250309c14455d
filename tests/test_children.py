"""serve's child processes (core.children): named so that ps, top and bench.e2e tell them
apart, and stopped on request."""

from __future__ import annotations

import multiprocessing.connection
from pathlib import Path

from core.children import ChildLink, Children


def idle_child(conn: multiprocessing.connection.Connection, parent: int) -> None:
    link = ChildLink(conn, parent)
    link.ready()
    link.stop.wait(60)
    link.stopped()


def test_children_carry_their_role_in_the_process_name() -> None:
    children = Children(idle_child, name="sidecar-pipeline", count=2)
    children.start()
    try:
        names = sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in children.pids)
    finally:
        children.stop(10)
    assert names == ["sc-pipeline-0", "sc-pipeline-1"]
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in children.pids)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
