"""Web forms as a real browser posts them: a plain HTML form, and a script's cross-origin fetch under CORS."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from playwright.async_api import Page

from tests.browser.conftest import FORM_ID, Intake, PageServer

pytestmark = pytest.mark.browser

# What a site's own script does: a JSON post with the public form key as a Bearer header (so a preflight goes first).
POST_LEAD_WITH_FETCH = """
async ({url, key, lead}) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key},
      body: JSON.stringify(lead),
    });
    return {ok: response.ok, status: response.status};
  } catch (error) {
    return {error: String(error)};
  }
}
"""


def new_email() -> str:
    """An email no earlier test used."""
    return f"browser-{uuid.uuid4().hex[:12]}@example.com"


async def fill_contact_form(page: Page, email: str) -> None:
    """Fill the contact form as a visitor would, consent ticked, the honeypot left alone."""
    await page.fill("input[name=email]", email)
    await page.fill("input[name=first_name]", "Grace")
    await page.fill("input[name=company]", "Hopper Labs")
    await page.check("input[name=consent_marketing]")


async def post_with_fetch(page: Page, intake: Intake, email: str) -> dict[str, Any]:
    """Run the site's fetch() in the page; {ok, status} if it resolved, {error} if the browser refused it."""
    lead = {"email": email, "first_name": "Ada", "company": "Engines Ltd", "consent_marketing": True}
    url = f"{intake.url}/v1/leads?form_id={FORM_ID}"
    answer: dict[str, Any] = await page.evaluate(
        POST_LEAD_WITH_FETCH, {"url": url, "key": intake.form_key, "lead": lead}
    )
    return answer


async def test_a_plain_form_post_lands_on_the_thanks_page_and_stores_the_lead(
    page: Page, site: PageServer, intake: Intake
) -> None:
    email = new_email()
    await page.goto(site.url("contact.html"))
    await fill_contact_form(page, email)

    await page.click("button[type=submit]")

    await page.wait_for_url(site.url("thanks.html"))
    known = await intake.submit_as_admin(email)
    assert known["status"] == "merged"
    lead = await intake.lead(known["lead_id"])
    assert (lead["first_name"], lead["company"], lead["form_id"]) == ("Grace", "Hopper Labs", FORM_ID)
    assert lead["consent_marketing"] is True and lead["consent_at"] is not None
    assert not {"redirect_to", "_gotcha"} & set(lead.get("attributes") or {})


async def test_a_fetch_from_an_allowed_origin_passes_cors_and_is_accepted(
    page: Page, site: PageServer, intake: Intake
) -> None:
    email = new_email()
    await page.goto(site.url("blank.html"))

    answer = await post_with_fetch(page, intake, email)

    assert answer == {"ok": True, "status": 202}
    assert (await intake.submit_as_admin(email))["status"] == "merged"


async def test_a_fetch_from_another_origin_is_refused_by_cors_and_stores_nothing(
    page: Page, other_site: PageServer, intake: Intake
) -> None:
    email = new_email()
    await page.goto(other_site.url("blank.html"))
    complaints: list[str] = []
    page.on("console", lambda message: complaints.append(message.text))

    answer = await post_with_fetch(page, intake, email)

    assert "Failed to fetch" in answer.get("error", ""), answer
    assert any("CORS policy" in text for text in complaints), complaints
    assert (await intake.submit_as_admin(email))["status"] == "captured"


async def test_a_plain_form_posted_from_another_origin_is_forbidden_and_stores_nothing(
    page: Page, other_site: PageServer, intake: Intake
) -> None:
    email = new_email()
    await page.goto(other_site.url("contact.html"))
    await fill_contact_form(page, email)

    async with page.expect_response(lambda response: response.url.startswith(intake.url)) as posted:
        await page.click("button[type=submit]")

    assert (await posted.value).status == 403
    assert (await intake.submit_as_admin(email))["status"] == "captured"
