"""Reps as routing sees them, and the pure question of whether one can take a lead right now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Shift:
    """One stretch of working time on a weekday, local to the rep's timezone; `end` 24:00 is written 00:00."""

    start: time
    end: time

    def covers(self, moment: time) -> bool:
        """True if `moment` falls in [start, end)."""
        if self.end == time(0) and self.start != time(0):
            return moment >= self.start
        return self.start <= moment < self.end


@dataclass(frozen=True)
class WorkingHours:
    """When a rep works, in their IANA timezone; a weekday absent from `week` is a day off."""

    timezone: str
    week: Mapping[str, tuple[Shift, ...]]

    def open_at(self, now: datetime) -> bool:
        """True if `now` (aware) is inside one of the rep's shifts."""
        local = now.astimezone(ZoneInfo(self.timezone))
        shifts = self.week.get(WEEKDAYS[local.weekday()], ())
        return any(shift.covers(local.time()) for shift in shifts)


@dataclass(frozen=True)
class Absence:
    """An out-of-office period, [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Rep:
    """A sales rep: who they are, what they cover, how much they can take and when."""

    rep_id: str
    name: str
    email: str = ""
    team: str | None = None
    manager: str | None = None
    languages: frozenset[str] = frozenset()
    skills: frozenset[str] = frozenset()
    territories: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    weight: int = 1
    max_open: int | None = None
    max_per_day: int | None = None
    timezone: str = "UTC"
    hours: WorkingHours | None = None  # None: always available
    absences: tuple[Absence, ...] = ()
    active: bool = True

    def local_day(self, now: datetime) -> date:
        """The rep's calendar day at `now` (daily caps reset at the rep's midnight)."""
        return now.astimezone(ZoneInfo(self.timezone)).date()


@dataclass(frozen=True)
class Load:
    """What a rep already carries: open leads, and new leads on `day` (their local day)."""

    open_leads: int = 0
    day: date | None = None
    new_on_day: int = 0

    def new_today(self, today: date) -> int:
        """New leads counted for `today`; a count from another day no longer applies."""
        return self.new_on_day if self.day == today else 0

    def with_new_leads(self, today: date, count: int = 1) -> Load:
        """This load after `count` more leads on `today`: what claiming capacity counts in the database."""
        return Load(open_leads=self.open_leads + count, day=today, new_on_day=self.new_today(today) + count)


@dataclass(frozen=True)
class Requirements:
    """What a rule asks of the rep beyond belonging to its pool."""

    skills: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    territory: str | None = None  # the lead's country/region a rep must cover
    segment: str | None = None  # the lead's company size band a rep must cover
    exclude: frozenset[str] = field(default_factory=frozenset)  # reps who already had and lost this lead


def why_ineligible(rep: Rep, load: Load, now: datetime, needs: Requirements = Requirements()) -> str | None:
    """None if `rep` can take a lead at `now`; otherwise the reason, in words a sales manager understands."""
    if not rep.active:
        return "inactive"
    if rep.rep_id in needs.exclude:
        return "already had this lead (missed its SLA or rejected it)"
    absence = next((gone for gone in rep.absences if gone.start <= now < gone.end), None)
    if absence is not None:
        return f"out of office until {absence.end.isoformat()}"
    if rep.hours is not None and not rep.hours.open_at(now):
        return f"outside working hours ({rep.hours.timezone})"
    if rep.max_open is not None and load.open_leads >= rep.max_open:
        return f"at capacity: {load.open_leads} open of {rep.max_open}"
    today = rep.local_day(now)
    if rep.max_per_day is not None and load.new_today(today) >= rep.max_per_day:
        return f"daily cap reached: {load.new_today(today)} of {rep.max_per_day} new leads today"
    return _unmet(rep, needs)


def has_room(rep: Rep, load: Load, today: date, count: int) -> bool:
    """True if `rep`, carrying `load`, can take `count` more leads on `today` without passing a cap."""
    if rep.max_open is not None and load.open_leads + count > rep.max_open:
        return False
    if rep.max_per_day is None:
        return True
    if load.day != today:  # as claiming capacity counts it: a new day's first lead always counts
        return count <= max(rep.max_per_day, 1)
    return load.new_on_day + count <= rep.max_per_day


def _unmet(rep: Rep, needs: Requirements) -> str | None:
    missing_skills = sorted(needs.skills - rep.skills)
    if missing_skills:
        return f"lacks skill(s) {', '.join(missing_skills)}"
    if needs.languages and not needs.languages & rep.languages:
        return f"speaks none of {', '.join(sorted(needs.languages))}"
    if needs.territory is not None and not _covers(rep.territories, needs.territory):
        return f"does not cover territory {needs.territory}"
    if needs.segment is not None and needs.segment not in rep.segments:
        return f"does not cover segment {needs.segment}"
    return None


def _covers(territories: frozenset[str], place: str) -> bool:
    # "JP" covers "JP" and "JP-13"; "*" covers the world.
    return "*" in territories or place in territories or place.split("-", 1)[0] in territories


def parse_week(raw: Mapping[str, Sequence[Sequence[str]]]) -> dict[str, tuple[Shift, ...]]:
    """{"mon": [["09:00", "17:00"]], ...} as shifts; raises ValueError naming the bad day or time."""
    week: dict[str, tuple[Shift, ...]] = {}
    for day, spans in raw.items():
        if day not in WEEKDAYS:
            raise ValueError(f"unknown weekday {day!r}: use {', '.join(WEEKDAYS)}")
        shifts = []
        for span in spans:
            if len(span) != 2:
                raise ValueError(f"{day}: a shift is [start, end], e.g. ['09:00', '17:00']")
            start, end = (time.fromisoformat(part) for part in span)
            if end != time(0) and end <= start:
                raise ValueError(f"{day}: shift end {span[1]} must be after start {span[0]}")
            shifts.append(Shift(start, end))
        week[day] = tuple(shifts)
    return week
