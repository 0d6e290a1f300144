"""What feedback accepts from sales tools (over HTTP and on `sales.outcomes`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.envelope import utc_now
from shared.events import OutcomeKind, OutcomeRecordedV1

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class OutcomeIn(BaseModel):
    """What a sales tool reports about a lead."""

    model_config = ConfigDict(extra="forbid")

    lead_id: Annotated[str, StringConstraints(min_length=1, max_length=36)]
    kind: OutcomeKind
    amount: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    reason: Text | None = None
    competitor: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    rep_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    external_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    occurred_at: AwareDatetime | None = None

    def missing_for_kind(self) -> list[str]:
        """Fields the kind requires but the outcome lacks (a win needs its amount and currency)."""
        return [name for name in ("amount", "currency") if self.kind == "won" and getattr(self, name) is None]

    def as_event(self, *, outcome_id: str) -> OutcomeRecordedV1:
        """The outcome as Baton announces it; raises ValueError([fields]) when the kind's required fields lack."""
        missing = self.missing_for_kind()
        if missing:
            raise ValueError(missing)
        return OutcomeRecordedV1(
            outcome_id=outcome_id,
            **self.model_dump(exclude={"occurred_at"}),
            occurred_at=self.occurred_at or utc_now(),
        )
