"""HTTP route of lead search: lead cards filtered, newest capture first, paged by an opaque keyset cursor."""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.feedback import report_store
from services.feedback.aggregates import LeadCard
from services.feedback.reports import ReportQueryError, parse_day
from services.feedback.reports_api import invalid_query
from shared.app import UowDep
from shared.auth import PrincipalDep

router = APIRouter(prefix="/v1", tags=["leads"])

Filter = Annotated[str | None, Query(min_length=1, max_length=320)]
# Query parameter -> lead_cards column.
FILTERS = {"state": "state", "source": "source", "campaign": "campaign", "rep": "rep_id", "grade": "grade"}


def encode_cursor(card: LeadCard) -> str:
    """The opaque position just after `card` in the newest-first order."""
    raw = f"{card.captured_at.isoformat()}|{card.lead_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(captured_at, lead_id) of a cursor; ReportQueryError naming `cursor` when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, lead_id = raw.split("|", 1)
        at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ReportQueryError("cursor", "not a cursor this API gave out") from None
    if at.tzinfo is None or not lead_id or len(lead_id) > 36:
        raise ReportQueryError("cursor", "not a cursor this API gave out")
    return at, lead_id


def card_json(card: LeadCard) -> dict[str, Any]:
    """A card with JSON-friendly values: ISO instants, amounts as decimal strings, lists for tuples."""
    return {name: _plain(value) for name, value in asdict(card).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value.quantize(Decimal("0.01")))
    if isinstance(value, tuple | list):
        return list(value)
    return value


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


@router.get("/leads")
async def search_leads(
    uow: UowDep,
    _: PrincipalDep,
    state: Filter = None,
    source: Filter = None,
    campaign: Filter = None,
    rep: Filter = None,
    grade: Filter = None,
    day_from: Annotated[str | None, Query(alias="from", description="first capture day, YYYY-MM-DD")] = None,
    day_to: Annotated[str | None, Query(alias="to", description="last capture day, YYYY-MM-DD")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Leads matching every given filter, newest capture first; pass `next_cursor` back for the next page."""
    given = {"state": state, "source": source, "campaign": campaign, "rep": rep, "grade": grade}
    try:
        start = parse_day("from", day_from) if day_from else None
        end = parse_day("to", day_to) if day_to else None
        if start and end and start > end:
            raise ReportQueryError("from", "must not be after 'to'")
        after = decode_cursor(cursor) if cursor else None
    except ReportQueryError as error:
        invalid_query(error)
    async with uow.read() as session:
        cards = await report_store.search_cards(
            session,
            equals={FILTERS[name]: value for name, value in given.items() if value is not None},
            captured_from=_midnight(start) if start else None,
            captured_before=_midnight(end + timedelta(days=1)) if end else None,
            after=after,
            limit=limit + 1,
        )
    page = cards[:limit]
    next_cursor = encode_cursor(page[-1]) if len(cards) > limit else None
    return {"leads": [card_json(card) for card in page], "next_cursor": next_cursor}
