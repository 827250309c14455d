"""Search pages stay whole while the pipeline stores more (issue 20): a client paging
through a patient's results while new messages arrive sees every result that was there when
it began, once, whatever the sort."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import SecretStr

from bench.e2e_messages import is_adt, message
from tests.deployments import Embedded

TOKEN = "t0k3n-of-a-paging-client"


def _pages(
    http: httpx.Client, url: str, params: dict[str, str], between: list[bytes], dep: Embedded
) -> list[str]:
    """Every match's id, page by page; ``between`` is delivered after the first page."""
    ids: list[str] = []
    next_url: str | None = url
    first = True
    while next_url:
        bundle = http.get(next_url, params=params if first else None).json()
        ids += [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        if first and between:
            dep.deliver(*between)
        first = False
        next_url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return ids


def test_pages_neither_repeat_nor_skip_while_new_results_are_stored(tmp_path: Path) -> None:
    seqs = [s for s in range(200) if not is_adt(s)]
    dep = Embedded(tmp_path / "data", api_port=0, api_tokens={"pager": SecretStr(TOKEN)})
    dep.start()
    try:
        dep.deliver(*[message(seq, "P", patient_count=1) for seq in seqs[:30]])
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}/fhir"
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
            # Not a population client: it names its patient.
            assert http.get(f"{base}/Observation", params={"_count": "1"}).status_code == 403
            report = dep.event_bodies()[0]["data"]
            pid = report["subject"]["reference"].split("/")[1] if "subject" in report else report["id"]
            before = set(_pages(http, f"{base}/Observation", {"patient": pid, "_count": "200"}, [], dep))
            assert len(before) == 300
            batches = iter(
                [
                    [message(seq, "P", patient_count=1) for seq in seqs[30 + 10 * k : 40 + 10 * k]]
                    for k in range(6)
                ]
            )
            for sort in ("_id", "-_lastUpdated", "date"):
                seen = _pages(
                    http,
                    f"{base}/Observation",
                    {"patient": pid, "_count": "70", "_sort": sort},
                    next(batches),
                    dep,
                )
                assert len(seen) == len(set(seen)), sort  # no repeats
                assert before <= set(seen), sort  # nothing that was there is skipped
    finally:
        dep.stop()
