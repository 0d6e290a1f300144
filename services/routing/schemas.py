"""What routing's API and importers accept and return: reps, teams, accounts, policies, assignments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from services.routing.reps import parse_week
from services.routing.rules import RoutingPolicy
from shared.emails import EmailAddress

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Domain = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[a-z0-9.-]{1,253}\.[a-z]{2,63}$")
]


class OutOfOffice(BaseModel):
    """An absence, [start, end); times need a timezone offset."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> OutOfOffice:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("give start and end with a timezone offset, e.g. 2026-12-24T00:00:00+09:00")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class RepIn(BaseModel):
    """A rep: identity, team, what they cover, how much they take and when they work."""

    model_config = ConfigDict(extra="forbid")

    rep_id: Id | None = None
    name: Name
    email: EmailAddress
    team: Tag | None = None
    manager: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)] | None = None
    languages: list[Tag] = Field(default_factory=list, max_length=20)
    skills: list[Tag] = Field(default_factory=list, max_length=50)
    territories: list[Tag] = Field(default_factory=list, max_length=200)
    segments: list[Tag] = Field(default_factory=list, max_length=20)
    weight: int = Field(1, ge=1, le=100)
    max_open: int | None = Field(None, ge=0, le=100_000)
    max_per_day: int | None = Field(None, ge=0, le=100_000)
    timezone: str = "UTC"
    working_hours: dict[str, list[list[str]]] | None = None
    out_of_office: list[OutOfOffice] = Field(default_factory=list, max_length=100)
    active: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {zone!r}, e.g. Asia/Tokyo") from exc
        return zone

    @field_validator("working_hours")
    @classmethod
    def _week(cls, week: dict[str, list[list[str]]] | None) -> dict[str, list[list[str]]] | None:
        if week is not None:
            parse_week(week)
        return week

    @field_validator("territories")
    @classmethod
    def _upper(cls, places: list[str]) -> list[str]:
        return [place.upper() if place != "*" else place for place in places]

    def stored(self) -> dict[str, Any]:
        """Column values."""
        values = self.model_dump(mode="json", exclude={"rep_id"})
        values["email"] = str(self.email).lower()
        return values


class RepOut(RepIn):
    """A rep as stored, with their load."""

    model_config = ConfigDict(extra="ignore")

    rep_id: str
    email: str
    open_leads: int = 0
    new_today: int = 0
    sla_misses: int = 0
    created_at: datetime
    updated_at: datetime | None = None


class TeamIn(BaseModel):
    """A team: a pool of reps with a manager who hears about SLA misses."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    manager: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)] | None = None


class TeamOut(TeamIn):
    """A team as stored."""

    team_id: str
    reps: int
    active_reps: int
    created_at: datetime


class AccountIn(BaseModel):
    """A company domain owned by a rep."""

    model_config = ConfigDict(extra="forbid")

    rep_id: Id
    name: Name | None = None


class AccountOut(AccountIn):
    """An account as stored."""

    domain: str
    created_at: datetime


class PolicyIn(BaseModel):
    """A routing policy to store as a draft."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    definition: RoutingPolicy


class PolicyOut(BaseModel):
    """A stored policy version."""

    version: int
    name: str
    status: str
    definition: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None


class SimulatedLead(BaseModel):
    """A lead to route hypothetically: its fields, plus the score, grade and verdict it would have."""

    model_config = ConfigDict(extra="allow")

    lead_id: str = "simulated"
    score: int = Field(0, ge=0, le=100)
    grade: Annotated[str, StringConstraints(pattern=r"^[A-D][1-4]$")] | None = None
    verdict: str = "qualified"
    company_domain: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """The fields rules match on."""
        values = self.model_dump(mode="json")
        values["fit_grade"] = self.grade[:1] if self.grade else None
        return values


class Decision(BaseModel):
    """One routing decision in a lead's history."""

    kind: str
    assignment_id: str
    rep_id: str | None
    reason: str
    details: dict[str, Any]
    at: datetime


class AssignmentOut(BaseModel):
    """A lead's routing state, the explanation of the current decision, and every decision before it."""

    assignment_id: str
    lead_id: str
    kind: str
    status: str
    rep_id: str | None
    pool: str | None
    rule: str | None
    score: int
    grade: str | None
    verdict: str | None
    sla_deadline: datetime | None
    reason: str
    details: dict[str, Any]
    decided_at: datetime
    lead: dict[str, Any] | None = None  # the lead's fields a sales tool works with (contact, company, score)
    history: list[Decision]


class Verdict(BaseModel):
    """Accept carries who accepts; reject carries why."""

    model_config = ConfigDict(extra="forbid")

    rep_id: Id | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None = None
