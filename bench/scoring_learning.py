"""Does learning from sales outcomes rank leads better than the rules? Measured through the real services.

`make bench-scoring DATA=leads.csv` starts a throwaway PostgreSQL, Kafka and the four services, then, in file order
(nothing shuffled): posts the first 70 % of the leads, their outcomes (scoring learns online from leads.outcomes),
then the last 30 %, and ranks those held-out leads three ways: Baton's score (rules blended with the learned model),
the rules alone (`rules_score`) and an Odoo-CRM-style naive Bayes (bench/naive_bayes.py) trained on the same 70 %.
Every column but the label and the id is sent as a lead attribute. Prints a table, saves var/reports/scoring-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from naive_bayes import add_outcome, train  # noqa: E402
from naive_bayes import probability as naive_bayes_probability  # noqa: E402

from services.scoring.learning import Weights, features, learn, probability  # noqa: E402
from services.scoring.quality import roc_auc, top_decile_lift  # noqa: E402
from shared.envelope import CloudEvent  # noqa: E402
from shared.events import LeadCapturedV1, parse_payload  # noqa: E402
from shared.topics import LEADS_CAPTURED, LEADS_SCORED  # noqa: E402
from tests.support.infra import KafkaBroker, PostgresServer  # noqa: E402
from tests.support.kafka_reader import header, read_topic  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

# lead_intake's bounds on attributes: checked up front so a wide file fails with a clear message, not 9,000 422s.
MAX_ATTRIBUTES, MAX_NAME, MAX_VALUE = 50, 100, 1000
T = TypeVar("T")
REPS = [{"rep_id": f"bench-{x}", "name": f"Rep {x}", "email": f"{x}@reps.bench.example"} for x in "ab"]


@dataclass(frozen=True)
class LabelledLead:
    """One row of the data set: the attributes sent to Baton and how the lead ended (1 won, 0 lost)."""

    row_id: str
    attributes: dict[str, str]
    label: int


@dataclass
class Replayed:
    """What the real system did with the data set."""

    train_ids: list[str]
    holdout_ids: list[str]
    holdout_scores: dict[str, dict[str, Any]]
    facts: dict[str, dict[str, Any]]
    quality: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def read_leads(
    path: Path, *, label_column: str, positive: str, id_column: str, exclude: Sequence[str]
) -> tuple[list[LabelledLead], list[str]]:
    """Every row in file order, and the columns sent as attributes (all but label, id, excluded and unnamed)."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        if label_column not in columns:
            raise SystemExit(f"{path}: no label column {label_column!r} (columns: {columns})")
        sent = [name for name in columns if name.strip() and name not in {label_column, id_column, *exclude}]
        _check_columns(sent)
        leads = [_labelled(number, row, sent, label_column, positive, id_column) for number, row in enumerate(reader)]
    if not leads:
        raise SystemExit(f"{path}: no rows")
    return leads, sent


def _check_columns(sent: list[str]) -> None:
    if len(sent) > MAX_ATTRIBUTES:
        raise SystemExit(f"{len(sent)} attribute columns, lead_intake takes {MAX_ATTRIBUTES}: use --exclude-column")
    if too_long := [name for name in sent if len(name) > MAX_NAME]:
        raise SystemExit(f"column names over {MAX_NAME} characters: {too_long}")


def _labelled(
    number: int, row: dict[str, str], sent: list[str], label_column: str, positive: str, id_column: str
) -> LabelledLead:
    attributes = {name: value.strip() for name in sent if (value := row.get(name) or "").strip()}
    if too_long := [name for name, value in attributes.items() if len(value) > MAX_VALUE]:
        raise SystemExit(f"row {number + 1}: values over {MAX_VALUE} characters in {too_long}")
    label = int((row.get(label_column) or "").strip() == positive)
    return LabelledLead(row_id=row.get(id_column) or str(number + 1), attributes=attributes, label=label)


