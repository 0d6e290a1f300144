"""A lead's erasure end to end: after DELETE /v1/leads/{id}, no service returns the person's email or name."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.support.polling import eventually
from tests.support.stack import Stack


async def _get(client: httpx.AsyncClient, url: str) -> str:
    answer = await client.get(url)
    assert answer.status_code in (200, 404), (url, answer.status_code, answer.text)
    return answer.text


async def test_after_an_erasure_no_service_returns_the_persons_data_but_reports_keep_counting(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    person: dict[str, Any] = {
        "email": f"hanako.{tag}@yamada-trading.example",
        "first_name": "Hanako",
        "last_name": f"Yamada{tag}",
        "phone": "+81 3-1234-5678",
        "company": "Yamada Trading",
        "country": "JP",
        "utm_campaign": f"erasure-{tag}",
    }
    urls = {name: stack[name].url for name in ("lead_intake", "scoring", "routing", "feedback")}
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as client:
        posted = await client.post(urls["lead_intake"] + "/v1/leads", json=person)
        assert posted.status_code == 202, posted.text
        lead_id = posted.json()["lead_id"]
        views = {
            "intake lead": urls["lead_intake"] + f"/v1/leads/{lead_id}",
            "score": urls["scoring"] + f"/v1/scores/{lead_id}",
            "assignment": urls["routing"] + f"/v1/assignments/{lead_id}",
            "timeline": urls["feedback"] + f"/v1/leads/{lead_id}/timeline",
            "lead search": urls["feedback"] + f"/v1/leads?campaign=erasure-{tag}",
        }

        async def everywhere_known() -> bool:
            texts = [await _get(client, url) for name, url in views.items() if name not in ("score",)]
            return all(person["email"] in text for text in texts)

        await eventually(everywhere_known, timeout=60, message="the lead reached every service")

        erased = await client.delete(urls["lead_intake"] + f"/v1/leads/{lead_id}")
        assert erased.status_code == 202, erased.text
        assert (await client.delete(urls["lead_intake"] + "/v1/leads/no-such-lead")).status_code == 404

        async def nowhere_personal() -> dict[str, str] | None:
            leaks = {}
            for name, url in views.items():
                text = await _get(client, url)
                for value in (person["email"], person["last_name"], "1234-5678", "+81312345678"):
                    if value in text:
                        leaks[name] = value
            return None if leaks else {"ok": "no leak"}

        await eventually(nowhere_personal, timeout=60, message="every service erased the person's data")

        # What is anonymous stays: the lead is still counted by campaign and still has its journey.
        found = (await client.get(views["lead search"])).json()["leads"]
        assert [lead["lead_id"] for lead in found] == [lead_id] and found[0]["email"] is None
        steps = [step["step"] for step in (await client.get(views["timeline"])).json()["steps"]]
        assert "captured" in steps
