"""The smoke path on a broker that demands SASL (SCRAM-SHA-512): a lead is posted, scored and routed, and a service
with the wrong password reports the broker unreachable on /readyz — without crashing or logging the password."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from shared.kafka import broker_reachable
from shared.topics import LEADS_ROUTED
from tests.e2e.conftest import REPS
from tests.support.infra import KafkaBroker, PostgresServer, free_port
from tests.support.kafka_reader import read_topic
from tests.support.polling import eventually
from tests.support.stack import ServiceProcess, Stack, running_stack

# Unique per run, so finding it in a log file can only mean it leaked there.
PASSWORD = "sasl-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def sasl_kafka(run_dir: Path) -> Iterator[KafkaBroker]:
    """A broker of this module's own whose only client listener is SASL_PLAINTEXT."""
    broker = KafkaBroker.start(run_dir, listener="SASL_PLAINTEXT", sasl_password=PASSWORD)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def sasl_stack(sasl_kafka: KafkaBroker, postgres: PostgresServer, run_dir: Path) -> Iterator[Stack]:
    """The four services, configured with the broker's SASL settings through the shared (unprefixed) variables."""
    with running_stack(
        reps=REPS,
        bootstrap_servers=sasl_kafka.bootstrap_servers,
        database_url=postgres.create_database("baton_sasl"),
        log_dir=run_dir / "sasl-logs",
        extra_env=sasl_kafka.client_env,
    ) as running:
        yield running


async def test_the_broker_refuses_a_plaintext_client_and_a_wrong_password(sasl_kafka: KafkaBroker) -> None:
    wrong = replace(sasl_kafka.security, sasl_password=SecretStr(WRONG_PASSWORD))
    assert sasl_kafka.client_env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert await broker_reachable(sasl_kafka.bootstrap_servers, security=sasl_kafka.security)
    assert await broker_reachable(
        sasl_kafka.bootstrap_servers, security=replace(sasl_kafka.security, sasl_mechanism="PLAIN")
    )
    assert not await broker_reachable(sasl_kafka.bootstrap_servers, security=wrong)
    assert not await broker_reachable(sasl_kafka.bootstrap_servers)


async def test_a_lead_is_scored_and_routed_over_sasl(sasl_stack: Stack, sasl_kafka: KafkaBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    lead = {"email": f"mei.{tag}@sasl.example", "first_name": "Mei", "company": "Acme", "country": "JP"}
    async with httpx.AsyncClient(headers=sasl_stack.headers, timeout=10) as client:
        posted = await client.post(sasl_stack["lead_intake"].url + "/v1/leads", json=lead)
        assert posted.status_code == 202, posted.text
        lead_id = posted.json()["lead_id"]

        records = await read_topic(
            sasl_kafka.bootstrap_servers,
            LEADS_ROUTED,
            until=lambda seen: any(record.key == lead_id.encode() for record in seen),
            timeout=60,
            security=sasl_kafka.security,
        )
        decisions = [orjson.loads(r.value) for r in records if r.key == lead_id.encode()]
        assert [decision["kind"] for decision in decisions][:1] == ["assigned"]

        async def routed_on_the_timeline() -> bool:
            answer = await client.get(f"{sasl_stack['feedback'].url}/v1/leads/{lead_id}/timeline")
            steps = answer.json().get("steps", []) if answer.status_code == 200 else []
            return {"captured", "scored", "routed"} <= {step["step"] for step in steps}

        await eventually(routed_on_the_timeline, timeout=60, message="feedback saw the lead captured, scored, routed")
    for service in sasl_stack.services.values():
        assert PASSWORD not in service.log_path.read_text(errors="replace"), f"{service.name} logged the password"


async def test_a_wrong_password_makes_the_service_unready_not_crash(sasl_stack: Stack, run_dir: Path) -> None:
    # scoring both publishes (outbox relay) and consumes (topic creation, consumer group): every client is refused.
    scoring, port = sasl_stack["scoring"], free_port()
    env = {
        **scoring.env,
        "BATON_SCORING_PORT": str(port),
        # Its own schema: its relay must not take the running scoring's outbox lock.
        "BATON_SCORING_DATABASE_SCHEMA": "scoring_wrong_password",
        "KAFKA_SASL_PASSWORD": WRONG_PASSWORD,
    }
    misconfigured = ServiceProcess("scoring", port, env, run_dir / "sasl-logs" / "scoring-wrong-password.log")
    misconfigured.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def unready_for_the_broker() -> dict[str, bool] | None:
                try:
                    answer = await client.get(misconfigured.url + "/readyz")
                except httpx.HTTPError:
                    return None  # still starting
                checks: dict[str, bool] = answer.json()["checks"] if answer.status_code == 503 else {}
                return checks if checks.get("database") and not checks.get("broker") else None

            def log_text() -> str:
                return misconfigured.log_path.read_text(errors="replace")

            async def says_why_and_keeps_retrying() -> bool:
                log = log_text()
                return "Authentication failed" in log and log.count("cannot create topics yet") >= 3

            await eventually(unready_for_the_broker, timeout=60, message="/readyz: database up, broker unreachable")
            await eventually(says_why_and_keeps_retrying, timeout=60, message="auth failure logged, then retries")
            # Still serving and still saying so after its clients have retried a while: no crash loop.
            await eventually(unready_for_the_broker, timeout=10, message="still unready")
        assert not misconfigured.exited()
    finally:
        misconfigured.stop()
    assert WRONG_PASSWORD not in log_text() and PASSWORD not in log_text()