@contextmanager
def running_stack(run_dir: Path) -> Iterator[tuple[Stack, str]]:
    """Own PostgreSQL, own Kafka and the four services as processes; all stopped on the way out."""
    kafka = KafkaBroker.start(run_dir, use_given=False)
    postgres = PostgresServer.start(use_given=False)
    try:
        database_url = postgres.create_database("baton_bench_scoring")
        stack = Stack.create(bootstrap_servers=kafka.bootstrap_servers, database_url=database_url, log_dir=run_dir)
        try:
            stack.start()
            yield stack, kafka.bootstrap_servers
        finally:
            stack.stop()
    finally:
        kafka.stop()
        postgres.stop()


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, retried on 429/503 and lost connections (callers pass idempotency keys, so retries are safe)."""
    for attempt in range(10):
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError:
            await asyncio.sleep(0.5 * (attempt + 1))  # poll: back off until the service answers again
            continue
        if response.status_code not in (429, 503):
            return response
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))  # poll: the service asked to wait
    raise SystemExit(f"{method} {url} kept failing")


async def post_leads(
    client: httpx.AsyncClient, url: str, leads: Sequence[LabelledLead], *, first: int, run_tag: str, concurrency: int
) -> list[str]:
    """POST every lead (emails lead<n>.<run>@bench.example) with `concurrency` in flight; their ids in order."""
    ids = [""] * len(leads)
    indexes = iter(range(len(leads)))

    async def worker() -> None:
        for index in indexes:
            number = first + index
            body = {"email": f"lead{number}.{run_tag}@bench.example", "attributes": leads[index].attributes}
            headers = {"Idempotency-Key": f"{run_tag}-lead-{number}"}
            response = await send(client, "POST", url + "/v1/leads", json=body, headers=headers)
            if response.status_code != 202:
                raise SystemExit(f"lead {number} refused ({response.status_code}): {response.text}")
            ids[index] = response.json()["lead_id"]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


async def post_outcomes(
    client: httpx.AsyncClient, url: str, lead_ids: Sequence[str], leads: Sequence[LabelledLead], *, run_tag: str
) -> None:
    """One outcome per lead, one after another in file order: won (amount 1 EUR) or lost."""
    for number, (lead_id, lead) in enumerate(zip(lead_ids, leads, strict=True)):
        body: dict[str, Any] = {"lead_id": lead_id, "kind": "won" if lead.label else "lost"}
        body["external_id"] = f"{run_tag}-outcome-{number}"
        if lead.label:
            body |= {"amount": "1", "currency": "EUR"}
        response = await send(client, "POST", url + "/v1/outcomes", json=body)
        if response.status_code not in (200, 202):
            raise SystemExit(f"outcome {number} refused ({response.status_code}): {response.text}")


async def wait_learned(client: httpx.AsyncClient, url: str, outcomes: int, *, timeout: float) -> dict[str, Any]:
    """Poll /v1/scoring/quality until the learned model counts `outcomes`; its last answer."""
    deadline = time.monotonic() + timeout
    learned = -1
    while time.monotonic() < deadline:
        response = await send(client, "GET", url + "/v1/scoring/quality")
        learned = response.json()["learned_model"]["outcomes"] if response.status_code == 200 else learned
        if learned >= outcomes:
            return dict(response.json())
        await asyncio.sleep(2)  # poll
    raise SystemExit(f"scoring learned {learned} of {outcomes} outcomes in {timeout}s")


async def collect_scores(
    client: httpx.AsyncClient, url: str, lead_ids: Sequence[str], *, timeout: float, concurrency: int
) -> dict[str, dict[str, Any]]:
    """Poll GET /v1/scores/{id} until every lead has a score; the scores by lead id."""
    found: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(concurrency)

    async def look(lead_id: str) -> None:
        async with gate:
            response = await send(client, "GET", f"{url}/v1/scores/{lead_id}")
        if response.status_code == 200:
            found[lead_id] = response.json()

    deadline = time.monotonic() + timeout
    while pending := [lead_id for lead_id in lead_ids if lead_id not in found]:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} of {len(lead_ids)} held-out leads still unscored after {timeout}s")
        await asyncio.gather(*(look(lead_id) for lead_id in pending))
        await asyncio.sleep(1)  # poll
    return found


async def first_per_lead(
    bootstrap: str, topic: str, lead_ids: Sequence[str], take: Callable[[Any], T | None], *, timeout: float
) -> dict[str, T]:
    """Each lead's first record on `topic` that `take` reads (None: skip it); reads until every lead has one."""
    wanted, found, read = set(lead_ids), dict[str, T](), [0]

    def complete(records: list[Any]) -> bool:
        for record in records[read[0] :]:
            lead_id = record.key.decode() if record.key else ""
            if lead_id in wanted and lead_id not in found and (value := take(record)) is not None:
                found[lead_id] = value
        read[0] = len(records)
        return len(found) == len(wanted)

    await read_topic(bootstrap, topic, until=complete, timeout=timeout)
    if len(found) < len(wanted):
        raise SystemExit(f"only {len(found)} of {len(wanted)} leads on {topic} after {timeout}s")
    return found


def scored_at(record: Any) -> datetime:
    """When scoring announced a score: the record's CloudEvents time."""
    return datetime.fromisoformat(header(record, "ce_time") or "")


