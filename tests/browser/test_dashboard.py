"""The live dashboard in a real browser: feedback and lead_intake as processes on the real broker and PostgreSQL.

A lead posted to lead_intake reaches feedback only through Kafka, so this module starts both services on the
session's broker and database (the `kafka` and `postgres` fixtures), each with a consumer group of its own.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, ViewportSize, expect

from tests.browser.conftest import ADMIN_KEY
from tests.support.infra import ROOT, KafkaBroker, PostgresServer, free_port
from tests.support.polling import eventually
from tests.support.stack import ServiceProcess

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "var" / "screenshots" / "dashboard.png"
LAPTOP = ViewportSize(width=1366, height=768)
LIVE_TIMEOUT_MS = 60_000

# The number an element shows (its data-value), or -1 while it is not drawn yet. Functions, not expressions: the
# page's Content-Security-Policy forbids eval, which Playwright needs for a string expression.
NUMBER_OF = "selector => { const e = document.querySelector(selector); return e ? Number(e.dataset.value) : -1; }"
AT_LEAST = "([selector, least]) => { const e = document.querySelector(selector); return !!e && Number(e.dataset.value) >= least; }"  # noqa: E501


@dataclass(frozen=True)
class Services:
    """lead_intake and feedback as running processes."""

    intake: ServiceProcess
    feedback: ServiceProcess

    @property
    def headers(self) -> dict[str, str]:
        """Authorization as the admin."""
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def post_lead(self, campaign: str) -> str:
        """A form lead from `campaign`; its id."""
        lead = {"email": f"dash-{uuid.uuid4().hex[:10]}@example.com", "company": "Dash Ltd", "utm_campaign": campaign}
        async with httpx.AsyncClient(base_url=self.intake.url, headers=self.headers) as client:
            response = await client.post("/v1/leads", json=lead)
        assert response.status_code == 202, response.text
        return str(response.json()["lead_id"])

    async def set_goal(self, name: str, target: int) -> str:
        """A goal on captured leads over this month; its id."""
        today = datetime.now(UTC).date()
        last_day = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        goal = {"name": name, "metric": "captured", "target": target, "period_start": today.replace(day=1).isoformat(),
                "period_end": last_day.isoformat(), "owners": ["marketing", "sales"]}  # fmt: skip
        async with httpx.AsyncClient(base_url=self.feedback.url, headers=self.headers) as client:
            response = await client.post("/v1/goals", json=goal)
        assert response.status_code == 201, response.text
        return str(response.json()["goal_id"])

    async def post_outcome(self, lead_id: str, kind: str) -> dict[str, Any]:
        """A sales outcome for the lead."""
        async with httpx.AsyncClient(base_url=self.feedback.url, headers=self.headers) as client:
            response = await client.post("/v1/outcomes", json={"lead_id": lead_id, "kind": kind})
        assert response.status_code in (200, 202), response.text
        answer: dict[str, Any] = response.json()
        return answer


def _process(name: str, database_url: str, kafka: KafkaBroker, log_dir: Path, tag: str) -> ServiceProcess:
    port = free_port()
    prefix = f"BATON_{name.upper()}_"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "BATON_ADMIN_KEY": ADMIN_KEY,
        prefix + "PORT": str(port),
        prefix + "DATABASE_URL": database_url,
        # Its own consumer group (and schema): the e2e stack's services share this broker in the same run.
        prefix + "SERVICE_NAME": f"{name}_{tag}",
    }
    return ServiceProcess(name, port, env, log_dir / f"{name}.log")


@pytest.fixture(scope="module")
async def services(
    kafka: KafkaBroker, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    """lead_intake and feedback on a fresh database, both ready (broker and database reachable)."""
    database_url = postgres.create_database("baton_dashboard")
    log_dir = tmp_path_factory.mktemp("dashboard")
    tag = uuid.uuid4().hex[:8]
    running = Services(
        intake=_process("lead_intake", database_url, kafka, log_dir, tag),
        feedback=_process("feedback", database_url, kafka, log_dir, tag),
    )
    for process in (running.intake, running.feedback):
        process.start()
    try:
        for process in (running.intake, running.feedback):
            await eventually(functools.partial(_ready, process), timeout=90, message=f"{process.name} ready")
        yield running
    finally:
        running.feedback.stop()
        running.intake.stop()


async def _ready(process: ServiceProcess) -> bool:
    if process.exited():
        raise AssertionError(f"{process.name} exited; log tail:\n{process.log_tail()}")
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(process.url + "/readyz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


async def open_dashboard(page: Page, services: Services) -> None:
    """Load the page at laptop size and give it the admin key through its key form."""
    await page.set_viewport_size(LAPTOP)
    await page.goto(services.feedback.url + "/dashboard")
    await page.fill("#api-key", ADMIN_KEY)
    await page.click("#key-submit")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await page.wait_for_function(AT_LEAST, arg=["#funnel-captured", 0])


async def test_the_dashboard_counts_a_new_lead_and_its_outcome_live_without_reloading(
    page: Page, services: Services
) -> None:
    campaign = f"dash-{uuid.uuid4().hex[:8]}"
    await open_dashboard(page, services)
    captured_before = await page.evaluate(NUMBER_OF, "#funnel-captured")
    accepted_before = await page.evaluate(NUMBER_OF, "#funnel-accepted")
    await page.evaluate("window.notReloaded = true")

    lead_id = await services.post_lead(campaign)
    goal_id = await services.set_goal(f"Leads this month ({campaign})", target=10)

    await page.wait_for_function(AT_LEAST, arg=["#funnel-captured", captured_before + 1], timeout=LIVE_TIMEOUT_MS)
    row = page.locator(f'#campaigns tr[data-campaign="{campaign}"]')
    await expect(row.locator("[data-field=captured]")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    assert (await services.post_outcome(lead_id, "accepted"))["status"] == "recorded"
    await page.wait_for_function(AT_LEAST, arg=["#funnel-accepted", accepted_before + 1], timeout=LIVE_TIMEOUT_MS)
    await expect(row.locator("[data-field=accepted]")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)

    await expect(page.locator(f'#goals [data-goal-id="{goal_id}"]')).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    assert await page.evaluate("window.notReloaded === true"), "the page reloaded instead of updating live"
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await expect(page.locator("#last-updated")).to_contain_text("updated")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 0


async def test_the_key_can_come_in_the_url_fragment_and_stays_out_of_the_address_bar(
    page: Page, services: Services
) -> None:
    await page.goto(f"{services.feedback.url}/dashboard#key={ADMIN_KEY}")

    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await page.wait_for_function(AT_LEAST, arg=["#funnel-captured", 0])
    assert ADMIN_KEY not in page.url
    assert await page.evaluate("sessionStorage.length") == 1


async def test_a_wrong_key_is_refused_and_asked_for_again(page: Page, services: Services) -> None:
    await page.goto(services.feedback.url + "/dashboard")
    await page.fill("#api-key", "not-the-key")
    await page.click("#key-submit")

    await expect(page.locator("#key-error")).to_have_text("That key was refused.")
    await expect(page.locator("#key-panel")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
