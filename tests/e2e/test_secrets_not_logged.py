"""Secrets never reach the logs: after the whole e2e run (keys used on every call, bad keys refused), no service
log contains the admin key, a presented key, or a database password."""

from __future__ import annotations

import httpx
from sqlalchemy.engine import make_url

from tests.support.stack import Stack


async def test_no_log_line_carries_a_key_or_a_password(stack: Stack) -> None:
    wrong_key = "bk_wrongid_s3cr3t-guess-1234567890"
    async with httpx.AsyncClient(timeout=10) as client:
        for service in stack.services.values():
            refused = await client.get(service.url + "/v1/reps", headers={"Authorization": f"Bearer {wrong_key}"})
            assert refused.status_code in (401, 404)
    secrets = {stack.admin_key, wrong_key}
    password = make_url(stack.database_url).password if stack.database_url else None
    if password:
        secrets.add(password)
    for service in stack.services.values():
        text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
        assert text, f"{service.name} wrote no log"
        leaked = sorted(secret for secret in secrets if secret in text)
        assert not leaked, f"{service.name}'s log contains {leaked}"