def captured_facts(record: Any) -> dict[str, Any] | None:
    """A lead as scoring received it (its leads.captured payload, dumped as scoring stores it)."""
    event = CloudEvent.from_kafka(record.key, record.value, record.headers)
    if event.type != LeadCapturedV1.EVENT_TYPE:
        return None
    return parse_payload(event, LeadCapturedV1).model_dump(mode="json")


async def replay(
    stack: Stack, bootstrap: str, training: list[LabelledLead], holdout: list[LabelledLead], args: argparse.Namespace
) -> Replayed:
    """The protocol: training leads, their outcomes, then held-out leads and their scores."""
    intake, scoring, feedback = (stack[name].url for name in ("lead_intake", "scoring", "feedback"))
    run_tag, timings = uuid.uuid4().hex[:8], dict[str, float]()
    async with httpx.AsyncClient(headers=stack.headers, timeout=60) as client:
        for rep in REPS:
            await send(client, "POST", stack["routing"].url + "/v1/reps", json=rep)
        started = time.time()
        train_ids = await post_leads(client, intake, training, first=0, run_tag=run_tag, concurrency=args.concurrency)
        timings["posted_training_seconds"] = time.time() - started
        scored = await first_per_lead(bootstrap, LEADS_SCORED, train_ids, scored_at, timeout=args.timeout)
        timings |= _scoring_rate(scored, started, started + timings["posted_training_seconds"])
        started = time.time()
        await post_outcomes(client, feedback, train_ids, training, run_tag=run_tag)
        timings["posted_outcomes_seconds"] = time.time() - started
        await wait_learned(client, scoring, len(training), timeout=args.timeout)
        timings["learned_outcomes_seconds"] = time.time() - started
        started = time.time()
        holdout_ids = await post_leads(
            client, intake, holdout, first=len(training), run_tag=run_tag, concurrency=args.concurrency
        )
        scores = await collect_scores(client, scoring, holdout_ids, timeout=args.timeout, concurrency=args.concurrency)
        timings["holdout_scored_seconds"] = time.time() - started
        quality = (await send(client, "GET", scoring + "/v1/scoring/quality")).json()
    facts = await first_per_lead(
        bootstrap, LEADS_CAPTURED, train_ids + holdout_ids, captured_facts, timeout=args.timeout
    )
    return Replayed(train_ids, holdout_ids, scores, facts, quality, timings)


def _scoring_rate(scored: dict[str, datetime], posting_started: float, posting_ended: float) -> dict[str, float]:
    """Leads scored per second between the first and the last first-score, and how far scoring trailed intake."""
    first, last = min(scored.values()).timestamp(), max(scored.values()).timestamp()
    return {
        "scores_per_second": (len(scored) - 1) / (last - first) if last > first else 0.0,
        "scoring_window_seconds": last - first,
        "first_score_after_seconds": first - posting_started,
        "scoring_lag_seconds": last - posting_ended,
    }


def ranking(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float | None]:
    """ROC AUC (ties count half) and top-decile lift (ties at the cut shared) of one way of scoring."""
    auc, lift = roc_auc(scores, labels), top_decile_lift(scores, labels)
    return {"auc": None if auc is None else round(auc, 4), "top_decile_lift": None if lift is None else round(lift, 3)}


def learning_curve(
    training: Sequence[LabelledLead],
    holdout: Sequence[LabelledLead],
    replayed: Replayed,
    *,
    every: int,
) -> list[dict[str, Any]]:
    """Offline replay of the same online learner (and naive Bayes) on the training outcomes in file order: holdout
    AUC after every `every` outcomes. Same features as scoring computes, from the leads.captured payloads."""
    train_x = [features(replayed.facts[lead_id], []) for lead_id in replayed.train_ids]
    holdout_x = [features(replayed.facts[lead_id], []) for lead_id in replayed.holdout_ids]
    labels = [lead.label for lead in holdout]
    model, tables, curve = Weights(), train([]), []
    for count, (x, lead) in enumerate(zip(train_x, training, strict=True), start=1):
        learn(model, x, lead.label)
        add_outcome(tables, lead.attributes, lead.label)
        if count % every == 0 or count == len(training):
            learned = roc_auc([probability(model, h) for h in holdout_x], labels)
            bayes = roc_auc([naive_bayes_probability(tables, lead.attributes) for lead in holdout], labels)
            curve.append({"outcomes": count, "learned_auc": _round(learned), "naive_bayes_auc": _round(bayes)})
    return curve


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate(
    training: list[LabelledLead], holdout: list[LabelledLead], replayed: Replayed, *, every: int
) -> dict[str, Any]:
    """The figures: each way of scoring ranked on the held-out leads, and the outcomes the learner needs."""
    labels = [lead.label for lead in holdout]
    baton = [replayed.holdout_scores[lead_id] for lead_id in replayed.holdout_ids]
    tables = train((lead.attributes, lead.label) for lead in training)
    learned = [score["learned_probability"] for score in baton]
    results = {
        "baton_score": ranking([score["score"] for score in baton], labels),
        "rules_alone": ranking([score["rules_score"] or 0 for score in baton], labels),
        "naive_bayes": ranking([naive_bayes_probability(tables, lead.attributes) for lead in holdout], labels),
        "learned_probability_alone": ranking([p if p is not None else 0.0 for p in learned], labels),
    }
    curve = learning_curve(training, holdout, replayed, every=every)
    rules_auc = results["rules_alone"]["auc"] or 0.0
    needed = next((point["outcomes"] for point in curve if (point["learned_auc"] or 0) > rules_auc), None)
    return {"holdout": results, "outcomes_needed_to_beat_rules": needed, "learning_curve": curve}


