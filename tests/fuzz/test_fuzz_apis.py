"""Schemathesis against each service's own OpenAPI document, over the real broker and PostgreSQL.

With the admin key every operation gets valid and invalid data: no 5xx, every documented response as documented
(status, content type, body schema). Without a key, every operation that needs one answers 401, never 5xx.
`make test` runs a short, fixed-seed pass; `make fuzz` at least 1,000 requests per service.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fuzz.harness import REPORTS, Budget, ServiceFuzzer
from tests.support.stack import SERVICES, Stack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_with_the_admin_key(service: str, fuzz_stack: Stack, fuzz_budget: Budget) -> None:
    report = ServiceFuzzer(service, fuzz_stack[service].url, fuzz_budget).with_key(fuzz_stack.headers)
    REPORTS.append(report)

    assert not report.findings, report.describe()
    assert report.requests >= fuzz_budget.target_requests, f"{service}: only {report.requests} requests generated"


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_without_a_key(service: str, fuzz_stack: Stack, fuzz_budget: Budget) -> None:
    report = ServiceFuzzer(service, fuzz_stack[service].url, fuzz_budget).without_key()
    REPORTS.append(report)

    assert not report.findings, report.describe()
    assert report.statuses[401], f"{service}: no operation asked for a key"


# Requests fuzzing once answered with 500 (PostgreSQL refusing U+0000 in text; a version beyond INTEGER): now 422.
FOUND_BY_FUZZING = [
    ("routing", "PUT", "/v1/accounts/example.com", {"json": {"rep_id": "rep-a", "name": "W\u0000x"}}),
    ("lead_intake", "POST", "/v1/leads", {"data": {"email": "nul@example.com", "consent_wording_version": "\u0000"}}),
    ("lead_intake", "POST", "/v1/leads", {"json": {"email": "nul@example.com", "city": "a\u0000b"}}),
    ("scoring", "POST", "/v1/scoring/models/2577900805191457832960/activate", {}),
    ("scoring", "GET", "/v1/scoring/models/99999999999", {}),
    ("routing", "GET", "/v1/routing/policies/2577900805191457832960", {}),
]


@pytest.mark.parametrize(("service", "method", "path", "body"), FOUND_BY_FUZZING)
def test_inputs_fuzzing_found_are_rejected_as_invalid(
    service: str, method: str, path: str, body: dict[str, Any], fuzz_stack: Stack
) -> None:
    response = httpx.request(method, fuzz_stack[service].url + path, headers=fuzz_stack.headers, **body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
