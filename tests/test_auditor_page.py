"""The auditor page in headless Chromium (issue 21, acceptance 4): Debian's chromium, driven
by Playwright's Python package with ``executable_path`` (no browser is downloaded). An
auditor signs in, opens patient X's timeline, sees the accesses of two API clients, a
summary and a re-identification, and exports the CSV; a client that is not an auditor gets
403, signed in or by bearer token. Screenshots are saved under the test's output folder.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import select

from core.tables import AuditEntry
from sidecar.reid import reidentify
from tests.audited import OPERATOR, audited_sidecar, patient_ids
from tests.deployments import Embedded

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes say Chromium needs here: no sandbox as root, no background traffic.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
FLAGS += ["--disable-sync", "--no-first-run"]
TOKENS = {
    "alpha": "alpha-token-page-0123",
    "beta": "beta-token-page-0123",
    "auditor": "auditor-token-page-01",
}
# Where screenshots go: kept after the run (CI uploads the folder; locally, look there).
SHOTS = Path(
    os.environ.get("SIDECAR_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".test-artifacts")
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Embedded]]:
    folder = tmp_path_factory.mktemp("auditor") / "data"
    dep = audited_sidecar(folder, TOKENS, run="P", patients=1, messages=2)
    try:
        [x] = patient_ids(dep)
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}"
        for client in ("alpha", "beta"):
            headers = {"Authorization": f"Bearer {TOKENS[client]}"}
            assert httpx.get(f"{base}/fhir/Patient/{x}", headers=headers).status_code == 200
            assert (
                httpx.get(f"{base}/fhir/Observation", params={"patient": x}, headers=headers).status_code
                == 200
            )
        reidentify(dep.db, x, operator=OPERATOR, reason="complaint review 2026-17", operators=[OPERATOR])
        yield base, x, dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
        )
        yield launched
        launched.close()


def _sign_in(browser: Browser, base: str, client: str):  # type: ignore[no-untyped-def]
    page = browser.new_context(accept_downloads=True).new_page()
    page.goto(f"{base}/auditor/")  # not signed in: sent to the sign-in page
    assert page.url.endswith("/auditor/login")
    page.fill("input[name=client]", client)
    page.fill("input[name=token]", TOKENS[client])
    page.click("button[type=submit]")
    return page


def test_an_auditor_opens_patient_xs_timeline_and_exports_it(
    site: tuple[str, str, Embedded], browser: Browser
) -> None:
    base, x, dep = site
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = _sign_in(browser, base, "auditor")
    page.wait_for_selector("#chain")
    assert "Alerts" in page.content()
    assert "complaint review 2026-17" in page.inner_text("body")  # the re-identification's reason
    page.screenshot(path=str(SHOTS / "auditor-overview.png"), full_page=True)

    page.fill("input[name=id]", x)
    page.click("form[action='/auditor/patient'] button")
    page.wait_for_selector("#timeline")
    timeline = page.inner_text("#timeline")
    for seen in (
        "api:alpha",
        "api:beta",
        "PatientRead",
        "PatientQuery",
        "reidentify",
        "originate",
        "TREAT",
        "HOPERAT",
    ):
        assert seen in timeline, seen
    page.screenshot(path=str(SHOTS / "auditor-patient-timeline.png"), full_page=True)
    print(f"screenshots: {SHOTS}/auditor-overview.png, {SHOTS}/auditor-patient-timeline.png")

    with page.expect_download() as download_info:
        page.click("#csv")
    exported = Path(download_info.value.path()).read_text("utf-8")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {"api:alpha", "api:beta", "operator:dr-audit"} <= {r["client"] for r in rows}
    assert {r["kind"] for r in rows} >= {"PatientRead", "PatientQuery", "reidentify"}

    with dep.db.sessions() as s:
        views = s.execute(select(AuditEntry.action).where(AuditEntry.actor == "api:auditor")).scalars().all()
    assert {"auditor.login", "auditor.view", "auditor.export"} <= set(views)  # every view is audited


def test_a_client_that_is_not_an_auditor_gets_403(site: tuple[str, str, Embedded], browser: Browser) -> None:
    base, x, _dep = site
    page = _sign_in(browser, base, "alpha")
    assert "not an auditor" in page.inner_text("body")
    page.screenshot(path=str(SHOTS / "auditor-refused.png"))
    answer = httpx.get(
        f"{base}/auditor/patient", params={"id": x}, headers={"Authorization": f"Bearer {TOKENS['alpha']}"}
    )
    assert answer.status_code == 403
    refused = httpx.get(
        f"{base}/auditor/patient.csv", params={"id": x}, headers={"Authorization": f"Bearer {TOKENS['beta']}"}
    )
    assert refused.status_code == 403