def report(result: dict[str, Any]) -> Path:
    """Print the table and save the JSON; returns its path."""
    data, figures = result["data"], result["figures"]
    print(
        f"\n{data['file']}: trained on the first {data['training_leads']} outcomes, "
        f"ranked the last {data['holdout_leads']} leads ({data['holdout_positives']} positive)"
    )
    print(f"{'scoring':<48}{'ROC AUC':>9}{'top-decile lift':>17}")
    names = {
        "baton_score": "Baton score (rules blended with learned model)",
        "rules_alone": "static rules alone (rules_score)",
        "naive_bayes": "naive Bayes, Odoo-style (Laplace)",
        "learned_probability_alone": "(learned probability alone)",
    }
    for key, name in names.items():
        row = figures["holdout"][key]
        print(f"{name:<48}{_shown(row['auc']):>9}{_shown(row['top_decile_lift']):>17}")
    needed = figures["outcomes_needed_to_beat_rules"]
    print(
        f"outcomes needed for the learner to beat the rules (offline replay of the same online learner, "
        f"checked every {result['replay_every']}): {needed if needed is not None else 'not reached'}"
    )
    timings = result["timings"]
    print(
        f"scoring consumer: {timings['scores_per_second']:.1f} leads scored/s over "
        f"{timings['scoring_window_seconds']:.0f} s, last score {timings['scoring_lag_seconds']:.0f} s after the last "
        f"post (intake took them at {data['training_leads'] / timings['posted_training_seconds']:.1f} leads/s); "
        f"runtime {result['runtime_seconds']:.0f} s"
    )
    path = ROOT / "var" / "reports" / f"scoring-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"saved {path.relative_to(ROOT)}")
    return path


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line: the data file and how to read it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data", type=Path, help="CSV with one lead per row and its outcome")
    parser.add_argument("--label-column", default="Converted")
    parser.add_argument("--positive", default="1", help="label value meaning won (anything else is lost)")
    parser.add_argument("--id-column", default="Prospect ID", help="row identity, not sent")
    parser.add_argument("--exclude-column", action="append", default=[], help="a column not to send (repeatable)")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N rows (0: all)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each waiting step may take")
    parser.add_argument("--replay-every", type=int, default=250)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Replay the data set through Baton and report."""
    args = parse_args(argv)
    began = time.monotonic()
    leads, columns = read_leads(
        args.data,
        label_column=args.label_column,
        positive=args.positive,
        id_column=args.id_column,
        exclude=args.exclude_column,
    )
    leads = leads[: args.limit] if args.limit else leads
    split = round(len(leads) * args.train_fraction)
    training, holdout = leads[:split], leads[split:]
    run_dir = ROOT / "var" / "bench-scoring" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with running_stack(run_dir) as (stack, bootstrap):
        replayed = asyncio.run(replay(stack, bootstrap, training, holdout, args))
    result = {
        "data": {
            "file": str(args.data),
            "rows": len(leads),
            "attribute_columns": columns,
            "training_leads": len(training),
            "training_positives": sum(lead.label for lead in training),
            "holdout_leads": len(holdout),
            "holdout_positives": sum(lead.label for lead in holdout),
        },
        "figures": evaluate(training, holdout, replayed, every=args.replay_every),
        "replay_every": args.replay_every,
        "service_quality": replayed.quality,
        "timings": replayed.timings,
        "runtime_seconds": time.monotonic() - began,
        "at": datetime.now(UTC).isoformat(),
    }
    report(result)


if __name__ == "__main__":
    main()
