"""HTTP routes of shared goals: targets sales and marketing own together, each with its progress today."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.feedback import goals, report_store
from services.feedback.aggregates import DIMENSIONS
from services.feedback.reports import MAX_RANGE_DAYS
from shared.app import UowDep
from shared.auth import AdminDep, PrincipalDep
from shared.problems import ProblemError
from shared.sessions import DbSession

router = APIRouter(prefix="/v1", tags=["goals"])

GoalMetric = Literal["captured", "mql", "sql", "won", "won_revenue", "speed_to_lead_p90"]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class GoalIn(BaseModel):
    """A target over a period of capture days, for all leads or one slice (e.g. source=webinar)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    metric: GoalMetric
    target: Annotated[Decimal, Field(gt=0, max_digits=20, decimal_places=4)]
    period_start: date
    period_end: date
    dimension: Annotated[str, StringConstraints(min_length=1, max_length=30)] = "all"
    value: Annotated[str, StringConstraints(min_length=1, max_length=320)] = "all"
    owners: Annotated[list[Label], Field(max_length=20)] = []

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for what the fields mean together that no single field can check."""
        found = []
        if self.dimension not in DIMENSIONS:
            found.append(("dimension", f"unknown dimension; one of {', '.join(DIMENSIONS)}"))
        if self.dimension == "all" and self.value != "all":
            found.append(("value", "must be 'all' when dimension is 'all'"))
        if self.period_start > self.period_end:
            found.append(("period_end", "must not be before period_start"))
        elif goals.period_days(self.period_start, self.period_end) > MAX_RANGE_DAYS:
            found.append(("period_end", f"a period may span at most {MAX_RANGE_DAYS} days"))
        return found


class GoalOut(BaseModel):
    """A goal and where it stands today."""

    goal_id: str
    name: str
    metric: GoalMetric
    target: float
    period_start: date
    period_end: date
    dimension: str
    value: str
    owners: list[str]
    created_at: datetime
    actual: float | None
    progress: float | None
    expected_by_now: float
    forecast: float | None
    on_track: bool
    days_left: int


class GoalList(BaseModel):
    """Every goal with its progress."""

    goals: list[GoalOut]


@router.post("/goals", status_code=201, response_model=GoalOut)
async def post_goal(body: GoalIn, uow: UowDep, _: AdminDep) -> GoalOut:
    """Set a shared goal."""
    problems = body.problems()
    if problems:
        raise RequestValidationError(
            [{"loc": ("body", name), "msg": message, "type": "value_error"} for name, message in problems]
        )
    goal_id = str(uuid.uuid4())
    values = body.model_dump(mode="json")
    values.update(goal_id=goal_id, target=body.target, created_at=datetime.now(UTC))
    async with uow.transaction() as tx:
        await report_store.insert_goal(tx.session, **values)
    async with uow.read() as session:
        return await _with_progress(session, (await report_store.load_goals(session, goal_id=goal_id))[0])


@router.get("/goals", response_model=GoalList)
async def list_goals(uow: UowDep, _: PrincipalDep) -> GoalList:
    """Every goal, oldest first, with its progress today."""
    async with uow.read() as session:
        return GoalList(goals=[await _with_progress(session, row) for row in await report_store.load_goals(session)])


@router.get("/goals/{goal_id}", response_model=GoalOut)
async def get_goal(goal_id: str, uow: UowDep, _: PrincipalDep) -> GoalOut:
    """One goal with its progress today."""
    async with uow.read() as session:
        rows = await report_store.load_goals(session, goal_id=goal_id)
        if not rows:
            raise ProblemError(404, f"no goal {goal_id}")
        return await _with_progress(session, rows[0])


@router.delete("/goals/{goal_id}", status_code=204)
async def delete_goal(goal_id: str, uow: UowDep, _: AdminDep) -> Response:
    """Remove a goal."""
    async with uow.transaction() as tx:
        if not await report_store.delete_goal(tx.session, goal_id=goal_id):
            raise ProblemError(404, f"no goal {goal_id}")
    return Response(status_code=204)


async def _with_progress(session: DbSession, row: dict[str, Any]) -> GoalOut:
    start, end = date.fromisoformat(row["period_start"]), date.fromisoformat(row["period_end"])
    today = datetime.now(UTC).date()
    until = goals.measured_until(start, end, today=today)
    sums: dict[str, Any] = {}
    if until is not None:
        sums = await report_store.summed_cell(
            session,
            dimension=row["dimension"],
            value=row["value"],
            day_from=start.isoformat(),
            day_to=until.isoformat(),
        )
    target = float(row["target"])
    progress = goals.progress_of(row["metric"], target, start, end, sums=sums, today=today)
    return GoalOut(
        **{name: row[name] for name in ("goal_id", "name", "metric", "period_start", "period_end", "dimension")},
        value=row["value"],
        owners=list(row["owners"]),
        created_at=row["created_at"],
        target=target,
        **asdict(progress),
    )
